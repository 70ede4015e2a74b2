#!/usr/bin/env bash
# One entry point for a fresh Debian machine: installs the pinned tools (scripts/install-tools.sh, cached outside
# the repository), puts Node 24 and the Go tools on PATH, installs npm dependencies, builds, and then runs what
# you asked for.
#
#   scripts/setup.sh start    # serve with config/portcullis.yaml on 127.0.0.1:5000
#   scripts/setup.sh test     # the whole test suite (npm test); this is what CI runs
#   scripts/setup.sh bench    # the benchmarks (npm run bench)
#   scripts/setup.sh shell    # a shell with the tools on PATH
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-tools.sh
# shellcheck disable=SC1090
source "$(bash scripts/install-tools.sh --print-env)"
echo "[setup] node $(node --version), opa $(opa version 2>/dev/null | sed -n 's/^Version: //p')" >&2

if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  npm ci --no-audit --no-fund
fi

case "${1:-start}" in
  start) npm start ;;
  test) npm test ;;
  bench) shift; npm run bench -- "$@" ;;
  shell) exec "${SHELL:-bash}" ;;
  *) echo "usage: scripts/setup.sh start|test|bench|shell" >&2; exit 2 ;;
esac
