#!/usr/bin/env bash
# Makes a Debian bookworm image with Python 3.11 locally, as the stand-in for the Dockerfile's default
# BASE_IMAGE (python:3.11-slim-bookworm) in tests: no image can be pulled on these machines.
# Usage: make-local-base.sh <image name>
set -euo pipefail
image=$1
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
# This machine re-signs outgoing TLS with a local authority: trust it in the test image only, never in the Dockerfile.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  chroot "$rootfs" update-ca-certificates >/dev/null
fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
tar -C "$rootfs" -c . | docker import -c 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "$image"
