#!/usr/bin/env bash
# Bring one host into a Shoal swarm: what each Vagrant VM runs
# (deploy/Vagrantfile), usable on any host.
#
#   deploy/provision.sh [options] init|manager|worker SHARED_DIR
#
#   init     install, start, `shoal swarm init`, then write the join tokens
#            and the manager address to SHARED_DIR (worker-token,
#            manager-token, manager-addr; mode 0600)
#   manager  install, start, wait for those files, join with the manager
#   worker   token (the same with the worker token)
#
#   --advertise-addr IP|IFACE   control-plane address (default eth1)
#   --data-path-addr IP|IFACE   VXLAN address (default eth2)
#   --manager-addr HOST[:PORT]  join this manager instead of the address in
#                               SHARED_DIR/manager-addr
#   --binary PATH               binary install.sh installs (default
#                               target/release/shoal of this repository)
#   --no-install                the daemon already runs (e.g. a shoal-lab
#                               host, with SHOAL_HOST naming its socket):
#                               skip install.sh
#   --shoal PATH                CLI to use (default /usr/local/bin/shoal
#                               after an install, else `shoal` on PATH)
#   --timeout SECS              deadline for the daemon to answer and for
#                               the shared files to appear (default 300)
#
# Re-running is safe: a node already in a swarm is left as it is (an init
# node rewrites the shared files from the running swarm).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"

advertise="eth1"
data_path="eth2"
manager_addr=""
binary="$repo/target/release/shoal"
install=1
shoal=""
timeout=300
role=""
shared=""

die() {
  echo "provision.sh: $*" >&2
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
    --advertise-addr) need_arg "$@"; advertise="$2"; shift 2 ;;
    --data-path-addr) need_arg "$@"; data_path="$2"; shift 2 ;;
    --manager-addr) need_arg "$@"; manager_addr="$2"; shift 2 ;;
    --binary) need_arg "$@"; binary="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    --shoal) need_arg "$@"; shoal="$2"; shift 2 ;;
    --timeout) need_arg "$@"; timeout="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
      if [ -z "$role" ]; then role="$1"
      elif [ -z "$shared" ]; then shared="$1"
      else die "unexpected argument '$1' (see --help)"
      fi
      shift ;;
  esac
done

case "$role" in
  init|manager|worker) ;;
  "") die "missing role: init, manager or worker (see --help)" ;;
  *) die "role '$role': expected init, manager or worker" ;;
esac
[ -n "$shared" ] || die "missing SHARED_DIR (where the init node leaves the join tokens)"
case "$timeout" in
  ''|*[!0-9]*) die "--timeout $timeout: expected whole seconds" ;;
esac
deadline=$((SECONDS + timeout))

if [ "$install" = 1 ]; then
  # containerd and runc (tasks run as containers), then Shoal itself.
  "$here/install-deps.sh" --runtime
  "$here/install.sh" --binary "$binary"
  shoal="${shoal:-/usr/local/bin/shoal}"
else
  shoal="${shoal:-shoal}"
fi
command -v "$shoal" >/dev/null || die "shoal CLI '$shoal' not found (pass --shoal PATH)"

say() { echo "provision.sh [$role]: $*"; }

# Wait for the local daemon to answer (under systemd, Type=notify already
# waited; by hand or right after a boot it may still be starting).
until "$shoal" info >/dev/null 2>&1; do
  if [ "$SECONDS" -ge "$deadline" ]; then
    err="$("$shoal" info 2>&1 || true)"
    die "the shoal daemon did not answer within ${timeout}s: $err"
  fi
  sleep 1
done

# Whether the local node is in a swarm. The output is read whole first:
# piped straight into `grep -q`, the CLI's writes after the first match hit
# a closed pipe, and under pipefail the check then fails on a node that is
# in a swarm (and `init` would run `swarm init` again).
in_swarm() {
  local out
  out="$("$shoal" info 2>/dev/null)" || return 1
  grep -Eq '^Swarm:[[:space:]]+active' <<<"$out"
}

# write_shared NAME VALUE: atomically, so a waiting node never reads half.
write_shared() {
  local tmp
  tmp="$(mktemp "$shared/.$1.XXXXXX")"
  printf '%s\n' "$2" >"$tmp"
  chmod 0600 "$tmp"
  mv -f "$tmp" "$shared/$1"
}

if [ "$role" = init ]; then
  mkdir -p "$shared"
  if in_swarm; then
    say "already in a swarm: only rewriting the shared files"
  else
    # Files of an earlier swarm must not be picked up by joining nodes.
    rm -f "$shared/worker-token" "$shared/manager-token" "$shared/manager-addr"
    "$shoal" swarm init --advertise-addr "$advertise" --data-path-addr "$data_path"
  fi
  worker_token="$("$shoal" swarm join-token -q worker)"
  manager_token="$("$shoal" swarm join-token -q manager)"
  if [ -z "$manager_addr" ]; then
    # The last word of `shoal swarm join --token … ADDR:2377`.
    manager_addr="$("$shoal" swarm join-token worker | awk '/swarm join/ { a = $NF } END { print a }')"
  fi
  if [ -z "$worker_token" ] || [ -z "$manager_token" ] || [ -z "$manager_addr" ]; then
    die "could not read the join tokens and manager address back from the daemon"
  fi
  write_shared worker-token "$worker_token"
  write_shared manager-token "$manager_token"
  # Last: joining nodes wait for this one.
  write_shared manager-addr "$manager_addr"
  say "swarm initialised; join tokens and manager address ($manager_addr) in $shared"
  exit 0
fi

if in_swarm; then
  say "already in a swarm: nothing to do"
  exit 0
fi

token_file="$shared/$role-token"
# Join, re-reading the shared files on each failure: they may be left from
# an earlier swarm until the init node rewrites them.
while :; do
  if [ -s "$token_file" ] && { [ -n "$manager_addr" ] || [ -s "$shared/manager-addr" ]; }; then
    token="$(cat "$token_file")"
    remote="${manager_addr:-$(cat "$shared/manager-addr")}"
    case "$remote" in *:*) ;; *) remote="$remote:2377" ;; esac
    if out="$("$shoal" swarm join --token "$token" --advertise-addr "$advertise" \
      --data-path-addr "$data_path" "$remote" 2>&1)"; then
      echo "$out"
      say "joined the swarm through $remote"
      exit 0
    fi
    # Another attempt may have got through before its reply was lost.
    if in_swarm; then
      say "joined the swarm through $remote"
      exit 0
    fi
    last="join through $remote failed: $out"
  else
    last="no $token_file and manager-addr in $shared yet (provision the init node first)"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    die "gave up after ${timeout}s: $last"
  fi
  sleep 2
done
