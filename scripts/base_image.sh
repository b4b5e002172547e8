#!/usr/bin/env bash
# A local base image for `modelport build --base-image` where no registry can be reached:
# Debian bookworm (minbase) with python3 and venv, made with debootstrap from the Debian mirror,
# less apt's caches, docs and locales. Usage: scripts/base_image.sh [NAME]  (root; ~1 minute)
set -euo pipefail
name="${1:-localhost/modelport-base:bookworm}"
if podman image exists "$name"; then echo "$name exists"; exit 0; fi
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d /var/tmp/modelport-base.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" >/dev/null
rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/man/*
tar -C "$rootfs" -c . | podman import --change 'CMD ["python3"]' - "$name" >/dev/null
echo "$name built"
