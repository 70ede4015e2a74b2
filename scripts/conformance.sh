#!/usr/bin/env bash
# Runs the OCI distribution-spec conformance suite, read-only mode, against Portcullis in front of a real CNCF
# Distribution, everything on 127.0.0.1:
#
#   1. start docker-registry (Distribution 2.8) with a temp config and storage
#   2. seed it (scripts/conformance-seed.mjs seed): an image, a 2-platform index, tags, and a referrer stored
#      through the referrers tag schema (Distribution 2.8 has no referrers API)
#   3. start the built proxy (node dist/cli.js serve) with a catch-all allow policy
#   4. PRE-WARM: GET every seeded root manifest (and child manifest, and the referrer) through the proxy. Portcullis
#      serves a blob or a child manifest by digest only inside the closure of an admitted image (DESIGN §1, the
#      by-digest bypass); the suite's read-only mode asks for blobs by digest cold, which no real client does.
#      The same step checks that the referrers API through the proxy (tag-schema fallback) lists the referrer.
#   5. run conformance.test with the pull, tag-list and referrers (content discovery) workflows; push and delete are
#      off (the proxy is read-only)
#   6. fail unless the suite passed with no FAIL/Error and every enabled pull/tag-list/referrers API reports Pass
#
# Usage: scripts/conformance.sh            (from anywhere; builds dist/ if src/ is newer)
# Env:   CONFORMANCE_BIN (default: conformance.test on PATH or in ~/.cache/portcullis-tools/bin),
#        CONFORMANCE_RESULTS (keep results.yaml, junit.xml, report.html there), PORTCULLIS_SKIP_BUILD=1
# Needs: node >= 22, docker-registry, conformance.test (scripts/install-tools.sh installs all three).
# Every process it starts is killed on exit, whatever the outcome.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${PORTCULLIS_TOOLS:-$HOME/.cache/portcullis-tools}
# The tools' env file puts Node 24 first on PATH where the system Node is too old for node:sqlite.
# shellcheck disable=SC1091
[[ -f "$TOOLS/env.sh" ]] && source "$TOOLS/env.sh"
export PATH="$PATH:$TOOLS/bin"
REPO=conformance/repo1

log() { echo "[conformance] $*" >&2; }
need() { command -v "$1" >/dev/null || { log "missing $1: run scripts/install-tools.sh"; exit 2; }; }
need node
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 22 ? 0 : 1)' || { log "node >= 22 is needed (found $(node --version)): run scripts/install-tools.sh"; exit 2; }
need docker-registry
CONFORMANCE_BIN=${CONFORMANCE_BIN:-$(command -v conformance.test || true)}
[[ -n "$CONFORMANCE_BIN" && -x "$CONFORMANCE_BIN" ]] || { log "missing conformance.test: run scripts/install-tools.sh"; exit 2; }

WORK=$(mktemp -d /tmp/pc-conformance-XXXXXX)
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [[ $rc -ne 0 ]]; then
    log "failed (exit $rc); last lines of the logs:"
    tail -n 20 "$WORK/registry.log" "$WORK/proxy.log" 2>/dev/null >&2 || true
  fi
  [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { node -e "const s=require('net').createServer().listen(0,'127.0.0.1',()=>{console.log(s.address().port);s.close()})"; }
wait_http() { # url what
  for _ in $(seq 200); do
    if node -e "fetch(process.argv[1]).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))" "$1"; then return 0; fi
    sleep 0.1
  done
  log "$2 did not come up at $1"; return 1
}

if [[ -z "${PORTCULLIS_SKIP_BUILD:-}" ]] && [[ ! -f "$ROOT/dist/cli.js" || -n "$(find "$ROOT/src" -name '*.ts' -newer "$ROOT/dist/cli.js" | head -1)" ]]; then
  log "building dist/"
  (cd "$ROOT" && npm run build --silent) >&2
fi

# 1. upstream: Distribution 2.8 on loopback (always give the address: Debian's default is :5000 on all interfaces)
UP_PORT=$(free_port)
cat > "$WORK/registry.yml" <<EOF
version: 0.1
log: {level: warn, formatter: text}
storage:
  filesystem: {rootdirectory: "$WORK/upstream"}
  delete: {enabled: true}
http:
  addr: "127.0.0.1:$UP_PORT"
  secret: conformance-not-secret
EOF
docker-registry serve "$WORK/registry.yml" > "$WORK/registry.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/v2/" "docker-registry"
log "upstream on 127.0.0.1:$UP_PORT"

# 2. seed
RO_ENV=$(node "$ROOT/scripts/conformance-seed.mjs" seed "http://127.0.0.1:$UP_PORT" "$REPO" "$WORK/state.json")
eval "export ${RO_ENV//$'\n'/ }"

# 3. the proxy, as `portcullis serve` runs it
PX_PORT=$(free_port)
cat > "$WORK/portcullis.yaml" <<EOF
listen: 127.0.0.1:$PX_PORT
dataDir: "$WORK/proxy-data"
upstreams:
  - name: upstream
    registry: "127.0.0.1:$UP_PORT"
    url: "http://127.0.0.1:$UP_PORT"
log: {level: warn}
decisionLog: {sink: none}
policy:
  bundleFile: "$ROOT/policies/bundle.tar.gz"
  settings: {no_match: deny, scopes: [{name: all, images: ["**"]}]}
EOF
(cd "$ROOT" && exec node dist/cli.js serve --config "$WORK/portcullis.yaml") > "$WORK/proxy.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PX_PORT/readyz" "portcullis"
log "portcullis on 127.0.0.1:$PX_PORT"

# The suite names the repository with the upstream as path prefix: /v2/127.0.0.1:<up>/conformance/repo1/...
NAME="127.0.0.1:$UP_PORT/$REPO"

# 4. pre-warm the admitted closures (see the header) and check the referrers fallback
node "$ROOT/scripts/conformance-seed.mjs" prewarm "http://127.0.0.1:$PX_PORT" "$NAME" "$WORK/state.json"

# 5. the suite: read-only (no push, no delete), pull + tag list + referrers; Docker-Content-Digest required on blobs.
#    Not on manifests: in read-only mode the suite only captures manifest response headers when it knows the
#    manifest bytes, which it does not, so OCI_API_MANIFESTS_DIGEST_HEADER=true fails every manifest test whatever
#    the registry sends. The prewarm step checks Docker-Content-Digest, Content-Type and Content-Length instead.
RESULTS=${CONFORMANCE_RESULTS:-$WORK/results}
mkdir -p "$RESULTS"
set +e
env \
  OCI_REGISTRY="127.0.0.1:$PX_PORT" OCI_TLS=disabled OCI_VERSION=1.1 \
  OCI_REPO1="$NAME" OCI_REPO2="$NAME" \
  OCI_API_PING=true OCI_API_PULL=true OCI_API_PUSH=false \
  OCI_API_TAGS_LIST=true OCI_API_REFERRER=true \
  OCI_API_TAGS_DELETE=false OCI_API_MANIFESTS_DELETE=false OCI_API_BLOBS_DELETE=false \
  OCI_API_BLOBS_MOUNT_ANONYMOUS=false \
  OCI_API_BLOBS_DIGEST_HEADER=true \
  OCI_RESULTS_DIR="$RESULTS" OCI_LOG=warn \
  "$CONFORMANCE_BIN" -test.timeout 5m > "$WORK/conformance.out" 2>&1
SUITE_RC=$?
set -e
cat "$WORK/conformance.out"
# Known suite bug at this commit: with push disabled, TestBlobAPIs records a status for test data it never creates,
# and ReportResultsYAML then dereferences nil, AFTER the full report has been printed (so results.yaml, junit.xml
# and report.html are not written, and the exit code is the panic's). Accept exactly that panic, and take the
# verdict from the printed report.
if [[ $SUITE_RC != 0 ]] && grep -q '^panic: runtime error: invalid memory address or nil pointer dereference' "$WORK/conformance.out" \
   && grep -q 'ReportResultsYAML' "$WORK/conformance.out" && grep -q '^OCI Conformance Result: ' "$WORK/conformance.out"; then
  log "ignoring the suite's known ReportResultsYAML panic (push disabled); verdict from the printed report"
  SUITE_RC=0
fi

# 6. verdict: parse the summary the suite prints
count() { sed -n "s/^  $1\.*: *\([0-9][0-9]*\)$/\1/p" "$WORK/conformance.out" | head -1; }
PASS=$(count Pass); FAIL=$(count FAIL); ERR=$(count Error); SKIP=$(count Skip); DIS=$(count Disabled)
echo "CONFORMANCE SUMMARY: pass=${PASS:-?} fail=${FAIL:-?} error=${ERR:-?} skip=${SKIP:-?} disabled=${DIS:-?} suite_exit=$SUITE_RC"
ok=1
[[ "$SUITE_RC" == 0 ]] || { log "the suite exited $SUITE_RC"; ok=0; }
grep -q '^OCI Conformance Result: Pass$' "$WORK/conformance.out" || { log "overall result is not Pass"; ok=0; }
[[ "${FAIL:-x}" == 0 && "${ERR:-x}" == 0 && "${PASS:-0}" -gt 0 ]] || { log "FAIL or Error results, or nothing passed"; ok=0; }
# Every pull, tag-list and referrers API must have been exercised and passed (Skip would hide a gap).
for api in 'Ping' 'Manifest head by tag' 'Manifest head by digest' 'Manifest get by tag' 'Manifest get by digest' \
           'Blob head' 'Blob get' 'Tag listing' 'Referrers'; do
  line=$(grep -E "^  ${api}\.*: " "$WORK/conformance.out" | head -1 || true)
  if [[ -z "$line" ]]; then log "API '$api' missing from the report"; ok=0; continue; fi
  [[ "$line" =~ :\ +Pass$ ]] || { log "API not passing: $line"; ok=0; }
done
[[ $ok == 1 ]] || exit 1
log "all pull, tag-list and referrers tests passed"
