#!/usr/bin/env bash
# Boot the test guest under QEMU (TCG) and run one shell script inside it.
#
#   scripts/guest/run.sh GUEST_SCRIPT [ARGS...]
#
# GUEST_SCRIPT runs as `sh /guest/script ARGS...` (busybox ash) after the
# guest init has loaded the NVMe/TCP, crc32c and ext4 modules and configured
# eth0 as 10.0.2.15/24 (slirp: the host's 127.0.0.1:PORT is 10.0.2.2:PORT;
# no default route).  The repo's tests/e2e/ is available in the guest as
# /e2e (E2E_DIR=/e2e).  The guest console goes to stdout and to a log file;
# the exit status is the script's (reported on the guest's second serial
# port).  A guest panic, crash or timeout exits non-zero (125/124).
#
# Env:
#   GUEST_TIMEOUT   total seconds for the QEMU run (default 900)
#   GUEST_LOG       console log file (default $GUEST_DIR/logs/NAME-TIME.log)
#   GUEST_MEM       guest RAM in MiB (default 2048); GUEST_CPUS (default 2)
#   GUEST_KERNEL    vmlinux (default, PVH boot) or bzImage
#   GUEST_APPEND    extra kernel command line; GUEST_QEMU_ARGS extra QEMU args
#   GUEST_HOSTFWD   host ports forwarded into the guest, slirp syntax, comma
#                   separated: "tcp:127.0.0.1:HOSTPORT-10.0.2.15:GUESTPORT,..."
#   GUEST_ENV       names of extra host variables to pass into the guest;
#                   TARGET_ADDR, TARGET_PORT, SUBNQN and E2E_* always pass
#   GUEST_DIR       build output (see build.sh)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export GUEST_DIR="${GUEST_DIR:-$REPO/target/guest}"

die() { echo "guest/run.sh: ERROR: $*" >&2; exit 2; }
[[ $# -ge 1 ]] || die "usage: $0 GUEST_SCRIPT [ARGS...]"
SCRIPT=$1; shift
[[ -f $SCRIPT ]] || die "no such guest script: $SCRIPT"

"$HERE/build.sh" || die "guest build failed"
# shellcheck source=/dev/null
. "$GUEST_DIR/guest.conf"

TIMEOUT=${GUEST_TIMEOUT:-900}
name=$(basename "$SCRIPT" .sh)
mkdir -p "$GUEST_DIR/logs"
LOG=${GUEST_LOG:-$GUEST_DIR/logs/$name-$(date +%Y%m%d-%H%M%S)-$$.log}
mkdir -p "$(dirname "$LOG")"
: >"$LOG"
ln -sfn "$LOG" "$GUEST_DIR/logs/latest.log" 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/guest-run.XXXXXX")
QPID=
# shellcheck disable=SC2317  # invoked by trap
cleanup() {
  if [[ -n $QPID ]]; then kill "$QPID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Per-run overlay cpio: the script, its arguments and environment, tests/e2e.
sq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }   # single-quote for sh
OV="$WORK/overlay"
mkdir -p "$OV/guest" "$OV/e2e"
cp "$SCRIPT" "$OV/guest/script"
if [[ -d $REPO/tests/e2e ]]; then cp -r "$REPO/tests/e2e/." "$OV/e2e/"; fi
{
  printf 'set --'; for a in "$@"; do printf ' %s' "$(sq "$a")"; done; echo
} >"$OV/guest/args.sh"
{
  echo "export E2E_DIR=/e2e"
  for v in TARGET_ADDR TARGET_PORT SUBNQN ${GUEST_ENV:-} $(compgen -e | grep '^E2E_' || true); do
    [[ -n ${!v+x} ]] && echo "export $v=$(sq "${!v}")"
  done
} >"$OV/guest/env.sh"
# The kernel unpacks concatenated cpio archives in order; later files win.
cp "$INITRAMFS" "$WORK/initrd.cpio"
(cd "$OV" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) >>"$WORK/initrd.cpio"

case ${GUEST_KERNEL:-vmlinux} in
  vmlinux) KERNEL=$VMLINUX ;;   # PVH entry: skips in-guest decompression
  bzImage) KERNEL=$BZIMAGE ;;
  *) die "GUEST_KERNEL must be vmlinux or bzImage" ;;
esac

STATUS="$WORK/status"
: >"$STATUS"
# panic=-1 + -no-reboot: a panic ends QEMU at once (no status => failure).
APPEND="console=ttyS0,115200 rdinit=/init panic=-1 oops=panic loglevel=4 mitigations=off"
APPEND+=" i8042.noaux i8042.nopnp ${GUEST_APPEND:-}"
fw=()
IFS=: read -ra fwdirs <<<"$QEMU_FIRMWARE"
for d in "${fwdirs[@]}"; do fw+=(-L "$d"); done

hostfwd=
IFS=, read -ra fwds <<<"${GUEST_HOSTFWD:-}"
for f in "${fwds[@]}"; do hostfwd+=",hostfwd=$f"; done

# shellcheck disable=SC2206,SC2054  # GUEST_QEMU_ARGS split on purpose
QEMU_CMD=("$QEMU" -machine pc -accel tcg,thread=multi -cpu max
  -smp "${GUEST_CPUS:-2}" -m "${GUEST_MEM:-2048}"
  -nodefaults -no-user-config -display none -no-reboot "${fw[@]}"
  -kernel "$KERNEL" -initrd "$WORK/initrd.cpio" -append "$APPEND"
  -chardev "stdio,id=con,signal=off,logfile=$LOG"
  -serial chardev:con
  -chardev "file,id=status,path=$STATUS"
  -serial chardev:status
  -netdev "user,id=net0,net=10.0.2.0/24,host=10.0.2.2$hostfwd"
  -device virtio-net-pci,netdev=net0,romfile=
  -device virtio-rng-pci
  ${GUEST_QEMU_ARGS:-})

echo "guest/run.sh: booting guest for $SCRIPT (timeout ${TIMEOUT}s, log $LOG)" >&2
start=$(date +%s.%N)
qrc=0
# stdin from /dev/null: QEMU must not put a caller's terminal in raw mode.
timeout -k 10 "$TIMEOUT" "${QEMU_CMD[@]}" </dev/null &
QPID=$!
wait "$QPID" || qrc=$?
QPID=
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')

sed -i 's/\r$//' "$LOG" 2>/dev/null || true   # kernel console lines end in CRLF
rc=$(sed -n 's/^GUEST_EXIT_STATUS=\([0-9]*\).*/\1/p' "$STATUS" | tail -n1)
if [[ $qrc == 124 || $qrc == 137 ]]; then
  echo "guest/run.sh: TIMEOUT after ${TIMEOUT}s (log $LOG)" | tee -a "$LOG" >&2
  exit 124
elif [[ -z $rc ]]; then
  echo "guest/run.sh: guest ended without reporting a status (panic/crash, qemu rc $qrc) after ${elapsed}s (log $LOG)" | tee -a "$LOG" >&2
  exit 125
fi
echo "guest/run.sh: guest script exited with status $rc after ${elapsed}s (log $LOG)" | tee -a "$LOG" >&2
exit "$rc"
