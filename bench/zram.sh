#!/usr/bin/env bash
# RAID volumes over zram block devices against fio on the same devices (bench/zram.py has
# the details). Needs root: it adds four zram devices and removes them at the end.
#
#   bench/zram.sh [SECONDS]    (default 5 s per measurement)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v fio >/dev/null || { apt-get install -y -qq fio >/dev/null || { echo "zram: needs fio (apt-get install fio)" >&2; exit 1; }; }
cargo build --release --quiet --bins
exec python3 bench/zram.py "$@"
