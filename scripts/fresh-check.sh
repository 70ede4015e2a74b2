#!/usr/bin/env bash
# Proves the README's two commands on a fresh machine, not on one that already has everything: builds a minimal
# Debian 12 (bookworm) root with debootstrap, gives it the baseline a fresh machine of this kind has, copies a clean
# clone of the committed HEAD in, and runs inside it (chroot, in a private mount namespace):
#   (a) scripts/setup.sh start   in the background, timed until `curl http://127.0.0.1:PORT/v2/` answers; then stopped
#   (b) scripts/setup.sh test    timed until it exits (its closing line is vitest's "N passed, M failed" summary)
# and prints both wall times and exit codes. Needs root (debootstrap, mount, chroot); not run in CI.
#
#   sudo scripts/fresh-check.sh [--keep] [--port N] [--log FILE] [--skip-test]
#
#   --keep        keep the root (and its tool cache) under the printed directory for a look afterwards
#   --port N      the port `start` serves on (PORTCULLIS__listen); default 5000, or a free one if 5000 is taken.
#                 The chroot shares the host's network namespace.
#   --log FILE    default: $TMPDIR/portcullis-fresh-check-<time>.log
#   --skip-test   only (a)
#
# The baseline (what such a fresh machine has before the README's commands): debootstrap's minbase variant, the
# host's Debian apt sources, Go at /usr/local/go and the system Node (with npm) copied from the host, the host's
# /usr/sbin/policy-rc.d (a sandbox that starts no package services), /etc/resolv.conf and CA trust (see below), the
# root user, and Debian's default PATH (no /usr/local/go/bin, no LANG). Nothing else: no git, curl, Debian
# ca-certificates package, build tools or locales.
# Environment: FRESH_CHECK_DEB_CACHE (debootstrap's .deb cache for the base system only, default
# ~/.cache/portcullis-fresh-check/debs; set it empty to download every time).
set -Eeuo pipefail

SELF=$(readlink -f "$0")
REPO=$(cd "$(dirname "$SELF")/.." && pwd)
SUITE=bookworm
DEBIAN_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
START_TIMEOUT=1800   # seconds (a) may take before /v2/ answers

# ---- inside the private mount namespace (re-invoked through unshare): mount, then chroot and run one command ----
if [[ "${1:-}" == "--inner" ]]; then
  root=$2; cmd=$3; port=$4
  # The root a mount point of its own, as / is on a real machine: podman (containers/storage) applies a layer in a
  # chroot after making / private, which fails with EINVAL when / is a plain directory.
  mount --bind "$root" "$root"
  mount -t proc proc "$root/proc"
  mount --rbind /sys "$root/sys"     # with the host's cgroup mounts (v1 controllers and cgroup2 unified)
  mount --rbind /dev "$root/dev"     # with /dev/pts and /dev/shm
  mount -t tmpfs -o mode=755 tmpfs "$root/run"
  envs=(HOME=/root USER=root LOGNAME=root SHELL=/bin/bash PATH="$DEBIAN_PATH")
  # Node reads no system CA store: the host's way of trusting its egress TLS proxy, passed on as it is.
  [[ -n "${NODE_EXTRA_CA_CERTS:-}" ]] && envs+=(NODE_EXTRA_CA_CERTS="$NODE_EXTRA_CA_CERTS")
  [[ "$cmd" == start ]] && envs+=(PORTCULLIS__listen="127.0.0.1:$port")
  exec chroot "$root" /usr/bin/env -i "${envs[@]}" /bin/bash -c 'cd /root/portcullis && exec scripts/setup.sh "$1"' \
    bash "$cmd"
fi

KEEP=0; PORT=""; LOG=""; SKIP_TEST=0
while (( $# )); do
  case "$1" in
    --keep) KEEP=1 ;;
    --port) PORT=$2; shift ;;
    --log) LOG=$2; shift ;;
    --skip-test) SKIP_TEST=1 ;;
    *) echo "usage: scripts/fresh-check.sh [--keep] [--port N] [--log FILE] [--skip-test]" >&2; exit 2 ;;
  esac
  shift
done
(( EUID == 0 )) || { echo "fresh-check: needs root (debootstrap, mount, chroot)" >&2; exit 1; }

LOG=${LOG:-${TMPDIR:-/tmp}/portcullis-fresh-check-$(date +%Y%m%d-%H%M%S).log}
exec > >(tee -a "$LOG") 2>&1
T_ALL=$SECONDS
log() { echo "[fresh-check $(date +%H:%M:%S) +$((SECONDS - T_ALL))s] $*"; }
STEP="start"
on_err() {
  local rc=$? cmd=$BASH_COMMAND
  (( BASH_SUBSHELL == 0 )) || return "$rc"
  log "FAILED in step '$STEP' (exit $rc) at line ${BASH_LINENO[0]}: $cmd"
}
trap on_err ERR

WORK=""; ROOT=""; START_PID=""
# Processes still running with the fresh root as their / (a server or daemon a test left behind) keep the mount
# namespace alive; they are ours, end them by pid.
root_pids() {
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    [[ "$r" == "$ROOT" ]] && echo "${p#/proc/}"
  done
  return 0
}
stop_group() { # pgid: TERM, wait up to 20 s, then KILL
  local pg=$1 i
  kill -TERM -- "-$pg" 2>/dev/null || return 0
  for ((i = 0; i < 40; i++)); do kill -0 -- "-$pg" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL -- "-$pg" 2>/dev/null || true
}
cleanup() {
  local rc=$? pids
  trap - ERR
  [[ -n "$START_PID" ]] && stop_group "$START_PID"
  if [[ -n "$ROOT" ]]; then
    pids=$(root_pids)
    if [[ -n "$pids" ]]; then log "ending leftover processes in the root: $(echo $pids)"; kill -KILL $pids 2>/dev/null || true; sleep 1; fi
  fi
  if [[ -n "$WORK" && -d "$WORK" ]]; then
    # The mounts lived only in the private namespaces; never delete through one that is somehow still here.
    if grep -q " $WORK/" /proc/self/mountinfo; then
      log "mounts under $WORK are still present in this namespace; NOT deleting it"
    elif (( KEEP )); then
      log "kept the root: $ROOT"
    else
      rm -rf --one-file-system "$WORK"
      log "deleted $WORK"
    fi
  fi
  log "log: $LOG"
  exit "$rc"
}
trap cleanup EXIT

# ---- the host side: debootstrap and the mirror ----
STEP="debootstrap on the host"
if ! command -v debootstrap >/dev/null; then
  log "apt-get install debootstrap (host)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
fi

# The mirror the host's apt uses for $SUITE (one-line .list or deb822 .sources); this machine may reach no other.
apt_source_files() {
  ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true
}
MIRROR=""
for f in $(apt_source_files); do
  case "$f" in
    *.sources)
      m=$(awk -v s="$SUITE" 'BEGIN{RS=""} {
            uri=""; ok=0; en=1
            n=split($0, L, "\n")
            for (i=1;i<=n;i++) {
              if (L[i] ~ /^URIs:/) { split(L[i], u, /[ \t]+/); uri=u[2] }
              if (L[i] ~ /^Suites:/) { k=split(L[i], t, /[ \t]+/); for (j=2;j<=k;j++) if (t[j]==s) ok=1 }
              if (L[i] ~ /^Enabled:[ \t]*no/) en=0
            }
            if (ok && en && uri!="") { print uri; exit }
          }' "$f") ;;
    *) m=$(awk -v s="$SUITE" '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1)==s) { print $i; exit } }' "$f") ;;
  esac
  if [[ -n "$m" ]]; then MIRROR=$m; break; fi
done
MIRROR=${MIRROR:-http://deb.debian.org/debian}

HEAD_SHA=$(git -C "$REPO" rev-parse HEAD)
BRANCH=$(git -C "$REPO" rev-parse --abbrev-ref HEAD)
if [[ -n "$(git -C "$REPO" status --porcelain --untracked-files=no)" ]]; then
  log "note: the work tree has uncommitted changes; they are NOT part of this check (committed HEAD only)"
fi
if [[ -z "$PORT" ]]; then
  PORT=5000
  while (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; do PORT=$((PORT + 1)); done
fi
(exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && { log "port $PORT is in use on 127.0.0.1 (the chroot shares the host's network)"; exit 1; }

log "checking $BRANCH @ $HEAD_SHA on a fresh Debian 12 root (mirror $MIRROR; start on 127.0.0.1:$PORT)"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-fresh.XXXXXX")
ROOT="$WORK/root"

STEP="debootstrap"
t=$SECONDS
DEB_CACHE=${FRESH_CHECK_DEB_CACHE-$HOME/.cache/portcullis-fresh-check/debs}
cache_arg=()
if [[ -n "$DEB_CACHE" ]]; then mkdir -p "$DEB_CACHE"; cache_arg=(--cache-dir="$DEB_CACHE"); fi
log "debootstrap --variant=minbase $SUITE into $ROOT"
debootstrap --variant=minbase "${cache_arg[@]}" "$SUITE" "$ROOT" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 ||
  { tail -20 "$WORK/debootstrap.log"; false; }
log "debootstrap: done in $((SECONDS - t))s"

STEP="baseline"
# apt: the host's entries for this mirror (e.g. bookworm, bookworm-updates, bookworm-security), as on the host.
rm -f "$ROOT/etc/apt/sources.list"
copied=0
for f in $(apt_source_files); do
  if grep -q "${MIRROR%/debian*}" "$f"; then cp "$f" "$ROOT$f"; copied=1; fi
done
(( copied )) || echo "deb $MIRROR $SUITE main" > "$ROOT/etc/apt/sources.list"
# Go, as the official tarball installs it.
[[ -x /usr/local/go/bin/go ]] || { log "the host has no /usr/local/go: a fresh machine of this kind has Go there"; exit 1; }
cp -a /usr/local/go "$ROOT/usr/local/go"
# The system Node and its npm (here a Node 20 from the nodesource package: /usr/bin/node, /usr/lib/node_modules).
node_bin=$(readlink -f "$(command -v node)")
npm_cli=$(readlink -f "$(command -v npm)")
node_modules=${npm_cli%/npm/bin/*}
[[ -d "$node_modules/npm" ]] || { log "cannot tell where npm comes from ($npm_cli)"; exit 1; }
mkdir -p "$ROOT$(dirname "$node_bin")" "$ROOT$(dirname "$node_modules")"
cp -a "$node_bin" "$ROOT$node_bin"
cp -a "$node_modules" "$ROOT$node_modules"
for b in npm npx corepack; do
  p=$(command -v "$b" 2>/dev/null) || continue
  [[ -L "$p" ]] && cp -a "$p" "$ROOT$p"
done
# The sandbox's policy-rc.d (exit 101: package services do not start), DNS, a hosts file.
[[ -f /usr/sbin/policy-rc.d ]] && cp -a /usr/sbin/policy-rc.d "$ROOT/usr/sbin/policy-rc.d"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
# The host's CA trust: this machine reaches the npm registry and the Go proxy through a TLS-intercepting egress
# proxy whose CA the host trusts (locally added CAs, and the bundle that Go, curl and npm's cafile read). When the
# test set-up installs Debian's ca-certificates, update-ca-certificates rebuilds the bundle with the local CAs.
if [[ -d /usr/local/share/ca-certificates ]]; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp -a /usr/local/share/ca-certificates/. "$ROOT/usr/local/share/ca-certificates/"
fi
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  mkdir -p "$ROOT/etc/ssl/certs"; cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
fi
[[ -f "$ROOT/etc/hosts" ]] || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
npm_version=$(sed -n 's/^  "version": "\(.*\)",$/\1/p' "$ROOT$node_modules/npm/package.json")
log "baseline: node $("$ROOT$node_bin" --version) at $node_bin, npm $npm_version, $("$ROOT/usr/local/go/bin/go" version | cut -d' ' -f3)"

STEP="clean clone"
git clone -q --no-hardlinks --no-checkout "$REPO" "$ROOT/root/portcullis"
git -C "$ROOT/root/portcullis" checkout -q -B "$BRANCH" "$HEAD_SHA"
rm -rf "$ROOT/root/portcullis/.git/hooks"
log "clone: $(git -C "$ROOT/root/portcullis" log --oneline -1)"

in_root() { unshare -m --propagation private -- bash "$SELF" --inner "$ROOT" "$1" "$PORT"; }

# ---- (a) start ----
STEP="(a) setup.sh start"
log "(a) scripts/setup.sh start (in the background; waiting for http://127.0.0.1:$PORT/v2/)"
t=$SECONDS
# Its own process group (no job control here, so setsid does not fork): stopping it reaches npm and node.
setsid unshare -m --propagation private -- bash "$SELF" --inner "$ROOT" start "$PORT" > >(tee "$WORK/start.out") 2>&1 &
START_PID=$!
START_RC=""; START_SECS=""; code=000
while (( SECONDS - t < START_TIMEOUT )); do
  code=$(curl -s -o /dev/null -m 5 -w '%{http_code}' "http://127.0.0.1:$PORT/v2/" || true)
  if [[ "$code" != 000 ]]; then START_SECS=$((SECONDS - t)); break; fi
  if ! kill -0 "$START_PID" 2>/dev/null; then wait "$START_PID" && START_RC=0 || START_RC=$?; break; fi
  sleep 1
done
if [[ -n "$START_SECS" ]]; then
  log "(a) /v2/ answered HTTP $code after ${START_SECS}s; stopping it"
  stop_group "$START_PID"
  wait "$START_PID" && START_RC=0 || START_RC=$?
  log "(a) stopped; setup.sh start exit code $START_RC (143 = the SIGTERM we sent)"
else
  log "(a) FAILED: /v2/ did not answer (setup.sh start exit code ${START_RC:-still running after ${START_TIMEOUT}s})"
  [[ -z "$START_RC" ]] && stop_group "$START_PID"
fi
START_PID=""
pids=$(root_pids); [[ -z "$pids" ]] || { log "(a) leftover processes after stop: $(echo $pids); ending them"; kill -KILL $pids || true; }

# ---- (b) test ----
TEST_RC=""; TEST_SECS=""; CLOSING=""
if (( ! SKIP_TEST )); then
  STEP="(b) setup.sh test"
  log "(b) scripts/setup.sh test"
  t=$SECONDS
  if in_root test 2>&1 | tee "$WORK/test.out"; then TEST_RC=0; else TEST_RC=${PIPESTATUS[0]}; fi
  TEST_SECS=$((SECONDS - t))
  CLOSING=$(grep -E '^[0-9]+ passed, [0-9]+ failed, [0-9]+ skipped' "$WORK/test.out" | tail -1 || true)
  log "(b) setup.sh test exit code $TEST_RC after ${TEST_SECS}s; closing line: ${CLOSING:-none}"
fi

STEP="summary"
log "SUMMARY ($BRANCH @ ${HEAD_SHA:0:12}, fresh Debian 12 minbase root)"
if [[ -n "$START_SECS" ]]; then
  log "  start: /v2/ answered after ${START_SECS}s (exit code after our SIGTERM: $START_RC)"
else
  log "  start: FAILED (exit code ${START_RC:-none})"
fi
(( SKIP_TEST )) || log "  test:  exit code $TEST_RC after ${TEST_SECS}s (${CLOSING:-no closing line})"
log "  whole check: $((SECONDS - T_ALL))s"
log "  set-up steps (from the logs):"
for f in "$WORK/start.out" "$WORK/test.out"; do
  [[ -f "$f" ]] || continue
  grep -E '^\[install-tools\] \([0-9]+/[0-9]+\) .*(in [0-9]+s|FAILED)|^\[setup\] (npm ci: done|FAILED)|^\[install-tools\] FAILED' "$f" |
    sed "s|^|    $(basename "$f" .out): |" || true
done
if [[ -n "$START_SECS" ]] && { (( SKIP_TEST )) || [[ "$TEST_RC" == 0 ]]; }; then exit 0; else exit 1; fi
