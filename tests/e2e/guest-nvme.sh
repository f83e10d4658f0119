#!/bin/sh
# In-guest end-to-end test of an NVMe/TCP target with the Linux initiator.
# Runs inside the QEMU test guest (busybox ash), normally as
#
#   SUBNQN=nqn... TARGET_PORT=4420 scripts/guest/run.sh tests/e2e/guest-nvme.sh
#
# Settings come from the environment or from KEY=VALUE arguments:
#   SUBNQN        subsystem NQN (required)
#   TARGET_ADDR   target address (default 10.0.2.2 = the host's 127.0.0.1)
#   TARGET_PORT   target port (default 4420)
#   E2E_CONNECT_OPTS  extra `nvme connect` options (default none)
#   E2E_STEP_TIMEOUT  seconds allowed per fio/mkfs command (default 300)
#   E2E_SKIP      space-separated phases to skip: rand seq fs digest sqflow
#   E2E_RAND_JOBS, E2E_RAND_SIZE_MB, E2E_SEQ_SIZE_MB, E2E_DIGEST_SIZE_MB  fio sizes
#
# Each step prints "STEP: ..." and "PASS: ...".  The last line is
# "E2E RESULT: PASS" (exit 0) or "E2E RESULT: FAIL at <step>" (exit 1).
. "${E2E_DIR:-$(dirname "$0")}/common.sh"
CONNECT_OPTS=${E2E_CONNECT_OPTS:-}
SKIP=" ${E2E_SKIP:-} "
MNT=/mnt/e2e
WORK=/tmp/e2e
# fio sizing: the guest runs under TCG at ~1-2K IOPS.
RAND_JOBS=${E2E_RAND_JOBS:-4}           # 4 KiB randrw, disjoint 8 MiB ranges
RAND_SIZE_MB=${E2E_RAND_SIZE_MB:-8}     #   (per job)
SEQ_SIZE_MB=${E2E_SEQ_SIZE_MB:-64}      # 128 KiB sequential write + verify
DIGEST_SIZE_MB=${E2E_DIGEST_SIZE_MB:-8} # 4 KiB randrw verify over digests
MIN_DEV_MB=128

skip() { case $SKIP in *" $1 "*) echo "SKIPPED: phase $1 (listed in E2E_SKIP)"; return 0 ;; esac; return 1; }

on_exit() {
    rc=$?
    trap - EXIT
    if [ "$rc" -ne 0 ]; then
        echo "---- diagnostics (exit $rc) ----"
        dmesg | tail -n 40 || true
        for f in /sys/class/nvme/nvme*/state; do
            [ -f "$f" ] && echo "$f: $(cat "$f")"
        done
        umount "$MNT" 2>/dev/null || true
        if [ -n "$NQN" ]; then nvme disconnect -n "$NQN" >/dev/null 2>&1 || true; fi
        echo "E2E RESULT: FAIL at $CUR"
        exit "$rc"
    fi
}
trap on_exit EXIT

[ -n "$NQN" ] || fail "SUBNQN not set"
mkdir -p "$MNT" "$WORK"

# The block device of our subsystem's namespace 1 (nvmeXnY; with native
# multipath X is the subsystem instance, so never assume nvme0n1).
find_ns() {
    for b in /sys/block/nvme*n*; do
        n=${b##*/}
        case $n in *c*) continue ;; esac          # hidden multipath paths
        [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
        [ "$(cat "$b/nsid" 2>/dev/null || echo 1)" = 1 ] || continue
        echo "$n"; return 0
    done
    return 1
}
# Controller character device (nvmeX) connected to our subsystem over TCP.
find_ctrl() {
    for c in /sys/class/nvme/nvme*; do
        [ "$(cat "$c/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
        [ "$(cat "$c/transport" 2>/dev/null)" = tcp ] || continue
        echo "${c##*/}"; return 0
    done
    return 1
}
# connect [extra nvme-connect options]: sets CTRL and DEV.
connect() {
    # shellcheck disable=SC2086
    nvme connect -t tcp -a "$ADDR" -s "$PORT" -n "$NQN" $CONNECT_OPTS "$@" ||
        fail "nvme connect $* exited non-zero"
    i=0
    while ! NS=$(find_ns) || [ ! -b "/dev/$NS" ]; do
        i=$((i + 1))
        [ $i -le 200 ] || fail "no namespace block device for $NQN after 20 s"
        sleep 0.1
    done
    CTRL=$(find_ctrl) || fail "no nvme controller for $NQN"
    DEV=/dev/$NS
    echo "connected: controller /dev/$CTRL ($(cat "/sys/class/nvme/$CTRL/state")), namespace $DEV"
}
disconnect() {
    out=$(nvme disconnect -n "$NQN") || fail "nvme disconnect exited non-zero"
    echo "$out"
    case $out in *"disconnected 0 "*) fail "nvme disconnect found no controller" ;; esac
    i=0
    while find_ctrl >/dev/null; do
        i=$((i + 1)); [ $i -le 100 ] || fail "controller still present 10 s after disconnect"
        sleep 0.1
    done
}
# run_fio NAME ARGS...: fio must exit 0 and every job must report err=0.
# (fio warns "multiple writers may overwrite blocks" for numjobs > 1 with
# verify: it ignores offset_increment there; the jobs' ranges are disjoint.)
run_fio() {
    name=$1; shift
    log=$WORK/fio-$name.log
    rc=0
    timeout "$TMO" fio --name="$name" --filename="$DEV" --ioengine=libaio --direct=1 \
        --verify_state_save=0 --group_reporting "$@" >"$log" 2>&1 || rc=$?
    cat "$log"
    [ "$rc" -eq 0 ] || fail "fio $name exited with status $rc"
    grep -q 'err= *0' "$log" || fail "fio $name: no err=0 line"
    if grep -E 'err= *[1-9]|verify: bad|fio: .*(error|bad)' "$log" >/dev/null; then
        fail "fio $name reported errors"
    fi
}

echo "E2E: target $ADDR:$PORT subsystem $NQN (kernel $(uname -r))"
grep -q crc32c /proc/crypto || fail "crc32c not registered (needed for digests)"

step "discover"
nvme discover -t tcp -a "$ADDR" -s "$PORT" >"$WORK/discover.log" 2>&1 || {
    cat "$WORK/discover.log"; fail "nvme discover exited non-zero"; }
cat "$WORK/discover.log"
sed -n 's/^subnqn: *//p' "$WORK/discover.log" | grep -Fxq "$NQN" || fail "discovery log does not list $NQN"
pass "discovery log lists $NQN"

step "connect"
connect
pass "connected without digests: $DEV"

step "nvme list / id-ctrl / id-ns / smart-log"
nvme list
nvme id-ctrl "/dev/$CTRL" >"$WORK/id-ctrl.log"
cat "$WORK/id-ctrl.log"
sed -n 's/^subnqn *: *//p' "$WORK/id-ctrl.log" | grep -Fxq "$NQN" || fail "id-ctrl subnqn is not $NQN"
nvme id-ns "$DEV" >"$WORK/id-ns.log"
cat "$WORK/id-ns.log"
grep -Eq '^nsze +: *0x[0-9a-f]*[1-9a-f]' "$WORK/id-ns.log" || fail "id-ns nsze is zero"
nvme smart-log "/dev/$CTRL"
size_mb=$(( $(blockdev --getsize64 "$DEV") / 1048576 ))
echo "namespace size: $size_mb MiB, logical block $(blockdev --getss "$DEV") B"
[ "$size_mb" -ge "$MIN_DEV_MB" ] || fail "namespace is $size_mb MiB, the test needs >= $MIN_DEV_MB MiB"
pass "admin commands"

if ! skip rand; then
    step "fio 4k randrw verify ($RAND_JOBS jobs x ${RAND_SIZE_MB}M, iodepth 32)"
    run_fio randrw --rw=randrw --bs=4k --iodepth=32 --numjobs="$RAND_JOBS" \
        --size="${RAND_SIZE_MB}M" --offset_increment="${RAND_SIZE_MB}M" \
        --verify=crc32c --do_verify=1 --verify_fatal=1
    pass "fio 4k randrw verify"
fi

if ! skip seq; then
    step "fio 128k sequential write + verify (${SEQ_SIZE_MB}M)"
    run_fio seqwrite --rw=write --bs=128k --iodepth=8 --numjobs=1 --size="${SEQ_SIZE_MB}M" \
        --verify=crc32c --do_verify=1 --verify_fatal=1
    pass "fio 128k sequential write + verify"
fi

if ! skip fs; then
    step "mkfs.ext4 + write files"
    timeout "$TMO" mkfs.ext4 -F -q "$DEV" || fail "mkfs.ext4 failed"
    mount -t ext4 "$DEV" "$MNT"
    mkdir -p "$MNT/dir"
    dd if=/dev/urandom of="$MNT/big" bs=1M count=16 2>/dev/null
    dd if=/dev/urandom of="$MNT/dir/mid" bs=64k count=37 2>/dev/null
    for i in 1 2 3 4 5 6 7 8; do
        dd if=/dev/urandom of="$MNT/dir/small$i" bs=1k count=$((i * 3)) 2>/dev/null
    done
    (cd "$MNT" && find . -type f | sort | xargs sha256sum) >"$WORK/sums"
    cat "$WORK/sums"
    sync
    umount "$MNT"
    pass "ext4 written"

    step "disconnect + reconnect + verify files"
    disconnect
    connect
    timeout "$TMO" e2fsck -fn "$DEV" || fail "e2fsck found errors after reconnect"
    mount -t ext4 "$DEV" "$MNT"
    (cd "$MNT" && sha256sum -c "$WORK/sums") || fail "file checksums differ after reconnect"
    umount "$MNT"
    pass "files intact after reconnect"
fi

step "disconnect"
disconnect
pass "disconnected"

# verify_connection PHASE WHAT CONNECT-OPTIONS...: connect with the options, run a 4 KiB
# randrw fio verify (${DIGEST_SIZE_MB}M over two jobs), disconnect.
verify_connection() {
    phase=$1 what=$2
    shift 2
    step "connect $what ($*)"
    connect "$@"
    pass "connected $what: $DEV"

    step "fio 4k randrw verify $what (${DIGEST_SIZE_MB}M)"
    run_fio "$phase" --rw=randrw --bs=4k --iodepth=16 --numjobs=2 \
        --size="$((DIGEST_SIZE_MB / 2))M" --offset_increment="$((DIGEST_SIZE_MB / 2))M" \
        --verify=crc32c --do_verify=1 --verify_fatal=1
    pass "fio verify $what"

    step "disconnect ($what)"
    disconnect
    pass "disconnected"
}

if ! skip digest; then
    verify_connection digest "with header and data digests" -g -G
fi

# Without SQ flow control the target ends each clean read with the C2HData SUCCESS flag
# and sends no response capsule; the host must still see every read complete.
if ! skip sqflow; then
    verify_connection sqflow "without SQ flow control" --disable-sqflow
fi

T1=$(cut -d' ' -f1 /proc/uptime)
echo "E2E: total $(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}') s"
CUR="end"
echo "E2E RESULT: PASS"
