# Shared by the in-guest end-to-end scripts (sourced; busy-box ash): KEY=VALUE arguments,
# the target's address, and the STEP/PASS/FAIL reporting the host-side scripts read.
set -eu
set -o pipefail 2>/dev/null || true

for kv in "$@"; do
    case $kv in
        [A-Za-z_]*=*) export "${kv?}" ;;
        *) echo "usage: $0 [SUBNQN=nqn] [TARGET_ADDR=a] [TARGET_PORT=p] ..." >&2; exit 2 ;;
    esac
done
ADDR=${TARGET_ADDR:-10.0.2.2}
PORT=${TARGET_PORT:-4420}
NQN=${SUBNQN:-}
TMO=${E2E_STEP_TIMEOUT:-300}

CUR="setup"
T0=$(cut -d' ' -f1 /proc/uptime)
now() { cut -d' ' -f1 /proc/uptime; }
step() { CUR=$*; echo "STEP: $* (t=$(now)s)"; }
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; exit 1; }

# The last steps of a run: `nvme disconnect -n $NQN`, bounded (Debian's 6.1 kernel has
# been seen to hang in it under TCG; everything a test checks is done by then, and
# guest-nvme.sh checks disconnects on their own), the total time and the PASS line.
# Needs WORK (T0 is set above).
disconnect_and_pass() {
    step "disconnect"
    nvme disconnect -n "$NQN" >"$WORK/disconnect.out" 2>&1 &
    dpid=$!
    i=0
    while kill -0 "$dpid" 2>/dev/null && [ "$i" -lt 40 ]; do sleep 0.5; i=$((i + 1)); done
    if kill -0 "$dpid" 2>/dev/null; then
        echo "WARN: nvme disconnect has not returned after 20 s (guest kernel hang); not waiting for it"
    else
        wait "$dpid" || fail "nvme disconnect exited non-zero: $(cat "$WORK/disconnect.out")"
        cat "$WORK/disconnect.out"
        pass "disconnected"
    fi
    echo "E2E: total $(awk -v a="$T0" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s"
    CUR="end"
    echo "E2E RESULT: PASS"
}

# check_fio NAME LOG RC JOBS: fio exited 0, every job reported err=0, no verify errors.
check_fio() {
    name=$1 log=$2 rc=$3 jobs=$4
    [ "$rc" -eq 0 ] || { cat "$log"; fail "fio $name exited with status $rc"; }
    ok=$(grep -c 'err= *0' "$log" || true)
    [ "$ok" -eq "$jobs" ] || { cat "$log"; fail "fio $name: $ok of $jobs jobs report err=0"; }
    if grep -Ei 'err= *[1-9]|verify: bad|bad magic|crc32c: verify failed|fio: .*(error|bad)|io_u error' "$log" >/dev/null; then
        cat "$log"; fail "fio $name reported errors"
    fi
}
# fio_run NAME JOBS ARGS... (TMO: seconds allowed): one fio run (global options, then --name=... job sections).
fio_run() {
    name=$1 jobs=$2; shift 2
    log=$WORK/fio-$name.log
    rc=0
    timeout "$TMO" fio --ioengine=libaio --direct=1 --verify_state_save=0 \
        --verify=crc32c --verify_fatal=1 "$@" >"$log" 2>&1 || rc=$?
    check_fio "$name" "$log" "$rc" "$jobs"
}
