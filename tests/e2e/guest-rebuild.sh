#!/bin/sh
# In-guest half of the rebuild end-to-end test (scripts/e2e-rebuild.sh is the host half).
# Runs inside the QEMU test guest (busybox ash) against a target exporting a RAID-5 volume
# as namespace 1, a RAID-6 volume as namespace 2, a RAID 3 volume (2 KiB blocks) as
# namespace 3 and a RAID-6 DP volume as namespace 4 of SUBNQN.
#
#   1. prewrite: fio sequential 64k writes with crc32c verify headers over region A
#      [0, A) of both namespaces, read back and verified (the volumes are still healthy).
#   2. I/O under failure: in the background, rounds of one fio run each: per namespace a
#      writer over region B [A, A+B) (round r: seed r, odd rounds 4k random writes, even
#      rounds 256k sequential writes; verify_backlog verifies as it goes, then a full
#      verify pass) and a reader re-verifying region A (verify_only).  Once the first
#      round runs the guest prints "MARK: io-running"; the host then fails members, and
#      when every rebuild has finished it serves "done" at
#      http://TARGET_ADDR:E2E_CTL_PORT/state.  The round in progress then completes and
#      the loop stops ("MARK: io-done").  Without E2E_CTL_PORT, E2E_ROUNDS rounds run.
#   3. final verify: verify_only over region A and over region B (the last round's
#      writes), now read from the rebuilt volumes (spares in the failed slots).
#
# Any fio error, any verify error, or any I/O error in the kernel log fails the test.
#
# Settings (environment or KEY=VALUE arguments):
#   SUBNQN, TARGET_ADDR (10.0.2.2), TARGET_PORT (4420)
#   E2E_CTL_PORT       host port serving /state ("running" or "done")
#   E2E_A_MB (16)      region A per namespace, MiB (prewritten, read during the rebuild)
#   E2E_B_MB (4)       region B per namespace, MiB (rewritten every round)
#   E2E_READ_LOOPS (1) passes over region A per round
#   E2E_ROUNDS (2)     rounds without a control port; E2E_MAX_ROUNDS (40) with one
#   E2E_STEP_TIMEOUT (300) seconds allowed per fio run
#
# Each step prints "STEP: ..." and "PASS: ...".  The last line is
# "E2E RESULT: PASS" (exit 0) or "E2E RESULT: FAIL at <step>" (exit 1).
. "${E2E_DIR:-$(dirname "$0")}/common.sh"
CTL_PORT=${E2E_CTL_PORT:-}
A_MB=${E2E_A_MB:-16}
B_MB=${E2E_B_MB:-4}
READ_LOOPS=${E2E_READ_LOOPS:-1}
ROUNDS=${E2E_ROUNDS:-2}
MAX_ROUNDS=${E2E_MAX_ROUNDS:-40}
WORK=/tmp/e2e
NSIDS=${E2E_NSIDS:-1 2 3 4}


IO_PID=
on_exit() {
    rc=$?
    trap - EXIT
    if [ "$rc" -ne 0 ]; then
        echo "---- diagnostics (exit $rc) ----"
        [ -n "$IO_PID" ] && kill "$IO_PID" 2>/dev/null
        killall fio 2>/dev/null
        dmesg | tail -n 40 || true
        for f in /sys/class/nvme/nvme*/state; do
            [ -f "$f" ] && echo "$f: $(cat "$f")"
        done
        if [ -n "$NQN" ]; then nvme disconnect -n "$NQN" >/dev/null 2>&1 || true; fi
        echo "E2E RESULT: FAIL at $CUR"
        exit "$rc"
    fi
}
trap on_exit EXIT

[ -n "$NQN" ] || fail "SUBNQN not set"
mkdir -p "$WORK"

# Block device of namespace NSID of our subsystem (never assume nvme0nN).
find_ns() {
    for b in /sys/block/nvme*n*; do
        n=${b##*/}
        case $n in *c*) continue ;; esac
        [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
        [ "$(cat "$b/nsid" 2>/dev/null)" = "$1" ] || continue
        echo "$n"; return 0
    done
    return 1
}

# Job sections.  Region A: 64k sequential, written once in step 1.
region_a() { # NS EXTRA...
    ns=$1; shift
    echo "--name=a$ns --filename=$(eval echo "\$DEV$ns") --rw=write --bs=64k --iodepth=8 --offset=0 --size=${A_MB}M $*"
}
# Region B, round R: seed R; odd rounds 4k random writes, even rounds 256k sequential.
region_b() { # NS ROUND EXTRA...
    ns=$1 r=$2; shift 2
    if [ $((r % 2)) -eq 1 ]; then pat="--rw=randwrite --bs=4k --iodepth=16"; else pat="--rw=write --bs=256k --iodepth=4"; fi
    echo "--name=b$ns --filename=$(eval echo "\$DEV$ns") $pat --randseed=$r --offset=${A_MB}M --size=${B_MB}M $*"
}
# "READ 12.1MiB/s 40.0MiB WRITE 1.2MiB/s 8.0MiB" from fio's group summary lines.
io_summary() {
    sed -n 's/^ *\(READ\|WRITE\): bw=\([^ ]*\) .* io=\([^ ]*\) .*/\1 \2 \3/p' "$1" | tr '\n' ' '
}
host_done() {
    [ -n "$CTL_PORT" ] || return 1
    # (busybox wget -T crashes in this guest: bound it with timeout instead)
    [ "$(timeout 10 wget -q -O - "http://$ADDR:$CTL_PORT/state" 2>/dev/null)" = "done" ]
}
# Background I/O: rounds until the host says done (or ROUNDS without a control port).
io_rounds() {
    trap - EXIT   # a failing round ends this subshell only; the main script reports it
    r=0
    while :; do
        r=$((r + 1))
        echo "$r" >"$WORK/last-round"
        t=$(now)
        args=""
        for ns in $NSIDS; do
            args="$args $(region_b "$ns" "$r" --verify_backlog=64) $(region_a "$ns" --verify_only --loops="$READ_LOOPS")"
        done
        # shellcheck disable=SC2086  # job sections split on purpose
        fio_run "round$r" $((2 * $(echo $NSIDS | wc -w))) $args
        echo "IO: round $r passed in $(awk -v a="$t" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s (t=$(now)s):" \
            "$(io_summary "$WORK/fio-round$r.log")"
        if [ -n "$CTL_PORT" ]; then
            host_done && break
            [ "$r" -lt "$MAX_ROUNDS" ] || fail "no 'done' from the host after $r rounds"
        else
            [ "$r" -lt "$ROUNDS" ] || break
        fi
    done
}

echo "E2E: target $ADDR:$PORT subsystem $NQN (kernel $(uname -r)), control port ${CTL_PORT:-none}"

step "connect"
# A 30 s keep-alive: under software emulation the host's own teardown at disconnect can
# outlast the 5 s default (the host stops keep-alives when it starts tearing down), the
# target then ends the association, and Debian's 6.1 kernel was seen to hang in
# `nvme disconnect` afterwards.
nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" -k 30 || fail "nvme connect exited non-zero"
for ns in $NSIDS; do
    i=0
    while ! n=$(find_ns "$ns") || [ ! -b "/dev/$n" ]; do
        i=$((i + 1)); [ $i -le 200 ] || fail "no block device for namespace $ns after 20 s"
        sleep 0.1
    done
    eval "DEV$ns=/dev/$n"
    mb=$(( $(blockdev --getsize64 "/dev/$n") / 1048576 ))
    echo "namespace $ns: /dev/$n, $mb MiB"
    [ "$mb" -ge $((A_MB + B_MB)) ] || fail "namespace $ns is $mb MiB, the test needs $((A_MB + B_MB)) MiB"
done
pass "connected: namespaces $NSIDS (RAID-5, RAID-6, RAID 3, RAID-6 DP): $DEV1 $DEV2 ${DEV3:-} ${DEV4:-}"

step "prewrite region A (${A_MB} MiB per namespace, 64k sequential, crc32c, verified)"
args="" jobs=0
for ns in $NSIDS; do
    args="$args $(region_a "$ns" --do_verify=1)"
    jobs=$((jobs + 1))
done
# shellcheck disable=SC2086
fio_run prewrite "$jobs" $args
pass "prewrite verified: $(io_summary "$WORK/fio-prewrite.log")"

step "fio I/O with verify while members fail and spares rebuild"
io_rounds &
IO_PID=$!
# The first round's fio is issuing I/O once its jobs have opened the devices.
i=0
while [ "$(pidof fio | wc -w)" -lt 2 ]; do
    i=$((i + 1)); [ $i -le 100 ] || break
    kill -0 "$IO_PID" 2>/dev/null || break
    sleep 0.1
done
sleep 1
echo "MARK: io-running (t=$(now)s)"
rc=0
wait "$IO_PID" || rc=$?
IO_PID=
echo "MARK: io-done (t=$(now)s) after $(cat "$WORK/last-round") rounds"
[ "$rc" -eq 0 ] || fail "background I/O failed (status $rc)"
pass "$(cat "$WORK/last-round") rounds of write+verify and read+verify, no errors"

step "final verify_only pass over regions A and B (rebuilt volumes)"
last=$(cat "$WORK/last-round")
args=""
for ns in $NSIDS; do
    args="$args $(region_a "$ns" --verify_only) $(region_b "$ns" "$last" --verify_only)"
done
# shellcheck disable=SC2086
fio_run final $((2 * $(echo $NSIDS | wc -w))) $args
pass "regions A and B verify after the rebuild: $(io_summary "$WORK/fio-final.log")"

step "kernel log"
if dmesg | grep -Ei 'I/O error|critical.*error|blk_update_request|nvme.*(reset|reconnect|timeout)'; then
    fail "the kernel logged I/O errors or controller resets"
fi
pass "no I/O errors, resets or timeouts in the kernel log"

disconnect_and_pass
