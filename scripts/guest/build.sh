#!/usr/bin/env bash
# Build the QEMU test guest: QEMU itself, a Debian kernel and a busybox
# initramfs with nvme-cli, fio, e2fsprogs and mdadm.
#
# Nothing is installed on the host except the shared libraries QEMU needs:
# Debian's qemu-system-x86 package conflicts with the preinstalled (newer)
# qemu-utils, so QEMU, the kernel and the guest tools are `apt-get download`ed
# into a cache and unpacked with dpkg-deb.
#
# Output (GUEST_DIR, default <repo>/target/guest):
#   qemu/                 unpacked qemu-system-x86 + firmware
#   vmlinux               uncompressed kernel (PVH entry: no in-guest decompression)
#   initramfs.cpio        base initramfs (run.sh appends a per-run cpio to it)
#   guest.conf            paths and versions, sourced by run.sh
#   cache/debs/           downloaded .deb files (kept across builds)
#
# Idempotent: a stamp (hash of this script + init.sh) makes a rebuild a
# no-op; downloaded .debs are reused.  GUEST_FORCE_REBUILD=1 rebuilds (and so
# picks up newer Debian package versions).
#
# Env: GUEST_DIR, GUEST_FORCE_REBUILD=1, GUEST_NO_APT_UPDATE=1.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
GUEST_DIR="${GUEST_DIR:-$REPO/target/guest}"
CACHE="$GUEST_DIR/cache/debs"

die() { echo "guest/build.sh: ERROR: $*" >&2; exit 1; }
log() { echo "guest/build.sh: [${SECONDS}s] $*" >&2; }
trap 'die "failed at line $LINENO: $BASH_COMMAND"' ERR

# Debian packages -----------------------------------------------------------
QEMU_PKGS=(qemu-system-x86 qemu-system-common qemu-system-data seabios)
# Guest userland. busybox-static provides the shell and all small utilities
# (including sha256sum -c, depmod/modprobe, cpio, ip).
USER_PKGS=(busybox-static nvme-cli libnvme1 fio e2fsprogs mdadm)
# Binaries copied into the guest (looked up in the unpacked packages first,
# then on the host), each with its ldd closure.
GUEST_BINS=(nvme fio mke2fs e2fsck tune2fs dumpe2fs mdadm)
# Kernel modules put into the initramfs (their dependencies are added from
# the modules' own depends= field).  crc32c is needed for NVMe/TCP digests
# and ext4 metadata checksums; nvmet/null_blk/brd/loop for the in-guest
# self-check target; md raid for the project's RAID tests.
MODULES=(configfs virtio_pci virtio_net
         nvme_core nvme_fabrics nvme_tcp nvmet nvmet_tcp
         crc32c_generic crc32c_intel libcrc32c crc32_pclmul crct10dif_pclmul
         ext4 null_blk brd loop
         md_mod raid0 raid1 raid10 raid456)

need_root() { [[ $(id -u) == 0 ]] || die "must run as root (apt-get, dpkg-deb)"; }

# --- fast path ----------------------------------------------------------------
inputs_hash() {
  cat "$HERE/build.sh" "$HERE/init.sh" | sha256sum | cut -d' ' -f1
}
qemu_libs_ok() {
  [[ -x $GUEST_DIR/qemu/usr/bin/qemu-system-x86_64 ]] &&
    ! ldd "$GUEST_DIR/qemu/usr/bin/qemu-system-x86_64" 2>/dev/null | grep -q 'not found'
}

mkdir -p "$GUEST_DIR"
exec 9>"$GUEST_DIR/.lock"
flock 9   # serialize concurrent builds (e.g. two run.sh at once)

STAMP="$GUEST_DIR/.stamp"
HASH="$(inputs_hash)"
if [[ ${GUEST_FORCE_REBUILD:-0} != 1 && -f $STAMP && $(cat "$STAMP") == "$HASH" ]] &&
   [[ -f $GUEST_DIR/initramfs.cpio && -f $GUEST_DIR/vmlinux ]] && qemu_libs_ok; then
  log "up to date ($GUEST_DIR)"
  exit 0
fi
need_root
rm -f "$STAMP"

# --- host tools -----------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
APT_UPDATED=0
apt_update() {
  if [[ $APT_UPDATED == 0 && ${GUEST_NO_APT_UPDATE:-0} != 1 ]]; then
    log "apt-get update"
    apt-get update -qq || die "apt-get update failed"
  fi
  APT_UPDATED=1
}
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
apt_install_missing() {
  local missing=() p
  for p in "$@"; do pkg_installed "$p" || missing+=("$p"); done
  if ((${#missing[@]})); then
    apt_update
    log "apt-get install ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      die "apt-get install ${missing[*]} failed"
  fi
}
for t in dpkg-deb:dpkg xz:xz-utils flock:util-linux ldd:libc-bin; do
  command -v "${t%%:*}" >/dev/null || apt_install_missing "${t#*:}"
done
apt_update

# apt-get download PKG... into $CACHE, skipping files already there.
# Sets FETCHED to the .deb paths (runs in this shell so `die` stops the build).
fetch_debs() {
  mkdir -p "$CACHE"
  local p file size
  FETCHED=()
  for p in "$@"; do
    read -r _ file size _ < <(apt-get download --print-uris "$p" 2>/dev/null | tail -n1) ||
      die "no package $p in apt lists"
    if [[ ! -f $CACHE/$file || $(stat -c %s "$CACHE/$file") != "$size" ]]; then
      log "download $p"
      (cd "$CACHE" && apt-get download -q "$p" >/dev/null 2>&1) || die "apt-get download $p failed"
      [[ -f $CACHE/$file ]] || die "apt-get download $p did not produce $file"
    fi
    FETCHED+=("$CACHE/$file")
  done
}
unpack() { # unpack DEST DEB...
  local dest=$1; shift
  mkdir -p "$dest"
  local d; for d in "$@"; do dpkg-deb -x "$d" "$dest" || die "dpkg-deb -x $d"; done
}

# --- QEMU -------------------------------------------------------------------------
log "QEMU"
fetch_debs "${QEMU_PKGS[@]}"
debs=("${FETCHED[@]}")
rm -rf "$GUEST_DIR/qemu"
unpack "$GUEST_DIR/qemu" "${debs[@]}"
# Install the shared libraries QEMU links against (its lib* Depends).
mapfile -t qlibs < <(dpkg-deb -f "${debs[0]}" Depends | tr ',' '\n' |
  sed -E 's/\(.*\)//; s/\|.*//; s/[[:space:]]//g' | grep -E '^lib' || true)
apt_install_missing "${qlibs[@]}"
QEMU="$GUEST_DIR/qemu/usr/bin/qemu-system-x86_64"
if ldd "$QEMU" | grep 'not found'; then die "QEMU still misses shared libraries (above)"; fi
"$QEMU" --version | head -n1 >&2

# --- kernel -----------------------------------------------------------------------
log "kernel"
fetch_debs linux-image-amd64
kmeta=${FETCHED[0]}
# linux-image-amd64 is a metapackage: its Depends names the versioned image.
kpkg=$(dpkg-deb -f "$kmeta" Depends | tr ',' '\n' | grep -o 'linux-image-[0-9][^ (]*-amd64' | head -n1)
[[ -n $kpkg ]] || die "cannot find versioned kernel package in linux-image-amd64 Depends"
fetch_debs "$kpkg"
kdeb=${FETCHED[0]}
KROOT="$GUEST_DIR/kernel"
rm -rf "$KROOT"
unpack "$KROOT" "$kdeb"
KVER=$(ls "$KROOT/lib/modules")
[[ -n $KVER && -f $KROOT/boot/vmlinuz-$KVER ]] || die "kernel package layout unexpected"

# Extract the uncompressed ELF vmlinux from the bzImage's xz payload: QEMU
# boots it through the PVH entry point, saving the slow decompression under TCG.
off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$KROOT/boot/vmlinuz-$KVER" | head -n1 | cut -d: -f1)
[[ -n $off ]] || die "no xz payload in vmlinuz"
tail -c +$((off + 1)) "$KROOT/boot/vmlinuz-$KVER" | xz -dc --single-stream >"$GUEST_DIR/vmlinux.tmp" 2>/dev/null || true
[[ $(head -c4 "$GUEST_DIR/vmlinux.tmp" | od -An -c | tr -d ' ') == '177ELF' ]] ||
  die "extracting vmlinux from vmlinuz failed"
mv "$GUEST_DIR/vmlinux.tmp" "$GUEST_DIR/vmlinux"
cp "$KROOT/boot/vmlinuz-$KVER" "$GUEST_DIR/bzImage"   # fallback (GUEST_KERNEL=bzImage)

# --- guest userland -----------------------------------------------------------------
log "guest userland"
SYSROOT="$GUEST_DIR/sysroot"
fetch_debs "${USER_PKGS[@]}"
udebs=("${FETCHED[@]}")
# Libraries of those packages that the host lacks: let apt resolve them and
# only download them (never installed on the host).  The simulation names
# exactly which archives belong to this build.
mkdir -p "$CACHE/partial"
mapfile -t extra < <(apt-get install -s --no-install-recommends "${USER_PKGS[@]}" 2>/dev/null |
  sed -nE 's/^Inst (lib[^ ]+) (\[[^]]*\] )?\(([^ ]+) .*\[([a-z0-9]+)\]\)$/\1_\3_\4.deb/p' | sed 's/:/%3a/')
apt-get install -y -qq --download-only --no-install-recommends \
  -o Dir::Cache::archives="$CACHE" "${USER_PKGS[@]}" >/dev/null ||
  die "apt-get --download-only ${USER_PKGS[*]} failed"
libdebs=()
for f in "${extra[@]}"; do
  [[ -f $CACHE/$f ]] || die "expected $CACHE/$f after apt-get --download-only"
  libdebs+=("$CACHE/$f")
done
rm -rf "$SYSROOT"
unpack "$SYSROOT" "${udebs[@]}" "${libdebs[@]}"
BUSYBOX="$SYSROOT/bin/busybox"
[[ -x $BUSYBOX ]] || die "busybox-static did not unpack"

ROOT="$GUEST_DIR/initramfs"
rm -rf "$ROOT"
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib/x86_64-linux-gnu,lib64,etc/nvme,proc,sys,dev,tmp,run,mnt,guest,e2e}
cp "$BUSYBOX" "$ROOT/bin/busybox"
for a in $("$BUSYBOX" --list); do [[ $a == busybox ]] || ln -sf busybox "$ROOT/bin/$a"; done
ln -sf ../bin/busybox "$ROOT/sbin/modprobe"   # kernel's request_module() path

# (librados finds libceph-common through an absolute RUNPATH to .../ceph)
LIBPATH="$SYSROOT/lib/x86_64-linux-gnu:$SYSROOT/usr/lib/x86_64-linux-gnu:$SYSROOT/usr/lib/x86_64-linux-gnu/ceph"
find_bin() {
  local b=$1 d
  for d in "$SYSROOT"/{usr/sbin,usr/bin,sbin,bin} /usr/sbin /usr/bin /sbin /bin; do
    [[ -f $d/$b && ! -L $d/$b ]] && { echo "$d/$b"; return; }
    [[ -L $d/$b ]] && { readlink -f "$d/$b"; return; }
  done
  die "binary $b not found (sysroot or host)"
}
copy_with_libs() {
  local src=$1 dst=$2 out line lib
  cp -L "$src" "$ROOT/$dst"
  out=$(LD_LIBRARY_PATH="$LIBPATH" ldd "$src") || die "ldd $src failed"
  if grep -q 'not found' <<<"$out"; then echo "$out" >&2; die "$src: missing libraries"; fi
  while read -r line; do
    lib=$(sed -nE 's/.*=> (\/[^ ]+) .*/\1/p; t; s/^[[:space:]]*(\/[^ ]+) \(.*/\1/p' <<<"$line")
    [[ -n $lib ]] || continue
    case $lib in
      */ld-linux-x86-64.so.2) cp -L "$lib" "$ROOT/lib64/ld-linux-x86-64.so.2" ;;
      *) cp -L "$lib" "$ROOT/lib/x86_64-linux-gnu/$(basename "$lib")" ;;
    esac
  done <<<"$out"
}
for b in "${GUEST_BINS[@]}"; do
  src=$(find_bin "$b") || exit 1
  copy_with_libs "$src" "usr/sbin/$b"
done
ln -sf mke2fs "$ROOT/usr/sbin/mkfs.ext4"
ln -sf e2fsck "$ROOT/usr/sbin/fsck.ext4"
printf '/lib/x86_64-linux-gnu\n/usr/lib/x86_64-linux-gnu\n' >"$ROOT/etc/ld.so.conf"

# --- kernel modules ---------------------------------------------------------------------
log "kernel modules"
MODSRC="$KROOT/lib/modules/$KVER"
MODDST="$ROOT/lib/modules/$KVER"
declare -A MODPATH=() WANT=()
while read -r f; do
  n=${f##*/}; n=${n%.ko}; MODPATH[${n//-/_}]=$f
done < <(find "$MODSRC/kernel" -name '*.ko')
mod_deps() { tr '\0' '\n' <"${MODPATH[$1]}" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '; }
add_mod() {
  local m=${1//-/_} d
  [[ -n ${WANT[$m]:-} ]] && return
  if [[ -z ${MODPATH[$m]:-} ]]; then
    grep -qE "/${m//_/[-_]}\.ko$" "$MODSRC/modules.builtin" && return  # built in
    die "kernel module $m not found"
  fi
  WANT[$m]=1
  for d in $(mod_deps "$m"); do add_mod "$d"; done
}
for m in "${MODULES[@]}"; do add_mod "$m"; done
# Strip the appended module signature: the kernel does not enforce them, and
# verifying them doubles module load time under TCG.
strip_sig() {
  local f=$1 magic='~Module signature appended~' size siglen
  [[ $(tail -c 28 "$f" | head -c 27) == "$magic" ]] || return 0
  size=$(stat -c %s "$f")
  # struct module_signature (12 bytes) precedes the magic; sig_len is its
  # last field, big-endian u32.
  siglen=$(tail -c 32 "$f" | head -c 4 | od -An -tu1 | awk '{print $1*16777216+$2*65536+$3*256+$4}')
  truncate -s $((size - 28 - 12 - siglen)) "$f"
}
for m in "${!WANT[@]}"; do
  rel=${MODPATH[$m]#"$MODSRC"/}
  mkdir -p "$MODDST/$(dirname "$rel")"
  cp "${MODPATH[$m]}" "$MODDST/$rel"
  strip_sig "$MODDST/$rel"
done
cp "$MODSRC/modules.builtin" "$MODSRC/modules.order" "$MODDST/"
"$BUSYBOX" depmod -b "$ROOT" "$KVER" || die "depmod failed"
[[ -s $MODDST/modules.dep ]] || die "depmod produced no modules.dep"
log "modules: $(echo "${!WANT[@]}" | wc -w) ($KVER)"

# --- init and the archive ----------------------------------------------------------------
install -m 0755 "$HERE/init.sh" "$ROOT/init"
echo "KVER=$KVER" >"$ROOT/etc/guest-release"
# Uncompressed: the kernel unpacks it far faster under TCG than gzip.
(cd "$ROOT" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) >"$GUEST_DIR/initramfs.cpio.tmp"
mv "$GUEST_DIR/initramfs.cpio.tmp" "$GUEST_DIR/initramfs.cpio"

cat >"$GUEST_DIR/guest.conf" <<EOF
# generated by scripts/guest/build.sh
KVER=$KVER
QEMU=$QEMU
QEMU_FIRMWARE=$GUEST_DIR/qemu/usr/share/seabios:$GUEST_DIR/qemu/usr/share/qemu
VMLINUX=$GUEST_DIR/vmlinux
BZIMAGE=$GUEST_DIR/bzImage
INITRAMFS=$GUEST_DIR/initramfs.cpio
BUSYBOX=$BUSYBOX
EOF
echo "$HASH" >"$STAMP"
log "done: $GUEST_DIR (kernel $KVER, initramfs $(du -h "$GUEST_DIR/initramfs.cpio" | cut -f1))"
