#!/usr/bin/env bash
# Builds the default policy bundle that the proxy loads: policies/bundle.tar.gz (committed).
#
#   scripts/policy-build.sh            # test the policy, then build policies/bundle.tar.gz
#   scripts/policy-build.sh OUT.tar.gz # build to another path (used by scripts/policy-check-fresh.sh)
#   scripts/policy-build.sh --revision # print the revision the sources would get, and exit
#
# - The entrypoint is portcullis/decision (WASM entrypoint id 0).
# - policies/capabilities.json restricts the builtins to what the WASM module, the npm SDK and the proxy's custom
#   builtins provide, so a policy calling anything else fails here, not at pull time.
# - *_test.rego files are left out of the bundle.
# - The revision is derived from the sources: the first 12 hex digits of the sha256 over the sorted non-test .rego
#   files (path, NUL, content, NUL). opa writes tar entries with a fixed mtime, so unchanged sources and the same
#   opa version give a byte-identical bundle.
#
# Environment: OPA (default: opa on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

OPA="${OPA:-opa}"
SRC=policies/portcullis
CAPS=policies/capabilities.json

revision() {
  local f
  find "$SRC" -type f -name '*.rego' ! -name '*_test.rego' -print | LC_ALL=C sort | while IFS= read -r f; do
    printf '%s\0' "$f"
    cat "$f"
    printf '\0'
  done | sha256sum | cut -c1-12
}

if [[ "${1:-}" == "--revision" ]]; then revision; exit 0; fi
OUT="${1:-policies/bundle.tar.gz}"

command -v "$OPA" >/dev/null || { echo "policy-build: opa not found (run scripts/install-tools.sh)" >&2; exit 1; }

"$OPA" check --strict --capabilities "$CAPS" --ignore '*_test.rego' "$SRC"
"$OPA" test "$SRC" >/dev/null || { "$OPA" test -v "$SRC" >&2; echo "policy-build: opa test failed" >&2; exit 1; }

REV=$(revision)
"$OPA" build -t wasm -e portcullis/decision --capabilities "$CAPS" --ignore '*_test.rego' \
  -r "$REV" -o "$OUT" "$SRC"
echo "policy-build: wrote $OUT (revision $REV, $($OPA version | sed -n 's/^Version: /opa /p'))" >&2
