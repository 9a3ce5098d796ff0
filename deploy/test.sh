#!/usr/bin/env bash
# Run every Shoal test: unit tests, CLI/daemon tests and the end-to-end lab
# tests, which build network namespaces and so need root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "deploy/test.sh: the lab tests create network namespaces and need root (run with sudo)" >&2
  exit 1
fi
for tool in ip nft ping; do
  if ! command -v "$tool" >/dev/null; then
    echo "deploy/test.sh: '$tool' is missing: run deploy/install-deps.sh (apt-get install iproute2 nftables iputils-ping)" >&2
    exit 1
  fi
done
# The lab tests run the real `shoal` binary: build every binary first.
cargo build --workspace --bins
cargo test --workspace "$@"
