#!/usr/bin/env bash
# Install the system packages Shoal's lab and tests need (Debian/Ubuntu).
set -euo pipefail
need=()
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
