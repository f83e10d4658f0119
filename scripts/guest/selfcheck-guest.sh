#!/bin/sh
# Self-check of the guest test harness without the project's target: set up
# the Linux kernel's own NVMe/TCP target (nvmet + nvmet-tcp, configfs) inside
# the guest on 127.0.0.1:4420, backed by a memory-backed null_blk device,
# and run tests/e2e/guest-nvme.sh against it.
#
#   scripts/guest/run.sh scripts/guest/selfcheck-guest.sh
set -eu

NQN=${SUBNQN:-nqn.2024-01.io.nvmf-raid:selfcheck}
PORT=${TARGET_PORT:-4420}
SIZE_MB=${SELFCHECK_SIZE_MB:-512}
CFG=/sys/kernel/config

# Backing store: null_blk created through configfs (nr_devices=0 suppresses
# the default, non-memory-backed nullb0).  memory_backed=1 keeps written data,
# so fio verify and ext4 work; discard=1 lets mkfs exercise Dataset Management.
modprobe null_blk nr_devices=0
NB=$CFG/nullb/selfcheck
mkdir "$NB"
echo "$SIZE_MB" >"$NB/size"          # MiB
echo 4096 >"$NB/blocksize"
# SELFCHECK_MEMORY_BACKED=0 (pass it with GUEST_ENV) gives a device that
# drops writes: the e2e must then FAIL at its first verify (harness check).
echo "${SELFCHECK_MEMORY_BACKED:-1}" >"$NB/memory_backed"
echo 1 >"$NB/discard"
echo 1 >"$NB/power"
# Debian's 6.1 names the disk after the configfs directory; upstream 6.1
# names it nullb<index>.  Accept either.
i=0
while :; do
    for BDEV in /dev/selfcheck "/dev/nullb$(cat "$NB/index")"; do
        [ -b "$BDEV" ] && break 2
    done
    i=$((i + 1)); [ $i -lt 50 ] || break
    sleep 0.1
done
[ -b "$BDEV" ] || { echo "selfcheck: $BDEV did not appear"; exit 1; }

# Kernel NVMe target: one subsystem, namespace 1 = the null_blk, a TCP port.
modprobe nvmet
modprobe nvmet_tcp
T=$CFG/nvmet
mkdir "$T/subsystems/$NQN"
echo 1 >"$T/subsystems/$NQN/attr_allow_any_host"
mkdir "$T/subsystems/$NQN/namespaces/1"
printf '%s' "$BDEV" >"$T/subsystems/$NQN/namespaces/1/device_path"
echo 1 >"$T/subsystems/$NQN/namespaces/1/enable"
mkdir "$T/ports/1"
echo tcp >"$T/ports/1/addr_trtype"
echo ipv4 >"$T/ports/1/addr_adrfam"
echo 127.0.0.1 >"$T/ports/1/addr_traddr"
echo "$PORT" >"$T/ports/1/addr_trsvcid"
ln -s "$T/subsystems/$NQN" "$T/ports/1/subsystems/$NQN"
echo "selfcheck: kernel nvmet target on 127.0.0.1:$PORT, $NQN -> $BDEV (${SIZE_MB} MiB)"

TARGET_ADDR=127.0.0.1 TARGET_PORT=$PORT SUBNQN=$NQN \
    sh "${E2E_DIR:-/e2e}/guest-nvme.sh"
