#!/usr/bin/env bash
# Fuzzes every decoder that reads bytes from another machine or from disk:
# the libFuzzer targets of fuzz/ (a cargo-fuzz crate outside the workspace;
# fuzz/fuzz_targets/*.rs says which decoder each one covers). Not part of
# .ci/run: a full run takes targets x N seconds plus a nightly build.
#
#   deploy/fuzz.sh [--seconds N] [--seeds] [TARGET...]
#
# Runs each TARGET (default: all) for N seconds (default 60) with
#   cargo +nightly fuzz run <t> -- -max_total_time=N -rss_limit_mb=2048 -timeout=5
# and prints one line per target: `target executions crashes`. libFuzzer
# stops a target at its first crash (or leak, OOM, timeout), so crashes is
# 0 or 1; the input is kept in fuzz/artifacts/<t>/ and the log in
# fuzz/target/fuzz-logs/<t>.log. Exits 1 if any target crashed.
# --seeds rewrites the committed seeds fuzz/corpus/<t>/seed-* first.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

seconds=60
seeds=0
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --seconds)
      [ $# -ge 2 ] || { echo "fuzz.sh: --seconds needs a value" >&2; exit 2; }
      seconds=$2
      shift 2
      ;;
    --seconds=*) seconds=${1#*=}; shift ;;
    --seeds) seeds=1; shift ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
case $seconds in
  '' | *[!0-9]* | 0) echo "fuzz.sh: --seconds wants a positive integer, not '$seconds'" >&2; exit 2 ;;
esac

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: the nightly toolchain is missing: rustup toolchain install nightly" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked >&2
fi

mapfile -t all < <(cargo +nightly fuzz list)
if [ ${#targets[@]} -eq 0 ]; then
  targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
  if ! printf '%s\n' "${all[@]}" | grep -qxF -- "$t"; then
    echo "fuzz.sh: no target '$t'; targets: ${all[*]}" >&2
    exit 2
  fi
done

# One build of every target (they share all dependencies), then runs.
cargo +nightly fuzz build >&2

if [ "$seeds" = 1 ]; then
  for t in "${targets[@]}"; do
    rm -f "corpus/$t"/seed-*
    SHOAL_FUZZ_SEEDS=corpus cargo +nightly fuzz run "$t" >&2
  done
fi

logs=target/fuzz-logs
mkdir -p "$logs"
crashed=0
for t in "${targets[@]}"; do
  mkdir -p "artifacts/$t"
  before=$(find "artifacts/$t" -type f | wc -l)
  rc=0
  cargo +nightly fuzz run "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=5 \
    -print_final_stats=1 >"$logs/$t.log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$logs/$t.log" | tail -n 1)
  after=$(find "artifacts/$t" -type f | wc -l)
  crashes=$((after - before))
  if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
    crashes=1 # died without an artifact: see the log
  fi
  if [ "$crashes" -gt 0 ]; then
    crashed=1
    echo "fuzz.sh: $t failed (exit $rc), see fuzz/$logs/$t.log and fuzz/artifacts/$t/" >&2
  fi
  echo "$t ${execs:-0} $crashes"
done
exit "$crashed"
