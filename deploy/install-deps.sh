#!/usr/bin/env bash
# Install the system packages Shoal needs (Debian/Ubuntu).
#   deploy/install-deps.sh            what building, the lab and the tests need
#   deploy/install-deps.sh --runtime  only what a node runs: iproute2,
#                                     nftables, util-linux, containerd, runc
set -euo pipefail
need=()
if [ "${1:-}" = --runtime ]; then
  command -v ip >/dev/null || need+=(iproute2)
  command -v nft >/dev/null || need+=(nftables)
  command -v nsenter >/dev/null || need+=(util-linux)
  command -v containerd >/dev/null || need+=(containerd)
  command -v runc >/dev/null || need+=(runc)
  # Docker's default seccomp profile (/usr/share/containers/seccomp.json).
  [ -f /usr/share/containers/seccomp.json ] || need+=(golang-github-containers-common)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
  fi
  exit 0
elif [ -n "${1:-}" ]; then
  echo "install-deps.sh: unknown option $1 (expected --runtime or nothing)" >&2
  exit 2
fi
command -v ip >/dev/null || need+=(iproute2)
command -v nft >/dev/null || need+=(nftables)
command -v ping >/dev/null || need+=(iputils-ping)
# Service tests: HTTP client, and getent/nsenter (libc-bin, util-linux).
command -v curl >/dev/null || need+=(curl)
command -v getent >/dev/null || need+=(libc-bin)
command -v nsenter >/dev/null || need+=(util-linux)
# deploy/check.sh and tests/deploy.rs: Vagrantfile syntax, unit verification.
command -v ruby >/dev/null || need+=(ruby)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v shellcheck >/dev/null || need+=(shellcheck)
# Containers (shoal-lab's LabBuilder::containerd, Lab::start_registry,
# shoal_lab::image): a containerd per lab host, runc under it, a plain-HTTP
# OCI registry, skopeo to push the test image, the static busybox that
# image is made of, and protoc for containerd-client's gRPC bindings.
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
# Debian's plain `busybox` also installs /bin/busybox, linked against libc:
# useless in an image without one, so it must be the static build.
if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
  need+=(busybox-static)
fi
command -v protoc >/dev/null || need+=(protobuf-compiler)
# tests/docker_cli.rs drives the Engine API with the real docker CLI
# (Debian's docker.io has it; any docker CLI >= 20.10 on PATH will do).
command -v docker >/dev/null || need+=(docker.io)
# ... and docker-py, the Python SDK.
python3 -c 'import docker' 2>/dev/null || need+=(python3-docker)
[ -f /usr/share/containers/seccomp.json ] || need+=(golang-github-containers-common)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "cargo is missing: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
