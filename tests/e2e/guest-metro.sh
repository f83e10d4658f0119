#!/bin/sh
# In-guest half of the two-site ("metro") end-to-end test (scripts/e2e-metro.sh is the
# host half).  Runs inside the QEMU test guest (busybox ash).  Site A and site B export the
# same subsystem SUBNQN (one stretched volume, namespace 1) on TARGET_ADDR:E2E_METRO_PORT_A
# and TARGET_ADDR:E2E_METRO_PORT_B.
#
#   1. connect: both paths with the kernel's native multipath (fails if it is off); one
#      subsystem, one namespace head, two controllers, both live and ANA optimized.
#   2. prewrite: fio 64k sequential writes with crc32c verify headers over region A
#      [0, A) of the namespace, read back and verified.
#   3. I/O through the phases: in the background, rounds of one fio run each (round r,
#      seed r: 4k random writes over region B [A, A+B) with verify_backlog, then a full
#      verify pass; beside it a reader re-verifying region A).  Each I/O's completion is
#      logged (fio latency logs) to find how long completions stopped.  A poller reads
#      http://TARGET_ADDR:E2E_CTL_PORT/state every half second: a new phase name there
#      is printed as "MARK: phase NAME" (after the list-subsys of the phase that ended),
#      and every change of the paths' states as "PATHS: A=ctrl:state:ana B=...".  Once
#      the state says "done", the round in progress completes and the loop stops.
#   4. final verify: verify_only over region A and over region B (the last round's data).
#   5. per phase (the windows between the poller's MARK lines): "STALL: <phase> <ms>"
#      with the longest time without any completion and the largest completion latency.
#   6. kernel log: no I/O error.
#
# Any fio error, any verify error, or any I/O error in the kernel log fails the test.
#
# Settings (environment or KEY=VALUE arguments):
#   SUBNQN, TARGET_ADDR (10.0.2.2), E2E_METRO_PORT_A, E2E_METRO_PORT_B, E2E_CTL_PORT
#   E2E_METRO_KATO (5)          nvme connect --keep-alive-tmo, seconds
#   E2E_METRO_CTRL_LOSS (3600)  nvme connect --ctrl-loss-tmo, seconds
#   E2E_METRO_RECONNECT (1)     nvme connect --reconnect-delay, seconds
#   E2E_METRO_IOPOLICY (round-robin)  the subsystem's multipath I/O policy
#   E2E_A_MB (8), E2E_B_MB (8)  region sizes, MiB
#   E2E_MAX_ROUNDS (400), E2E_STEP_TIMEOUT (300 s per fio run)
#
# Each step prints "STEP: ..." and "PASS: ...".  The last line is
# "E2E RESULT: PASS" (exit 0) or "E2E RESULT: FAIL at <step>" (exit 1).
. "${E2E_DIR:-$(dirname "$0")}/common.sh"
PORT_A=${E2E_METRO_PORT_A:-}
PORT_B=${E2E_METRO_PORT_B:-}
CTL_PORT=${E2E_CTL_PORT:-}
KATO=${E2E_METRO_KATO:-5}
CTRL_LOSS=${E2E_METRO_CTRL_LOSS:-3600}
RECONNECT=${E2E_METRO_RECONNECT:-1}
IOPOLICY=${E2E_METRO_IOPOLICY:-round-robin}
A_MB=${E2E_A_MB:-8}
B_MB=${E2E_B_MB:-8}
MAX_ROUNDS=${E2E_MAX_ROUNDS:-400}
WORK=/tmp/e2e

IO_PID=
POLL_PID=
on_exit() {
    rc=$?
    trap - EXIT
    if [ "$rc" -ne 0 ]; then
        echo "---- diagnostics (exit $rc) ----"
        [ -n "$IO_PID" ] && kill "$IO_PID" 2>/dev/null
        [ -n "$POLL_PID" ] && kill "$POLL_PID" 2>/dev/null
        killall fio 2>/dev/null
        dmesg | tail -n 60 || true
        for f in /sys/class/nvme/nvme*/state; do
            [ -f "$f" ] && echo "$f: $(cat "$f")"
        done
        timeout 10 nvme list-subsys 2>&1 || true
        echo "E2E RESULT: FAIL at $CUR"
        exit "$rc"
    fi
}
trap on_exit EXIT

[ -n "$NQN" ] || fail "SUBNQN not set"
[ -n "$PORT_A" ] && [ -n "$PORT_B" ] || fail "E2E_METRO_PORT_A and E2E_METRO_PORT_B must be set"
[ -n "$CTL_PORT" ] || fail "E2E_CTL_PORT not set"
rm -rf "$WORK"
mkdir -p "$WORK"

# The subsystem directory (/sys/class/nvme-subsystem/nvme-subsysN) of our NQN.
find_subsys() {
    for s in /sys/class/nvme-subsystem/nvme-subsys*; do
        [ "$(cat "$s/subsysnqn" 2>/dev/null)" = "$NQN" ] && { echo "$s"; return 0; }
    done
    return 1
}
# Namespace heads (nvmeXnY, not the per-path nvmeXcZnY) of our subsystem.
find_heads() {
    for b in /sys/block/nvme*n*; do
        n=${b##*/}
        case $n in *c*) continue ;; esac
        [ "$(cat "$b/device/subsysnqn" 2>/dev/null)" = "$NQN" ] || continue
        echo "$n"
    done
}
site_of() { # CTRL: A or B, by the port it is connected to
    a=$(cat "/sys/class/nvme/$1/address" 2>/dev/null)
    case $a in
        *"trsvcid=$PORT_A,"* | *"trsvcid=$PORT_A") echo A ;;
        *"trsvcid=$PORT_B,"* | *"trsvcid=$PORT_B") echo B ;;
        *) echo "?" ;;
    esac
}
# "A=nvme0:live:optimized B=nvme1:connecting:inaccessible": every controller of our
# subsystem, by site, with its state and its path's ANA state.
paths() {
    s=$(find_subsys) || { echo "none"; return 0; }
    out=""
    for c in "$s"/nvme*; do
        c=${c##*/}
        case $c in nvme-subsys* | nvme*n*) continue ;; esac
        [ -e "/sys/class/nvme/$c" ] || continue
        ana="-"
        for p in /sys/class/nvme/"$c"/nvme*c*n*; do
            [ -f "$p/ana_state" ] && ana=$(cat "$p/ana_state" 2>/dev/null)
        done
        out="$out $(site_of "$c")=$c:$(cat "/sys/class/nvme/$c/state" 2>/dev/null):$ana"
    done
    echo "$out" | tr ' ' '\n' | grep . | sort | tr '\n' ' ' | sed 's/ $//'
}
list_subsys() {
    timeout 10 nvme list-subsys "/dev/$DEV" 2>&1 || echo "(nvme list-subsys /dev/$DEV failed)"
}

region_a() { # EXTRA...: 64k sequential over [0, A)
    echo "--name=a --filename=/dev/$DEV --rw=write --bs=64k --iodepth=8 --offset=0 --size=${A_MB}M $*"
}
region_b() { # ROUND EXTRA...: 4k random writes over [A, A+B), seed ROUND
    r=$1; shift
    echo "--name=b --filename=/dev/$DEV --rw=randwrite --bs=4k --iodepth=16 --randseed=$r --offset=${A_MB}M --size=${B_MB}M $*"
}
io_summary() {
    sed -n 's/^ *\(READ\|WRITE\): bw=\([^ ]*\) .* io=\([^ ]*\) .*/\1 \2 \3/p' "$1" | tr '\n' ' '
}
phase_now() { cat "$WORK/phase" 2>/dev/null || echo setup; }

# The completions of round R (fio latency logs: "msec since the job started, latency in
# nsec, direction, ..."), launched at uptime T0: per phase of $WORK/phases (lines "UPTIME NAME"), the
# longest gap without a completion (from the job's start to the first one included; a gap
# belongs to the phase it began in) and the largest completion latency (by the phase its
# I/O was issued in). Appends "PHASE GAP_MS CLAT_MS ROUND" lines to $WORK/stalls.
analyse_round() {
    r=$1 t0=$2
    # Job 1 writes region B and verifies it; job 2 re-verifies region A (verify_only: its
    # logged writes were never issued, only its reads are I/O).
    { cat "$WORK/lat-r${r}_clat.1.log"; awk -F', *' '$3 == 0' "$WORK/lat-r${r}_clat.2.log"; } 2>/dev/null |
        sort -t, -k1,1n | awk -F', *' -v t0="$t0" -v r="$r" -v phf="$WORK/phases" '
        BEGIN { n = 0; while ((getline l < phf) > 0) { split(l, f, " "); pt[n] = f[1]; pn[n] = f[2]; n++ } }
        function phase(t,   i, p) { p = (n ? pn[0] : "setup"); for (i = 0; i < n; i++) if (pt[i] <= t) p = pn[i]; return p }
        {
            ts = $1 + 0; c = $2 / 1e6
            gs = (NR == 1) ? 0 : prev; g = ts - gs
            p = phase(t0 + gs / 1000); seen[p] = 1; if (g > gap[p]) gap[p] = g
            if (c <= ts + 1) { q = phase(t0 + (ts - c) / 1000); seen[q] = 1; if (c > clat[q]) clat[q] = c }
            prev = ts
        }
        END { for (p in seen) printf "%s %d %d %d\n", p, gap[p], clat[p], r }' >>"$WORK/stalls"
    rm -f "$WORK"/lat-r"$r"_*.log
}

# Background: the control state and the paths' states, reported as they change.
poller() {
    trap - EXIT
    last="" lastp=""
    while :; do
        s=$(timeout 10 wget -q -O - "http://$ADDR:$CTL_PORT/state" 2>/dev/null) || s=""
        s=$(echo "$s" | tr -cd 'A-Za-z0-9_.-')
        if [ -n "$s" ] && [ "$s" != "$last" ]; then
            if [ -n "$last" ]; then
                echo "SUBSYS: after phase $last (t=$(now)s):"
                list_subsys | sed 's/^/SUBSYS: /'
            fi
            t=$(now)
            echo "$t $s" >>"$WORK/phases"
            echo "$s" >"$WORK/phase.tmp" && mv "$WORK/phase.tmp" "$WORK/phase"
            echo "MARK: phase $s (t=${t}s)"
            last=$s
        fi
        p=$(paths)
        if [ "$p" != "$lastp" ]; then
            echo "PATHS: $p (t=$(now)s)"
            lastp=$p
        fi
        [ "$s" = done ] && break
        sleep 0.5
    done
}

# Background I/O: rounds until the host says done.
io_rounds() {
    trap - EXIT   # a failing round ends this subshell only; the main script reports it
    r=0
    while :; do
        r=$((r + 1))
        echo "$r" >"$WORK/last-round"
        t=$(now)
        ph=$(phase_now)
        # shellcheck disable=SC2046  # job sections split on purpose
        fio_run "round$r" 2 --write_lat_log="$WORK/lat-r$r" --log_avg_msec=0 \
            $(region_b "$r" --verify_backlog=64) $(region_a --verify_only)
        analyse_round "$r" "$t"
        stall=$(awk -v r="$r" '$4 == r && $2 > m { m = $2 } END { print m + 0 }' "$WORK/stalls")
        clat=$(awk -v r="$r" '$4 == r && $3 > m { m = $3 } END { print m + 0 }' "$WORK/stalls")
        echo "IO: round $r [$ph..$(phase_now)] passed in $(awk -v a="$t" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}') s" \
            "(t=$(now)s): longest gap ${stall} ms, clat max ${clat} ms; $(io_summary "$WORK/fio-round$r.log")"
        rm -f "$WORK/fio-round$((r - 1)).log"
        [ "$(phase_now)" = done ] && break
        [ "$r" -lt "$MAX_ROUNDS" ] || fail "no 'done' from the host after $r rounds"
    done
}

echo "E2E: metro: site A $ADDR:$PORT_A, site B $ADDR:$PORT_B, subsystem $NQN (kernel $(uname -r)), control port $CTL_PORT"

step "native NVMe multipath"
mp=$(cat /sys/module/nvme_core/parameters/multipath 2>/dev/null || echo missing)
[ "$mp" = Y ] || fail "native NVMe multipath is off (nvme_core.multipath=$mp): the two sites would show as two namespaces"
pass "nvme_core.multipath=Y"

step "connect both sites (keep-alive ${KATO}s, ctrl-loss ${CTRL_LOSS}s, reconnect delay ${RECONNECT}s)"
for port in "$PORT_A" "$PORT_B"; do
    nvme connect -t tcp -a "$ADDR" -s "$port" -n "$NQN" --keep-alive-tmo="$KATO" \
        --ctrl-loss-tmo="$CTRL_LOSS" --reconnect-delay="$RECONNECT" ||
        fail "nvme connect to $ADDR:$port exited non-zero"
done
i=0
while :; do
    heads=$(find_heads)
    SUBSYS=$(find_subsys) || SUBSYS=""
    np=$(paths | tr ' ' '\n' | grep -c ':live:optimized$' || true)
    [ -n "$heads" ] && [ "$np" -eq 2 ] && break
    i=$((i + 1)); [ $i -le 200 ] || { echo "paths: $(paths)"; echo "heads: $heads"; fail "no namespace head with two live optimized paths after 20 s"; }
    sleep 0.1
done
[ "$(echo "$heads" | wc -w)" -eq 1 ] || fail "$(echo "$heads" | wc -w) namespace heads for $NQN ($heads): the paths were not merged"
DEV=$heads
[ -b "/dev/$DEV" ] || fail "/dev/$DEV is not a block device"
nsub=0
for s in /sys/class/nvme-subsystem/nvme-subsys*; do
    [ "$(cat "$s/subsysnqn" 2>/dev/null)" = "$NQN" ] && nsub=$((nsub + 1))
done
[ "$nsub" -eq 1 ] || fail "$nsub subsystems with NQN $NQN (want one)"
nctrl=0
for c in "$SUBSYS"/nvme[0-9]*; do
    case ${c##*/} in nvme*n[0-9]*) ;; *) nctrl=$((nctrl + 1)) ;; esac   # nvmeX, not the head nvmeXnY
done
[ "$nctrl" -eq 2 ] || fail "subsystem $SUBSYS has $nctrl controllers (want two)"
echo "$IOPOLICY" >"$SUBSYS/iopolicy" || fail "cannot set iopolicy $IOPOLICY"
mb=$(($(blockdev --getsize64 "/dev/$DEV") / 1048576))
[ "$mb" -ge $((A_MB + B_MB)) ] || fail "/dev/$DEV is $mb MiB, the test needs $((A_MB + B_MB)) MiB"
echo "namespace: /dev/$DEV, $mb MiB, subsystem ${SUBSYS##*/}, iopolicy $(cat "$SUBSYS/iopolicy")"
echo "PATHS: $(paths) (t=$(now)s)"
nvme list-subsys 2>&1 | sed 's/^/SUBSYS: /'
list_subsys | sed 's/^/SUBSYS: /'
pass "one subsystem, one namespace head /dev/$DEV, two paths (A and B) live and optimized"

step "prewrite region A (${A_MB} MiB, 64k sequential, crc32c, verified)"
# shellcheck disable=SC2046
fio_run prewrite 1 $(region_a --do_verify=1)
pass "prewrite verified: $(io_summary "$WORK/fio-prewrite.log")"

step "fio with verify through the host-driven phases"
poller &
POLL_PID=$!
i=0
while [ ! -f "$WORK/phase" ]; do
    i=$((i + 1)); [ $i -le 120 ] || fail "no control state from http://$ADDR:$CTL_PORT/state in 60 s"
    sleep 0.5
done
io_rounds &
IO_PID=$!
i=0
while [ "$(pidof fio | wc -w)" -lt 1 ]; do
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
wait "$POLL_PID" 2>/dev/null || true
POLL_PID=
pass "$(cat "$WORK/last-round") rounds of write+verify and read+verify through every phase, no errors"

step "final verify_only pass over regions A and B"
last=$(cat "$WORK/last-round")
# shellcheck disable=SC2046
fio_run final 2 $(region_a --verify_only) $(region_b "$last" --verify_only)
pass "regions A and B verify: $(io_summary "$WORK/fio-final.log")"

step "stalls per phase"
# Phases in the order they came; per phase the largest gap and completion latency.
cut -d' ' -f2 "$WORK/phases" | while read -r p; do
    [ "$p" = done ] && continue
    awk -v p="$p" '$1 == p { n++; if ($2 > g) g = $2; if ($3 > c) c = $3 }
        END { if (n) printf "STALL: %s %d ms (clat max %d ms)\n", p, g, c; else printf "STALL: %s n/a (no I/O)\n", p }' "$WORK/stalls"
done
echo "STALL: keep-alive timeout ${KATO} s, ctrl-loss-tmo ${CTRL_LOSS} s, reconnect delay ${RECONNECT} s, iopolicy $IOPOLICY"
pass "stalls measured"

step "kernel log"
# The NVMe host's own account of the phases, without the once-a-second reconnect lines.
dmesg | grep -Ei 'nvme|blk|I/O' | grep -vE 'failed to connect socket|Failed reconnect attempt|Reconnecting in' |
    tail -n 60 | sed 's/^/KLOG: /'
echo "KLOG: ($(dmesg | grep -c 'Failed reconnect attempt' || true) failed reconnect attempts while a site was down)"
if dmesg | grep -Ei 'I/O error|blk_update_request|Buffer I/O|critical (medium|target) error'; then
    fail "the kernel logged I/O errors"
fi
pass "no I/O errors in the kernel log"

echo "SUBSYS: at the end (t=$(now)s):"
list_subsys | sed 's/^/SUBSYS: /'
echo "PATHS: $(paths) (t=$(now)s)"

disconnect_and_pass
