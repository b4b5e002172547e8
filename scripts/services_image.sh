#!/usr/bin/env bash
# HAProxy, Redis and Prometheus from Debian packages in one local image, for running the stack of
# `modelport deploy compose` where no registry can be reached (pass it as --lb-image,
# --redis-image and --prometheus-image). Usage: scripts/services_image.sh [NAME] [BASE]
set -euo pipefail
name="${1:-localhost/modelport-services:bookworm}"
base="${2:-localhost/modelport-base:bookworm}"
if podman image exists "$name"; then echo "$name exists"; exit 0; fi
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cat > "$context/Containerfile" <<CONTAINERFILE
FROM $base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
    redis-server prometheus \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /usr/share/doc/* /usr/share/man/*
CONTAINERFILE
podman build --network=host -t "$name" "$context" >/dev/null
echo "$name built"
