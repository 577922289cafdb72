#!/usr/bin/env bash
# Builds (or finds cached) the Debian 12 guest image of the systemd + cgroup v2 test tier:
# systemd as PID 1, the unified cgroup hierarchy, the guest's own kernel and initrd, and every
# Debian package scripts/setup-host.sh installs (the guest has no network, so the README's
# install command must find them present). Packages go into the root filesystem here on the
# host, through chroot: emulated, the same work is about 25 times slower. So does the npm
# cache for the tsx version setup-host.sh pins (the guest installs it offline).
#
# Prints the image directory (disk.raw, vmlinuz, initrd.img) on stdout. The cache lives outside
# the checkout, keyed by a hash of every build input; other keys are removed after a build.
# Run as root.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE_ROOT=${SANDBOXD_GUEST_CACHE:-/var/cache/sandboxd-tests/guest}
SUITE=bookworm
DISK_SIZE=8G
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

if [ "$(id -u)" -ne 0 ]; then echo "build-image.sh must run as root" >&2; exit 1; fi
for tool in debootstrap mkfs.ext4; do
  command -v "$tool" >/dev/null || { echo "build-image.sh needs $tool (apt-get install debootstrap e2fsprogs)" >&2; exit 1; }
done

# The archive apt already uses on this host: the guest's packages come from the same place.
apt_sources=()
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
  [ -f "$f" ] && apt_sources+=("$f")
done
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' \
    /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "build-image.sh: no Debian archive found in the apt sources" >&2; exit 1; }

# shellcheck source=../host-packages.sh
source "$REPO/scripts/host-packages.sh"
# What boots the guest, what the README's install finds (setup-host's lists, npm for tsx), and
# what the in-guest tests use (the e2e client runs on node; iproute2 and psmisc for checks).
boot_pkgs=(systemd systemd-sysv udev dbus kmod linux-image-amd64 initramfs-tools e2fsprogs)
extra_pkgs=(npm iproute2 psmisc)

key=$( {
  cat "${BASH_SOURCE[0]}" "$HERE/guest-entry.sh" "$REPO/scripts/host-packages.sh" "${apt_sources[@]}" \
    /etc/apt/apt.conf.d/*
  grep '^TSX_VERSION=' "$REPO/scripts/setup-host.sh"
  echo "$mirror $SUITE $DISK_SIZE ${boot_pkgs[*]} ${extra_pkgs[*]}"
} | sha256sum | cut -c1-16)
image="$CACHE_ROOT/$key"
if [ -f "$image/done" ]; then echo "$image"; exit 0; fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
flock 9  # one build at a time; a concurrent run waits and then finds the image
if [ -f "$image/done" ]; then echo "$image"; exit 0; fi

work="$CACHE_ROOT/.build-$key"
rootfs="$work/rootfs"
mounted=()
cleanup() {
  local m
  for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do m=${mounted[$i]}; umount "$m" 2>/dev/null || umount -l "$m" || true; done
  rm -rf --one-file-system "$work"  # never into a bind mount that failed to unmount
}
trap cleanup EXIT
rm -rf --one-file-system "$work"
mkdir -p "$work"
start=$SECONDS
log() { echo "build-image: [$((SECONDS - start)) s] $*" >&2; }

log "debootstrap $SUITE from $mirror"
debootstrap --variant=minbase --include="$(IFS=,; echo "${boot_pkgs[*]}")" "$SUITE" "$rootfs" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

# apt inside the chroot: the host's own sources; no daemon may start during the install.
rm -f "$rootfs/etc/apt/sources.list"
for f in "${apt_sources[@]}"; do cp "$f" "$rootfs$f"; done
cp /etc/apt/apt.conf.d/* "$rootfs/etc/apt/apt.conf.d/"  # e.g. a snapshot archive's date checks
printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
chmod 0755 "$rootfs/usr/sbin/policy-rc.d"
for m in proc sys dev; do
  mount --bind "/$m" "$rootfs/$m"
  mounted+=("$rootfs/$m")
done

log "apt-get install (setup-host's packages and the tests' own)"
chroot "$rootfs" apt-get update -q >"$work/apt.log" 2>&1
chroot "$rootfs" apt-get install -y -q --no-install-recommends \
  "${apt_pkgs[@]}" "${lang_pkgs[@]}" "${extra_pkgs[@]}" >>"$work/apt.log" 2>&1 \
  || { tail -30 "$work/apt.log" >&2; exit 1; }
chroot "$rootfs" apt-get clean

# The npm cache setup-host.sh's `npm install tsx@<pinned>` reads offline in the guest, filled
# by the guest's own npm (another npm version caches the registry's answers under other
# request headers, which this one does not accept offline). The host's CA bundle and resolver
# are lent for this one step only.
tsx_version=$(sed -n 's/^TSX_VERSION=\([0-9.]*\)$/\1/p' "$REPO/scripts/setup-host.sh")
[ -n "$tsx_version" ] || { echo "build-image.sh: no TSX_VERSION in setup-host.sh" >&2; exit 1; }
log "npm cache for tsx@$tsx_version"
cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/tmp/host-ca.crt"
chroot "$rootfs" env HOME=/root NODE_EXTRA_CA_CERTS=/tmp/host-ca.crt npm install --prefix /tmp/npm-fill \
  --cache /var/cache/sandboxd-npm --ignore-scripts --no-audit --no-fund --loglevel=error "tsx@$tsx_version" \
  >"$work/npm.log" 2>&1 || { tail -30 "$work/npm.log" >&2; exit 1; }
rm -rf "$rootfs/tmp/npm-fill" "$rootfs/tmp/host-ca.crt" "$rootfs/root/.npm/_logs"
: >"$rootfs/etc/resolv.conf"  # the guest has no network
rm -f "$rootfs/usr/sbin/policy-rc.d"
for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount "${mounted[$i]}"; done
mounted=()

log "configure the guest"
echo sandboxd-guest >"$rootfs/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 sandboxd-guest\n' >"$rootfs/etc/hosts"
printf '/dev/vda / ext4 rw,errors=remount-ro 0 1\n' >"$rootfs/etc/fstab"
: >"$rootfs/etc/machine-id"  # generated at each boot (the disk is used read-only, as a snapshot)
# Nothing periodic may wake up during a test run; no login prompt on the console.
for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer \
         man-db.timer dpkg-db-backup.timer serial-getty@ttyS0.service getty@tty1.service; do
  ln -sf /dev/null "$rootfs/etc/systemd/system/$u"
done
# The entry point: mount the shares the runner passes (9p), run the tier's script from the
# checkout, power off when it ends, also when it fails. The runner bounds the whole boot.
install -m 0755 "$HERE/guest-entry.sh" "$rootfs/usr/local/sbin/sandboxd-guest-entry"
cat >"$rootfs/etc/systemd/system/sandboxd-guest-tier.service" <<'UNIT'
[Unit]
Description=sandboxd guest test tier (runs the checkout's scripts/guest/in-guest.sh)
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/sandboxd-guest-entry
TimeoutStartSec=infinity
StandardOutput=journal+console
StandardError=journal+console
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/sandboxd-guest-tier.service \
  "$rootfs/etc/systemd/system/multi-user.target.wants/sandboxd-guest-tier.service"

cp "$(readlink -f "$rootfs/vmlinuz")" "$work/vmlinuz"
cp "$(readlink -f "$rootfs/initrd.img")" "$work/initrd.img"
log "mkfs.ext4 $DISK_SIZE from the root filesystem ($(du -sh "$rootfs" | cut -f1))"
mkfs.ext4 -q -F -L sandboxd-guest -d "$rootfs" "$work/disk.raw" "$DISK_SIZE" >&2
rm -rf --one-file-system "$rootfs"
touch "$work/done"

# Publish atomically, then drop images built from other inputs.
rm -rf "$image"
mv "$work" "$image"
trap - EXIT
for old in "$CACHE_ROOT"/*; do
  [ "$old" = "$image" ] || rm -rf "$old"
done
rm -rf --one-file-system "$CACHE_ROOT"/.build-*
log "image ready: $image"
echo "$image"
