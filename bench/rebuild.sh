#!/usr/bin/env bash
# Rebuild speed of a RAID-5 volume over four file members onto hot spares: once with the
# volume idle, once while `nvmf-raid perf` drives 4 KiB random reads and writes (70/30,
# QD 32), and once idle with a rate limit to show the limit holds. The target runs on
# core 0, perf on core 1. Members are pre-filled so the rebuild reads real data.
#
#   bench/rebuild.sh [MEMBER_SIZE]      (default 1G)
#
# Prints the rebuild MiB/s (member bytes rebuilt per second) of each run, the member I/O
# it causes against a sequential O_DIRECT read of one member file measured in the same run,
# and the host IOPS with and without a rebuild running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SIZE=${1:-1G}
BIN=target/release/nvmf-raid
PORT=${BENCH_PORT:-4431}
NQN=nqn.2026-11.io.nvmf-raid:bench-rebuild
cargo build --release --quiet
DIR=$(mktemp -d "${TMPDIR:-/tmp}/nvmf-raid-rebuild.XXXXXX")
SOCK="$DIR/mgmt.sock"
PID=
cleanup() {
    [[ -n $PID ]] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT

{
    printf '[reactor]\ncores = [0]\n[management]\nsocket = "%s"\n[[listener]]\naddress = "127.0.0.1:%s"\n' "$SOCK" "$PORT"
    for d in m0 m1 m2 m3 s0 s1 s2; do
        printf '[[device]]\nname = "%s"\nkind = "file"\npath = "%s/%s.img"\nsize = "%s"\n' "$d" "$DIR" "$d" "$SIZE"
    done
    printf '[[volume]]\nname = "vol"\nlevel = "raid5"\nmembers = ["m0", "m1", "m2", "m3"]\nspares = ["s0"]\nrebuild_rate = "0"\n'
    printf '[[subsystem]]\nnqn = "%s"\nallow_any_host = true\n[[subsystem.namespace]]\ndevice = "vol"\n' "$NQN"
} >"$DIR/target.toml"

"$BIN" serve --config "$DIR/target.toml" --log warn >"$DIR/target.log" 2>&1 &
PID=$!
for _ in $(seq 100); do "$BIN" --socket "$SOCK" volume status >/dev/null 2>&1 && break; sleep 0.1; done
perf() { "$BIN" perf --addr "127.0.0.1:$PORT" --nqn "$NQN" --core 1 --log warn "$@"; }
status_json() { "$BIN" --socket "$SOCK" volume status vol --json; }
field() { python3 -c "import json,sys; v=json.load(sys.stdin)[0]; print($1)"; }

echo "== pre-fill: 128 KiB sequential writes over the whole volume"
perf -q 32 -o 131072 -w write -t 8 | grep -E "^IOPS"

# Fail a member and time the rebuild onto the next spare; prints "seconds MiB/s".
rebuild() {
    local member=$1
    local start end
    start=$(date +%s.%N)
    "$BIN" --socket "$SOCK" volume fail-member vol "$member" >/dev/null
    while [[ $(status_json | field 'v["state"]') != online ]]; do sleep 0.05; done
    end=$(date +%s.%N)
    local bytes
    bytes=$(status_json | field 'v["rebuild"]["rows"] * v["strip_bytes"]')
    python3 -c "s=$end-$start; print(f'{s:.2f} {$bytes/s/2**20:.1f}')"
}

# Reference from the same run: one member file read sequentially with O_DIRECT (what one
# member can deliver to a rebuild that reads the survivors in parallel).
echo "== reference: sequential O_DIRECT read of one member file"
ref=$(python3 - "$DIR/m0.img" <<'PY'
import mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECT)
buf = mmap.mmap(-1, 1 << 20)
t, n = time.monotonic(), 0
while (r := os.readv(fd, [buf])) > 0:
    n += r
print(f"{n / (time.monotonic() - t) / 2**20:.1f}")
PY
)
echo "member read: $ref MiB/s"

echo "== baseline host load (no rebuild): 4 KiB randrw 70/30, QD 32, 10 s"
base=$(perf -q 32 -o 4096 -w randrw -M 70 -t 10 | grep -E "^IOPS" | awk '{print $2}')
echo "IOPS $base"

echo "== rebuild 1: idle volume, unlimited rate"
read -r t1 r1 < <(rebuild m1)
echo "rebuild: $t1 s, $r1 MiB/s"

echo "== rebuild 2: under host load, unlimited rate"
"$BIN" --socket "$SOCK" volume add-spare vol s1 >/dev/null
perf -q 32 -o 4096 -w randrw -M 70 -t 20 >"$DIR/perf-during.txt" &
PERF=$!
sleep 2
read -r t2 r2 < <(rebuild m2)
wait $PERF
during=$(grep -E "^IOPS" "$DIR/perf-during.txt" | awk '{print $2}')
echo "rebuild: $t2 s, $r2 MiB/s; host IOPS over the 20 s run $during (baseline $base)"

echo "== rebuild 3: idle volume, rate limit 100 MiB/s"
"$BIN" --socket "$SOCK" volume add-spare vol s2 >/dev/null
"$BIN" --socket "$SOCK" volume rebuild-rate vol 100M >/dev/null
read -r t3 r3 < <(rebuild m3)
echo "rebuild: $t3 s, $r3 MiB/s (limit 100 MiB/s)"

# Each rebuilt byte costs three member reads and one spare write: member I/O is four
# times the rebuild rate. Where the files share one disk, compare that with the reference.
traffic() { python3 -c "print(f'{4*$1:.0f}')"; }
ratio() { python3 -c "print(f'{4*$1/$ref:.2f}')"; }
echo
printf '%-30s %8s %8s %16s %14s\n' "run" "seconds" "MiB/s" "member I/O MiB/s" "x member read"
for row in "idle, unlimited|$t1|$r1" "host randrw QD32, unlimited|$t2|$r2" "idle, limit 100 MiB/s|$t3|$r3"; do
    IFS='|' read -r name t r <<<"$row"
    printf '%-30s %8s %8s %16s %14s\n' "$name" "$t" "$r" "$(traffic "$r")" "$(ratio "$r")"
done
echo "host IOPS: $base without rebuild, $during during a 20 s run that contained rebuild 2"
