#!/usr/bin/env bash
# Run every test: unit, property and loopback integration tests, a bounded fuzz run, and
# the end-to-end runs with the Linux kernel initiator in a QEMU guest (the initiator test,
# RAID-5/6 member failures and rebuilds onto hot spares under fio verify, then a volume
# served from two sites through a kill, a restart, a hand-over and a partition under fio
# verify with native multipath). Installs what it needs (Debian packages for the guest,
# cargo-fuzz) on a fresh machine.
#
# Env:
#   NVMF_RAID_SKIP_GUEST=1   skip the guest end-to-end runs (printed as SKIPPED)
#   NVMF_RAID_SKIP_FUZZ=1    skip the fuzz run (printed as SKIPPED)
#   FUZZ_SECONDS             seconds per fuzz target (default 60)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

passed=0 failed=0 skipped=0
declare -a results
step() {
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$SECONDS
    if "$@"; then
        passed=$((passed + 1)); results+=("PASS    $name ($((SECONDS - t0)) s)")
    else
        failed=$((failed + 1)); results+=("FAIL    $name ($((SECONDS - t0)) s)")
    fi
}
skip() {
    skipped=$((skipped + 1)); results+=("SKIPPED $1: $2")
    echo "=== SKIPPED $1: $2"
}

export CARGO_TERM_COLOR=never
# ISA-L and etcd are installed below: their absence must fail the build, not leave the
# comparisons with ISA-L or the witness tests out (build.rs).
export NVMF_RAID_REQUIRE_ISAL=1 NVMF_RAID_REQUIRE_ETCD=1
# Debian packages the tests use: etcd (below), ISA-L (tests/parity.rs and bench/parity.rs link it to
# check and race the parity kernels), promtool from prometheus (tests/metrics.rs checks
# the exposition with it) and rsvg-convert from librsvg2-bin (renders the plots to PNG).
need=()
[[ -f /usr/include/isa-l/raid.h ]] || need+=(libisal-dev)
command -v promtool >/dev/null || need+=(prometheus)
command -v rsvg-convert >/dev/null || need+=(librsvg2-bin)
# etcd-server: tests/witness.rs starts a real etcd on loopback (the site witness).
command -v etcd >/dev/null || need+=(etcd-server)
if ((${#need[@]})); then
    echo "=== installing ${need[*]}"
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; }; then
        echo "FAIL: could not install ${need[*]}; the tests need them" >&2
        exit 1
    fi
fi
step build cargo build --release --all-targets
step "unit, property and loopback tests" cargo test --release --no-fail-fast
if [[ ${NVMF_RAID_SKIP_FUZZ:-0} == 1 ]]; then
    skip fuzz "NVMF_RAID_SKIP_FUZZ=1"
else
    step fuzz scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi
if [[ ${NVMF_RAID_SKIP_GUEST:-0} == 1 ]]; then
    skip "guest end-to-end" "NVMF_RAID_SKIP_GUEST=1"
    skip "guest rebuild end-to-end" "NVMF_RAID_SKIP_GUEST=1"
    skip "guest metro end-to-end" "NVMF_RAID_SKIP_GUEST=1"
    skip "remote leg on the Linux kernel target" "NVMF_RAID_SKIP_GUEST=1"
else
    step "guest end-to-end (Linux nvme-tcp initiator)" scripts/e2e-guest.sh target/release/nvmf-raid
    step "guest rebuild end-to-end (RAID-5/6 member failures, spares rebuild under fio verify)" \
        scripts/e2e-rebuild.sh target/release/nvmf-raid
    step "guest metro end-to-end (two sites and an etcd witness: kill, restart, hand-over, partition under fio verify)" \
        scripts/e2e-metro.sh target/release/nvmf-raid
    step "remote leg on the Linux kernel target (nvmet in the guest as a RAID-1 member: cut, reconnect, re-add)" \
        scripts/e2e-kernel-target.sh
fi

echo
printf '%s\n' "${results[@]}"
echo "summary: $passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
