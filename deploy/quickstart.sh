#!/usr/bin/env bash
# Newcomer's one command: install dependencies, build Shoal and start a lab
# cluster of network-namespace hosts on this machine (as root).
#   ./deploy/quickstart.sh [--nodes 5] [--managers 3]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "quickstart: the lab creates network namespaces and needs root (run with sudo)" >&2
  exit 1
fi
./deploy/install-deps.sh
cargo build --release --bins
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--nodes 5 --managers 3)
exec ./target/release/shoal-lab up "${args[@]}"
