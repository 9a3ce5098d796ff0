#!/usr/bin/env bash
# The layering rules of the workspace (README "Layout"), checked on the
# source: fails naming each file and line that breaks one.
#  - agent/src/worker never imports agent/src/manager, and the reverse;
#  - agent/src/cli imports only shoal-api and shoal-model;
#  - agent/src/engine (Engine API) reaches the cluster only through the
#    daemon's request handler;
#  - no `raft.is_some()` role branches in the agent (roles are wired in swarm/);
#  - crates depend only downwards (model, raft-store -> tls at most;
#    membership -> tls, replay; dataplane -> replay; netdriver, runtime,
#    replay on no Shoal crate; api -> model);
#  - no source file over 800 lines before its tests.
set -euo pipefail
cd "$(dirname "$0")/.."
fail=0
violation() {
  echo "layering: $1" >&2
  fail=1
}

# grep -rnE PATTERN DIR, each hit reported with MESSAGE.
forbid() {
  local dir=$1 pattern=$2 message=$3 hits
  # Code only: comment lines (`//`, `//!`, `///`) may name anything.
  hits=$(grep -rnE "$pattern" "$dir" --include='*.rs' | grep -vE '^[^:]+:[0-9]+:[[:space:]]*//' || true)
  if [ -n "$hits" ]; then
    while IFS= read -r h; do violation "$message: $h"; done <<<"$hits"
  fi
}

forbid agent/src/worker '(crate|super)::manager\b|\bmanager::' 'agent/src/worker imports the manager side'
forbid agent/src/manager '(crate|super)::worker\b|\bworker::' 'agent/src/manager imports the worker side'
forbid agent/src/cli 'crate::(daemon|swarm|manager|worker|proto|config|addr|metrics)\b|shoal_(raft_store|membership|netdriver|tls)\b' \
  'agent/src/cli imports more than shoal-api and shoal-model'
forbid agent/src/engine 'crate::(swarm|manager|worker|proto)\b|shoal_(raft_store|membership|netdriver|runtime|tls)\b' \
  'agent/src/engine (the Engine API) translates only: it reaches the cluster through the daemon handler'
forbid agent/src 'raft\.is_some\(\)' 'a role branch on raft.is_some() (wire roles in swarm/)'

# Shoal crates each crate may depend on.
allowed() {
  case $1 in
    tls | netdriver | runtime | replay) echo "" ;;
    dataplane) echo "shoal-replay" ;;
    model | raft-store) echo "shoal-tls" ;;
    membership) echo "shoal-tls shoal-replay" ;;
    api) echo "shoal-model" ;;
    *) echo "*" ;;
  esac
}
for toml in */Cargo.toml; do
  crate=${toml%/Cargo.toml}
  ok=$(allowed "$crate")
  [ "$ok" = "*" ] && continue
  # Only [dependencies], not [dev-dependencies].
  deps=$(awk '/^\[/{sec=$0} sec=="[dependencies]" && /^shoal/{sub(/[ .=].*/,""); print}' "$toml")
  for d in $deps; do
    case " $ok " in
      *" $d "*) ;;
      *) violation "$toml: $crate may not depend on $d (allowed: ${ok:-no Shoal crate})" ;;
    esac
  done
done

# Source files: at most 800 lines before `#[cfg(test)]`.
while IFS= read -r f; do
  n=$(awk '/^#\[cfg\(test\)\]/{exit} {c++} END{print c+0}' "$f")
  if [ "$n" -gt 800 ]; then
    violation "$f: $n lines of non-test code (split it; the limit is 800)"
  fi
done < <(git ls-files '*/src/*.rs' '*/src/**/*.rs' | sort -u)

if [ "$fail" != 0 ]; then
  exit 1
fi
echo "layering: ok"
