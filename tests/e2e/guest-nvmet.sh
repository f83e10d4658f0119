#!/bin/sh
# The Linux kernel target (nvmet) in the guest, for the host's remote-leg test
# (tests/kernel_target.rs): a brd RAM disk of E2E_RAM_MIB MiB exported as namespace 1 of
# SUBNQN over NVMe/TCP on 10.0.2.15:4420 (run.sh forwards a host port to it).
#
# The host steers it through a control port (10.0.2.15:5000, also forwarded): each
# connection carries one command, and the guest answers on the console with a line
# "NVMET <command> DONE":
#   cut      unlink the subsystem from the port: the kernel drops its controllers and
#            refuses new connections (the link to the member is gone)
#   restore  link it again
#   done     end the test (the exit status tells whether every command worked)
set -eu

: "${SUBNQN:?}" "${E2E_RAM_MIB:=64}"
CFG=/sys/kernel/config/nvmet

modprobe nvmet
modprobe nvmet_tcp
modprobe brd rd_nr=1 rd_size=$((E2E_RAM_MIB * 1024))
[ -b /dev/ram0 ] || { echo "GUEST: no /dev/ram0"; exit 1; }

mkdir "$CFG/subsystems/$SUBNQN"
echo 1 >"$CFG/subsystems/$SUBNQN/attr_allow_any_host"
mkdir "$CFG/subsystems/$SUBNQN/namespaces/1"
echo /dev/ram0 >"$CFG/subsystems/$SUBNQN/namespaces/1/device_path"
echo 1 >"$CFG/subsystems/$SUBNQN/namespaces/1/enable"
mkdir "$CFG/ports/1"
echo tcp >"$CFG/ports/1/addr_trtype"
echo ipv4 >"$CFG/ports/1/addr_adrfam"
echo 10.0.2.15 >"$CFG/ports/1/addr_traddr"
echo 4420 >"$CFG/ports/1/addr_trsvcid"
link() { ln -s "$CFG/subsystems/$SUBNQN" "$CFG/ports/1/subsystems/$SUBNQN"; }
link
echo "GUEST: kernel $(uname -r): nvmet serves $SUBNQN (${E2E_RAM_MIB} MiB brd) on 10.0.2.15:4420"
echo "NVMET READY"

while :; do
    cmd=$(nc -l -p 5000 </dev/null | tr -d '\r\n' || true)
    case $cmd in
        cut) rm "$CFG/ports/1/subsystems/$SUBNQN" ;;
        restore) link ;;
        done) echo "NVMET done DONE"; break ;;
        "") continue ;;
        *) echo "GUEST: unknown command '$cmd'"; continue ;;
    esac
    echo "NVMET $cmd DONE"
done
