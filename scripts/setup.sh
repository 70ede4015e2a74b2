#!/usr/bin/env bash
# One entry point for a fresh Debian machine: installs the pinned tools the command needs
# (scripts/install-tools.sh, cached outside the repository), puts them on PATH, installs the npm dependencies,
# builds, and then runs what you asked for.
#
#   scripts/setup.sh start    # serve with config/portcullis.yaml on 127.0.0.1:5000; installs only Node (if the
#                             # system's is older than 22), the npm dependencies and the build: no Debian packages
#   scripts/setup.sh test     # the whole test suite (npm test), with every tool it needs; this is what CI runs
#   scripts/setup.sh bench    # the benchmarks (npm run bench), same tools as test
#   scripts/setup.sh shell    # a shell with the test tools on PATH
#   scripts/setup.sh --print-env   # the file to source for the tools' PATH
#
# A failing step ends the run with the step's name, the command and its exit code.
set -Eeuo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--print-env" ]]; then exec bash scripts/install-tools.sh --print-env; fi

CMD="${1:-start}"
case "$CMD" in
  start) MODE=serve ;;
  test | bench | shell) MODE=test ;;
  *) echo "usage: scripts/setup.sh start|test|bench|shell | --print-env" >&2; exit 2 ;;
esac

log() { echo "[setup] $*" >&2; }
STEP="tools ($MODE)"
on_err() {
  local rc=$? cmd=$BASH_COMMAND
  (( BASH_SUBSHELL == 0 )) || return "$rc"
  log "FAILED in step '$STEP' (exit $rc) at line ${BASH_LINENO[0]}: $cmd"
}
trap on_err ERR
T0=$SECONDS
# HOME may be unset under `env -i` or in a bare chroot; npm and the tool cache need it.
if [[ -z "${HOME:-}" ]]; then HOME=$(getent passwd "$(id -u)" | cut -d: -f6); export HOME; fi

bash scripts/install-tools.sh "$MODE"
# shellcheck disable=SC1090
source "$(bash scripts/install-tools.sh --print-env)"
if [[ "$MODE" == test ]]; then
  log "node $(node --version), opa $(opa version 2>/dev/null | sed -n 's/^Version: //p'); tools ready after $((SECONDS - T0))s"
else
  log "node $(node --version); ready after $((SECONDS - T0))s"
fi

STEP="npm ci"
if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  t=$SECONDS
  log "npm ci ..."
  npm ci --no-audit --no-fund
  log "npm ci: done in $((SECONDS - t))s"
fi

STEP="$CMD"
log "$CMD (set-up took $((SECONDS - T0))s)"
case "$CMD" in
  # exec: a signal to this script reaches npm directly, and npm's exit code is ours.
  start) exec npm start ;;
  test) npm test ;;
  bench) shift; npm run bench -- "$@" ;;
  shell) exec "${SHELL:-bash}" ;;
esac
log "$CMD: done in $((SECONDS - T0))s"
