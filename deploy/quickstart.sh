#!/usr/bin/env bash
# Newcomer's one command: install dependencies, build Shoal, start a lab
# cluster of network-namespace hosts on this machine (as root), each with
# its own containerd and a registry on h1, and run a service from an image
# that answers on every host through the routing mesh.
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
lab=./target/release/shoal-lab
"$lab" up "${args[@]}" --containerd
image=10.77.0.1:5000/shoal/echo:1
"$lab" exec h1 -- shoal service create --name web --replicas 3 -p 8080:80 "$image"
hosts=$("$lab" status | awk '$1 ~ /^h[0-9]+$/ {print $1}')
for h in $hosts; do
  ip=10.77.0.${h#h}
  for _ in $(seq 1 60); do
    if answer=$("$lab" exec "$h" -- curl -s --max-time 1 "http://$ip:8080/"); then
      echo "$h: http://$ip:8080/ -> $answer"
      break
    fi
    sleep 1
  done
done
echo "tear it down with: $lab down"
