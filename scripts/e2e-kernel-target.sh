#!/usr/bin/env bash
# The remote leg against the Linux kernel target: boots the guest with nvmet exporting a
# RAM disk (tests/e2e/guest-nvmet.sh) and runs tests/kernel_target.rs on the host, which
# puts that namespace into a RAID-1, cuts and restores the kernel target's port, re-adds
# the member and reads everything back from it.
#
#   scripts/e2e-kernel-target.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec cargo test --release --test kernel_target -- --ignored --nocapture
