#!/usr/bin/env bash
# The benchmark suite: nvmf-raid against the loopback fabric's own ceiling, measured in the
# same run. Target reactors on core 0 (core 0 and 1 for the two-core cases), `nvmf-raid
# perf` on the last core. One table: per case IOPS, MiB/s, p50/p99/p99.9/max latency (us),
# CPU seconds of target and initiator per million I/Os, and the fraction of the ceiling.
#
#   bench/suite.sh [SECONDS]        (default 5 per case)
#   SUITE=quick bench/suite.sh      null and RAID-5 over RAM only
#
# Cases: the null namespace and RAID 0, 1, 5, 6, 10 over RAM members and over files; 4 KiB
# random read at QD 1 and 32, 4 KiB random write at QD 32, 128 KiB sequential read and
# write at QD 8; adaptive polling on one core, and for the null namespace and RAID-5 over
# RAM also busy polling and two target cores. On a two-core machine the two-core cases
# share a core with the initiator.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SECS=${1:-5}
BIN=target/release/nvmf-raid
PORT=${BENCH_PORT:-4441}
NQN=nqn.2026-11.io.nvmf-raid:suite
LAST=$(($(nproc) - 1))
HZ=$(getconf CLK_TCK)
cargo build --release --quiet --bins --benches
FABRIC=$(ls -t target/release/deps/fabric-* | grep -v '\.d$' | head -1)
DIR=$(mktemp -d "${TMPDIR:-/tmp}/nvmf-raid-suite.XXXXXX")
PID=
cleanup() {
    [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

# config LEVEL MEDIA CORES POLLING: a target whose namespace is the null device or a
# volume of LEVEL over four members on MEDIA (ram or file).
config() {
    local level=$1 media=$2 cores=$3 polling=$4
    printf '[reactor]\ncores = [%s]\npolling = "%s"\n[[listener]]\naddress = "127.0.0.1:%s"\n' "$cores" "$polling" "$PORT"
    local ns=null0
    if [[ $level == null ]]; then
        printf '[[device]]\nname = "null0"\nkind = "null"\nsize = "16G"\n'
    else
        for d in 0 1 2 3; do
            if [[ $media == ram ]]; then
                printf '[[device]]\nname = "m%s"\nkind = "ram"\nsize = "256M"\n' "$d"
            else
                printf '[[device]]\nname = "m%s"\nkind = "file"\npath = "%s/m%s.img"\nsize = "1G"\n' "$d" "$DIR" "$d"
            fi
        done
        local group=""
        [[ $level == raid10 ]] && group="group_size = 2"
        printf '[[volume]]\nname = "vol"\nlevel = "%s"\nmembers = ["m0", "m1", "m2", "m3"]\n%s\n' "$level" "$group"
        ns=vol
    fi
    printf '[[subsystem]]\nnqn = "%s"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = "%s"\n' "$NQN" "$ns"
}

cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start_target() {
    rm -f "$DIR"/m*.img
    config "$@" >"$DIR/target.toml"
    "$BIN" serve --config "$DIR/target.toml" --log warn >"$DIR/target.log" 2>&1 &
    PID=$!
    for _ in $(seq 100); do grep -q "nvme connect" "$DIR/target.log" && return; sleep 0.05; done
    cat "$DIR/target.log" >&2
    exit 1
}

stop_target() {
    kill -TERM "$PID"
    wait "$PID" || true
    PID=
}

printf '%-30s %-14s %9s %9s %8s %8s %8s %9s %10s %10s %8s\n' case workload IOPS MiB/s p50 p99 p99.9 max "tgt s/M" "ini s/M" ceiling
# The fabric ceiling of every workload, measured first in the same run.
declare -A CEILING
for w in "randread 4096 1" "randread 4096 32" "randwrite 4096 32" "read 131072 8" "write 131072 8"; do
    read -r pattern bytes qd <<<"$w"
    dir=read
    [[ $pattern == *write* ]] && dir=write
    CEILING["$pattern/$bytes/$qd"]=$("$FABRIC" "$dir" "$bytes" "$qd" "$SECS" | sed -E 's/.*: ([0-9]+) IOPS.*/\1/')
    printf '%-30s %-14s %9s\n' "fabric ceiling" "$pattern $bytes QD$qd" "${CEILING["$pattern/$bytes/$qd"]}"
done

run_case() { # NAME PATTERN BYTES QD
    local name=$1 pattern=$2 bytes=$3 qd=$4
    local ceil=${CEILING["$pattern/$bytes/$qd"]}
    local t0
    t0=$(cpu_of "$PID")
    local out
    out=$(perf_run "$pattern" "$bytes" "$qd")
    local t1
    t1=$(cpu_of "$PID")
    python3 - "$name" "$pattern $bytes QD$qd" "$out" "$(((t1 - t0)))" "$HZ" "$ceil" <<'PY'
import re, sys
name, workload, out, ticks, hz, ceil = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), float(sys.argv[6])
num = lambda k: float(re.search(k + r"\s+([0-9.]+)", out).group(1))
iops, mibs = num("IOPS"), num("MiB/s")
ios = max(iops, 1) * float(re.search(r"pattern .* time ([0-9.]+)s", out).group(1))
ini = float(re.search(r"\(([0-9.]+) s per million", out).group(1))
tgt = ticks / hz / ios * 1e6
print(f"{name:<30} {workload:<14} {iops:9.0f} {mibs:9.1f} {num('p50'):8.1f} {num('p99'):8.1f} {num('p99.9'):8.1f} {num('max'):9.1f} {tgt:10.2f} {ini:10.2f} {iops / ceil:8.2f}")
PY
}

perf_run() { # PATTERN BYTES QD
    "$BIN" perf --addr "127.0.0.1:$PORT" --nqn "$NQN" -w "$1" -o "$2" -q "$3" -t "$SECS" --core "$LAST" --log warn
}

workloads() { # NAME
    run_case "$1" randread 4096 1
    run_case "$1" randread 4096 32
    run_case "$1" randwrite 4096 32
    run_case "$1" read 131072 8
    run_case "$1" write 131072 8
}

cases=("null ram" "raid5 ram")
[[ ${SUITE:-full} == quick ]] || cases=("null ram" "raid0 ram" "raid1 ram" "raid5 ram" "raid6 ram" "raid10 ram" "raid0 file" "raid1 file" "raid5 file" "raid6 file" "raid10 file")
for c in "${cases[@]}"; do
    read -r level media <<<"$c"
    start_target "$level" "$media" 0 adaptive
    [[ $level == null ]] && name=null || name="$level $media"
    workloads "$name, 1 core"
    stop_target
done
for level in null raid5; do
    start_target "$level" ram 0 busy
    run_case "$level ram, 1 core busy" randread 4096 32
    run_case "$level ram, 1 core busy" randwrite 4096 32
    stop_target
    start_target "$level" ram "0, 1" adaptive
    run_case "$level ram, 2 cores" randread 4096 32
    run_case "$level ram, 2 cores" randwrite 4096 32
    stop_target
done
