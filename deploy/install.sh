#!/usr/bin/env bash
# Install Shoal on a plain Linux host: the binary, a default config and the
# systemd unit; then enable and start the service.
#
#   deploy/install.sh [--binary PATH] [--prefix DIR] [--systemd-dir DIR]
#                     [--root DIR] [--no-start]
#
#   --binary PATH      shoal binary to install (default: target/release/shoal
#                      of this repository)
#   --prefix DIR       install to DIR/bin (default /usr/local, or $PREFIX)
#   --systemd-dir DIR  unit directory (default /etc/systemd/system, or
#                      $SYSTEMD_DIR)
#   --root DIR         stage everything under DIR (packaging, tests): paths
#                      inside the files stay as on the target host; implies
#                      --no-start
#   --no-start         do not run systemctl
#
# Idempotent: files already up to date are left alone, an existing
# /etc/shoal/shoal.toml is never overwritten, and a running service is
# restarted only when the binary or the unit changed (workloads survive the
# restart: the unit has KillMode=process).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

binary="$repo/target/release/shoal"
prefix="${PREFIX:-/usr/local}"
systemd_dir="${SYSTEMD_DIR:-/etc/systemd/system}"
root=""
start=1
unit_src="$here/shoal.service"
# The config path the unit passes to `shoal daemon --config`.
config_path="/etc/shoal/shoal.toml"

die() {
  echo "install.sh: $*" >&2
  exit 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

need_arg() {
  if [ $# -lt 2 ] || [ -z "$2" ]; then
    die "$1 needs a value (see --help)"
  fi
}

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) need_arg "$@"; binary="$2"; shift 2 ;;
    --prefix) need_arg "$@"; prefix="$2"; shift 2 ;;
    --systemd-dir) need_arg "$@"; systemd_dir="$2"; shift 2 ;;
    --root) need_arg "$@"; root="$2"; shift 2 ;;
    --no-start) start=0; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

case "$prefix" in /*) ;; *) die "--prefix $prefix: must be an absolute path" ;; esac
case "$systemd_dir" in /*) ;; *) die "--systemd-dir $systemd_dir: must be an absolute path" ;; esac
if [ -n "$root" ]; then
  mkdir -p "$root" || die "--root $root: cannot create it"
  root="$(cd "$root" && pwd)"
  start=0
elif [ "$(id -u)" != 0 ]; then
  die "installing into $prefix and $systemd_dir needs root (run with sudo, or use --root DIR to stage)"
fi

[ -e "$binary" ] || die "binary $binary does not exist: build it with 'cargo build --release -p shoal' or pass --binary PATH"
if [ ! -f "$binary" ] || [ ! -x "$binary" ]; then
  die "binary $binary is not an executable file"
fi
[ -f "$unit_src" ] || die "unit $unit_src is missing (run install.sh from a Shoal checkout)"
if [ -z "$root" ]; then
  # A live install runs the binary: make sure it is shoal and runs here.
  version="$("$binary" --version 2>&1)" || die "binary $binary does not run on this host: $version"
  case "$version" in shoal\ *) ;; *) die "binary $binary is not shoal (--version said: $version)" ;; esac
fi

bin_dir="$root$prefix/bin"
bin_dest="$bin_dir/shoal"
unit_dest="$root$systemd_dir/shoal.service"
config_dest="$root$config_path"
changed=0

# install_file SRC DEST MODE: replace DEST atomically when its content or
# mode differ (a running binary cannot be overwritten in place: ETXTBSY).
install_file() {
  local src="$1" dest="$2" mode="$3"
  if [ -f "$dest" ] && cmp -s "$src" "$dest" \
    && [ "$(stat -c %a "$dest")" = "${mode#0}" ]; then
    echo "unchanged: $dest"
    return 0
  fi
  mkdir -p "$(dirname "$dest")"
  local tmp
  tmp="$(mktemp "$dest.XXXXXX")"
  if ! cp "$src" "$tmp" || ! chmod "$mode" "$tmp" || ! mv -f "$tmp" "$dest"; then
    rm -f "$tmp"
    die "cannot write $dest"
  fi
  echo "installed: $dest"
  changed=1
}

install_file "$binary" "$bin_dest" 0755

# The unit as shipped runs /usr/local/bin/shoal; point it at the prefix.
unit_tmp="$(mktemp)"
trap 'rm -f "$unit_tmp"' EXIT
sed "s#^ExecStart=/usr/local/bin/shoal #ExecStart=$prefix/bin/shoal #" "$unit_src" >"$unit_tmp"
grep -q "^ExecStart=$prefix/bin/shoal daemon --config $config_path\$" "$unit_tmp" \
  || die "$unit_src: ExecStart is not '/usr/local/bin/shoal daemon --config $config_path' (update install.sh with it)"
install_file "$unit_tmp" "$unit_dest" 0644

if [ -e "$config_dest" ]; then
  echo "kept: $config_dest (existing config is never overwritten)"
else
  mkdir -p "$(dirname "$config_dest")"
  chmod 0755 "$(dirname "$config_dest")"
  config_tmp="$(mktemp "$config_dest.XXXXXX")"
  cat >"$config_tmp" <<'EOF'
# Shoal daemon configuration; flags of `shoal daemon` override these keys.
# Unknown keys are errors. See README.md, "The daemon".

# Node id, certificates, Raft log (the unit's StateDirectory).
data_dir = "/var/lib/shoal"
# Local API socket the CLI talks to.
socket = "/run/shoal/shoal.sock"
# Namespace bind mounts and workload records (the unit's RuntimeDirectory).
run_dir = "/run/shoal"
log_level = "info"

# Name shown by `shoal node ls` (default: the kernel's host name).
# hostname = "node-1"
# Node heartbeat period in milliseconds used by `swarm init`.
# heartbeat_ms = 5000
# gossip_port = 7946
# gossip_profile = "lan"
# containerd's socket; tasks run as containers in its `shoal` namespace.
# containerd_socket = "/run/containerd/containerd.sock"
# Registries pulled from over plain HTTP (host:port).
# insecure_registries = []
# CA roots of TLS registries: <dir>/<host:port>/*.crt
# registry_certs_dir = "/etc/shoal/certs.d"
# Registry credentials, as `docker login` writes them.
# registry_auth_file = "/root/.docker/config.json"
# Docker's default seccomp profile for containers ("" for none).
# seccomp_profile = "/usr/share/containers/seccomp.json"
EOF
  chmod 0644 "$config_tmp"
  mv -f "$config_tmp" "$config_dest"
  echo "installed: $config_dest"
fi

if [ "$start" = 0 ]; then
  echo "not starting shoal (--no-start${root:+ / --root})"
  exit 0
fi
if [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null; then
  echo "systemd is not running on this host: installed, not started."
  echo "start the daemon by hand: $prefix/bin/shoal daemon --config $config_path"
  exit 0
fi
systemctl daemon-reload
# Tasks run as containers: containerd (Debian's package, installed by
# deploy/install-deps.sh) must run.
if systemctl list-unit-files containerd.service >/dev/null 2>&1; then
  systemctl enable --now containerd
else
  echo "warning: containerd.service is not installed (apt-get install containerd runc): only --runtime host tasks can run" >&2
fi
if systemctl is-active --quiet shoal && [ "$changed" = 1 ]; then
  # Type=notify: returns once the new daemon listens again.
  systemctl enable shoal
  systemctl restart shoal
  echo "restarted shoal.service (binary or unit changed)"
else
  systemctl enable --now shoal
  echo "shoal.service enabled and running"
fi
