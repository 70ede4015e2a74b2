#!/usr/bin/env bash
# Fails (exit 1) when the committed policies/bundle.tar.gz does not match the sources: run in CI.
#
# Rebuilds the bundle into a temp directory with scripts/policy-build.sh. Byte-identical tarballs are fresh. When
# the tarballs differ only in packaging (e.g. another gzip implementation), the bundle still counts as fresh if
# the .manifest revision and the policy.wasm bytes are equal. Also checks policies/capabilities.json when node is
# available.
set -euo pipefail
cd "$(dirname "$0")/.."

BUNDLE=policies/bundle.tar.gz
stale() { echo "policy-check-fresh: STALE: $*; run scripts/policy-build.sh and commit $BUNDLE" >&2; exit 1; }

[[ -f "$BUNDLE" ]] || stale "$BUNDLE does not exist"

if command -v node >/dev/null; then
  node scripts/gen-capabilities.mjs --check >/dev/null || {
    echo "policy-check-fresh: STALE: policies/capabilities.json differs from node scripts/gen-capabilities.mjs" >&2
    exit 1
  }
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
scripts/policy-build.sh "$TMP/bundle.tar.gz" 2>"$TMP/build.log" || { cat "$TMP/build.log" >&2; echo "policy-check-fresh: build failed" >&2; exit 1; }

if cmp -s "$BUNDLE" "$TMP/bundle.tar.gz"; then
  echo "policy-check-fresh: $BUNDLE is up to date (byte-identical, revision $(scripts/policy-build.sh --revision))"
  exit 0
fi

mkdir "$TMP/old" "$TMP/new"
tar -xzf "$BUNDLE" -C "$TMP/old" 2>/dev/null || stale "$BUNDLE is not a readable tar.gz"
tar -xzf "$TMP/bundle.tar.gz" -C "$TMP/new" 2>/dev/null
rev() { node -e 'process.stdout.write(String(JSON.parse(require("fs").readFileSync(process.argv[1],"utf8")).revision))' "$1" 2>/dev/null \
  || sed -n 's/.*"revision":"\([^"]*\)".*/\1/p' "$1"; }
old_rev=$(rev "$TMP/old/.manifest"); new_rev=$(rev "$TMP/new/.manifest")
[[ "$old_rev" == "$new_rev" ]] || stale "committed revision '$old_rev' but the sources give '$new_rev'"
cmp -s "$TMP/old/policy.wasm" "$TMP/new/policy.wasm" || stale "policy.wasm differs (revision $new_rev; another opa version?)"
echo "policy-check-fresh: $BUNDLE is up to date (revision $new_rev and policy.wasm match; tarball bytes differ)"
