#!/usr/bin/env bash
# Debian packages the test suite drives for real; installed only when missing.
set -euo pipefail

packages=()
command -v chromium >/dev/null || packages+=(chromium)              # the MLflow UI test renders the run page
command -v dockerd >/dev/null || packages+=(docker.io)              # `mlflow run` builds and runs images
command -v docker-registry >/dev/null || packages+=(docker-registry)  # ... and pushes them (Kubernetes backend)
command -v debootstrap >/dev/null || packages+=(debootstrap)        # a local base image: nothing can be pulled
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || packages+=(postgresql)  # the concurrent-sweep backend

[ ${#packages[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${packages[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
