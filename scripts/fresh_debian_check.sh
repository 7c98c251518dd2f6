#!/usr/bin/env bash
# Runs the README's two set-up commands as a new user would, on a fresh Debian 12: a minbase chroot made by
# debootstrap, plus git to clone this repository, nothing else. Catches a missing install step that a
# developer's machine hides (a package installed by hand, a newer Node.js).
#   scripts/fresh_debian_check.sh [ROOT] [REV]     ROOT default /tmp/loom-fresh-debian, REV default HEAD
# Needs root and debootstrap (apt-get install debootstrap). The clone is of REV's committed tree.
# With LOOM_FRESH_KEEP=1 an existing ROOT is reused (faster; no longer "fresh" for the packages the
# first run installed). Exit status: the test command's.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=${1:-/tmp/loom-fresh-debian}
rev=${2:-HEAD}
mirror=${LOOM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
[[ $(id -u) -eq 0 ]] || { echo "fresh_debian_check: needs root (debootstrap, chroot, mounts)" >&2; exit 2; }
command -v debootstrap > /dev/null || { echo "fresh_debian_check: apt-get install debootstrap" >&2; exit 2; }

cleanup() { # every mount under the chroot (ours, and any a test made there, e.g. /run/netns), deepest first
  awk -v r="$root" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" 2> /dev/null || true
  done
}
trap cleanup EXIT

if [[ "${LOOM_FRESH_KEEP:-0}" != 1 || ! -x "$root/usr/bin/apt-get" ]]; then
  cleanup
  rm -rf "$root"
  echo "fresh_debian_check: debootstrap --variant=minbase bookworm $root"
  debootstrap --variant=minbase bookworm "$root" "$mirror" > "$root.debootstrap.log" 2>&1 ||
    { tail -20 "$root.debootstrap.log"; exit 1; }
fi
mount --bind "$root" "$root" # "/" a mount point inside, as on a machine (ip netns exec needs it)
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mount --bind /dev/shm "$root/dev/shm"
# this machine's network: its resolver, and the CA file and npm configuration its registry proxy needs
cp /etc/resolv.conf "$root/etc/resolv.conf"
[[ -f /etc/ssl/certs/ca-certificates.crt ]] && install -D -m 644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
[[ -f /etc/npmrc ]] && install -D -m 644 /etc/npmrc "$root/etc/npmrc"
# (the chroot's ca-certificates package rebuilds that file when it installs: the local CAs go in its input too)
for ca in /usr/local/share/ca-certificates/*.crt; do
  [[ -f "$ca" ]] && install -D -m 644 "$ca" "$root/usr/local/share/ca-certificates/$(basename "$ca")"
done

# the repository as a bundle of REV, cloned inside the chroot (git is the one thing a user adds first)
git -C "$here" bundle create "$root/loom.bundle" "$rev" 2> /dev/null || git -C "$here" bundle create "$root/loom.bundle" HEAD
chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
  bash -euo pipefail -c '
    apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q git > /dev/null
    rm -rf /root/loom && git clone -q /loom.bundle /root/loom && cd /root/loom
    git checkout -q FETCH_HEAD 2> /dev/null || true
    echo "fresh_debian_check: $(. /etc/os-release; echo $PRETTY_NAME), loom $(git rev-parse --short HEAD)"
    scripts/setup.sh && build/loom train
    echo "fresh_debian_check: node $(node --version) (Unicode $(node -p process.versions.unicode))"
    scripts/setup.sh --test && ctest --test-dir build --output-on-failure
  '
