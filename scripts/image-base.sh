#!/usr/bin/env bash
# A local Debian base image with Python, for building the CPU image where no registry can be reached.
#   scripts/image-base.sh [IMAGE]     (default localhost/stjobs-base:bookworm; root only)
# Installs Debian's buildah, podman, debootstrap and runc when missing, debootstraps bookworm with python3 and
# python3-venv, and imports it into containers/storage with the vfs driver (the only one that works in this
# sandbox; buildah and podman must use the same driver to see each other's images). Idempotent: an existing
# image is kept. Prints how long each step took.
set -euo pipefail
image="${1:-localhost/stjobs-base:bookworm}"
work="${STJOBS_IMAGE_WORK:-/var/tmp/stjobs-image}"
mirror="${STJOBS_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
podman=(podman --storage-driver vfs --runtime runc --cgroup-manager cgroupfs --events-backend file)

say() { echo "[image-base] $*" >&2; }
[[ $EUID -eq 0 ]] || { say "needs root (debootstrap, containers/storage)"; exit 1; }

start=$SECONDS
missing=()
for tool in buildah podman debootstrap runc newuidmap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if (( ${#missing[@]} )); then
  say "installing buildah podman debootstrap runc uidmap (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq buildah podman debootstrap runc uidmap >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq buildah podman debootstrap runc uidmap >/dev/null; }
  say "packages ready ($(( SECONDS - start )) s)"
fi

if "${podman[@]}" image exists "$image"; then
  say "$image already present"
  exit 0
fi

rootfs="$work/rootfs"
rm -rf "$rootfs" && mkdir -p "$work"
step=$SECONDS
# python3-venv brings the pip and setuptools wheels for ensurepip, so `python3 -m venv` has pip.
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -n 30 "$work/debootstrap.log" >&2; exit 1; }
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*
: >"$rootfs/etc/resolv.conf"  # the host's resolver config is no part of an image
say "debootstrap done ($(( SECONDS - step )) s, $(du -sh "$rootfs" | cut -f1))"

step=$SECONDS
tar --numeric-owner -C "$rootfs" -cf - . | "${podman[@]}" import --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
rm -rf "$rootfs"
say "imported as $image ($(( SECONDS - step )) s; total $(( SECONDS - start )) s)"
