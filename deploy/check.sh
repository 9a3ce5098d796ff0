#!/usr/bin/env bash
# Static checks of the deployment files, for CI:
#   - deploy/Vagrantfile parses (ruby -c)
#   - deploy/shoal.service passes `systemd-analyze verify` with no warning
#   - the flags its ExecStart passes exist in `shoal daemon --help`
#     (when a built shoal binary is found)
#   - the shell scripts parse (bash -n) and pass shellcheck (if installed)
#
#   deploy/check.sh
#   SHOAL_UNIT=path/to/other.service deploy/check.sh   # check another unit
#
# Needs ruby and systemd-analyze (Debian: apt-get install ruby systemd)
# and uses shellcheck when it is installed (apt-get install shellcheck).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
unit="${SHOAL_UNIT:-$here/shoal.service}"
failed=()

fail() {
  echo "check.sh: FAIL: $*" >&2
  failed+=("$1")
}
ok() { echo "check.sh: ok: $*"; }

for tool in ruby systemd-analyze; do
  if ! command -v "$tool" >/dev/null; then
    echo "check.sh: '$tool' is missing: apt-get install -y ruby systemd" >&2
    exit 1
  fi
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# --- Vagrantfile ---
if out="$(ruby -c "$here/Vagrantfile" 2>&1)"; then
  ok "Vagrantfile: $out"
else
  fail "Vagrantfile: ruby -c: $out"
fi

# --- systemd unit ---
# `verify` insists that ExecStart's binary exists and is executable, and
# /usr/local/bin/shoal is not installed on a CI machine. So the unit is
# checked as a copy whose ExecStart runs a stand-in: the built shoal when
# there is one, else /bin/true. Only the binary path differs; every other
# line is verified as shipped. The copy keeps the name shoal.service, which
# verify uses as the unit name.
shoal_bin="${SHOAL_BIN:-}"
if [ -z "$shoal_bin" ]; then
  for candidate in "$repo/target/release/shoal" "$repo/target/debug/shoal"; do
    if [ -x "$candidate" ]; then
      shoal_bin="$candidate"
      break
    fi
  done
fi
stand_in="${shoal_bin:-/bin/true}"
exec_line="$(grep -E '^ExecStart=' "$unit" || true)"
case "$exec_line" in
  "ExecStart=/usr/local/bin/shoal "*)
    sed "s#^ExecStart=/usr/local/bin/shoal #ExecStart=$stand_in #" "$unit" >"$tmp/shoal.service"
    # Unknown keys and unparsable values are only warnings for verify
    # (exit 0): any line about the unit counts as a failure here.
    rc=0
    out="$(systemd-analyze verify "$tmp/shoal.service" 2>&1)" || rc=$?
    about_unit="$(printf '%s\n' "$out" | grep -F 'shoal.service' || true)"
    if [ "$rc" != 0 ] || [ -n "$about_unit" ]; then
      fail "$unit: systemd-analyze verify (exit $rc):
${out//$tmp\//}"
    else
      ok "$unit: systemd-analyze verify"
    fi
    ;;
  *)
    fail "$unit: expected one 'ExecStart=/usr/local/bin/shoal daemon …' line (install.sh rewrites that path), found: ${exec_line:-none}"
    ;;
esac

# The flags ExecStart passes must exist in this shoal.
if [ -n "$shoal_bin" ] && [ -n "$exec_line" ]; then
  if help="$("$shoal_bin" daemon --help 2>&1)"; then
    missing=()
    for word in $exec_line; do
      case "$word" in
        --*) grep -qE -- "(^|[[:space:]])${word%%=*}([[:space:]=,]|$)" <<<"$help" || missing+=("$word") ;;
      esac
    done
    if [ ${#missing[@]} -gt 0 ]; then
      fail "$unit: ExecStart passes ${missing[*]}, which '$shoal_bin daemon --help' does not list"
    else
      ok "$unit: ExecStart flags exist in $shoal_bin daemon"
    fi
  else
    fail "$shoal_bin daemon --help failed: $help"
  fi
else
  echo "check.sh: note: no built shoal found (target/{release,debug}/shoal or SHOAL_BIN): ExecStart flags not checked"
fi

# --- shell scripts ---
scripts=("$here/install.sh" "$here/provision.sh" "$here/check.sh")
for s in "${scripts[@]}"; do
  if out="$(bash -n "$s" 2>&1)"; then
    ok "bash -n $(basename "$s")"
  else
    fail "bash -n $s: $out"
  fi
done
if command -v shellcheck >/dev/null; then
  if out="$(shellcheck "${scripts[@]}" 2>&1)"; then
    ok "shellcheck ${scripts[*]##*/}"
  else
    fail "shellcheck:
$out"
  fi
else
  echo "check.sh: note: shellcheck not installed (apt-get install shellcheck): skipped"
fi

if [ ${#failed[@]} -gt 0 ]; then
  echo "check.sh: ${#failed[@]} check(s) failed" >&2
  exit 1
fi
echo "check.sh: all deployment checks passed"
