#!/bin/sh
# PID 1 of the test guest (busybox ash).  Sets up the minimal system, runs
# /guest/script with the arguments and environment run.sh packed into the
# per-run initramfs, reports its exit status on the second serial port
# (ttyS1, read by run.sh) and powers off.  If anything here dies, the kernel
# panics (init exited), and QEMU (-no-reboot, panic=-1) exits without a
# status line, which run.sh treats as failure.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs tmpfs /run
mkdir -p /root /var/tmp /dev/shm
hostname guest
# No CR before LF on the console: keeps the host-side log greppable.
stty -F /dev/console -onlcr 2>/dev/null || true

report() { # report STATUS: the only way the host learns the result
    echo "GUEST_EXIT_STATUS=$1" >/dev/ttyS1
    sync
    poweroff -f
    sleep 10
}

# Modules every test needs.  crc32c must be registered before nvme-tcp uses
# digests (-g/-G) and before ext4 mounts a metadata_csum filesystem.
for m in configfs crc32c_intel crc32c_generic libcrc32c nvme_tcp ext4 virtio_pci virtio_net; do
    modprobe "$m" || echo "init: WARNING: modprobe $m failed"
done
mount -t configfs configfs /sys/kernel/config 2>/dev/null || true

# Network: slirp user networking, host reachable as 10.0.2.2; no default route.
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip addr add 10.0.2.15/24 dev eth0
    ip link set eth0 up
    # Wait (<= 5 s) for carrier so a script's first connect does not race it.
    i=0
    while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ] && [ $i -lt 50 ]; do
        sleep 0.1; i=$((i + 1))
    done
fi

# NVMe host identity (nvme-cli wants /etc/nvme/hostnqn and hostid).
hostid=$(cat /proc/sys/kernel/random/uuid)
echo "nqn.2014-08.org.nvmexpress:uuid:$hostid" >/etc/nvme/hostnqn
echo "$hostid" >/etc/nvme/hostid

read -r up _ </proc/uptime
echo "GUEST: up after ${up}s, kernel $(uname -r), $(nproc) CPUs"

if [ ! -f /guest/script ]; then
    echo "GUEST: no /guest/script"
    report 127
fi
# shellcheck disable=SC1091  # written by run.sh
[ -f /guest/env.sh ] && . /guest/env.sh
set --
# shellcheck disable=SC1091
[ -f /guest/args.sh ] && . /guest/args.sh
cd /guest || report 126
rc=0
sh /guest/script "$@" || rc=$?
read -r up _ </proc/uptime
echo "GUEST: script exited with status $rc at ${up}s"
report "$rc"
