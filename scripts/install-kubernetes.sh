#!/usr/bin/env bash
# Builds the Kubernetes control-plane and node binaries from Debian's source package and caches them
# outside the repository, keyed by version:
#
#   /var/cache/kstreams/kubernetes-<version>/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,
#                                                 kubelet,kubectl,pause}
#
# Idempotent: when the cached binaries exist (and report the right version) it only makes sure the
# runtime packages are installed and exits. Run as root on Debian 12 (CI runs it on a fresh machine).
# See docs/local-cluster.md.
#
# Environment:
#   KSTREAMS_CACHE_DIR   cache root (default /var/cache/kstreams)
#   KSTREAMS_K8S_VERSION Debian source version to expect (default 1.20.2)
#   KSTREAMS_SKIP_APT=1  do not touch apt (packages must already be there)
#   KSTREAMS_NODE_PACKAGES=0  skip the packages only needed for a kubelet node (containerd, runc, CNI, ...)
set -euo pipefail

K8S_VERSION="${KSTREAMS_K8S_VERSION:-1.20.2}"
CACHE_ROOT="${KSTREAMS_CACHE_DIR:-/var/cache/kstreams}"
DEST="$CACHE_ROOT/kubernetes-$K8S_VERSION"
BIN="$DEST/bin"
BUILD_ROOT="$CACHE_ROOT/build"
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
NICE=(nice -n 10)

log() { printf '[install-kubernetes %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root"

# Packages needed to build (and, for the node, to run) the cluster.
BUILD_PACKAGES=(golang-go rsync make gcc libc6-dev dpkg-dev golang-github-modern-go-reflect2-dev)
RUN_PACKAGES=(etcd-server openssl util-linux)
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack busybox-static iproute2)

cached_ok() {
  local b
  for b in "${BINARIES[@]}" pause; do
    [ -x "$BIN/$b" ] || return 1
  done
  "$BIN/kube-apiserver" --version 2>/dev/null | grep -q "v$K8S_VERSION" || return 1
}

apt_opts=(-y -q -o DPkg::Lock::Timeout=600)
apt_updated=0
apt_update_once() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    apt-get "${apt_opts[@]:1}" update >/dev/null
    apt_updated=1
  fi
}

# Installs the named packages that are missing. Daemons shipped by packages (etcd, containerd) must not be
# started by their maintainer scripts: the harness runs its own instances, so a policy-rc.d that denies
# service starts is put in place for the duration of the install (and the previous one restored).
ensure_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ "${#missing[@]}" = 0 ] && return 0
  [ "${KSTREAMS_SKIP_APT:-0}" = 1 ] && die "missing packages ${missing[*]} and KSTREAMS_SKIP_APT=1"
  log "installing packages: ${missing[*]}"
  apt_update_once
  local policy=/usr/sbin/policy-rc.d backup=""
  if [ -e "$policy" ]; then backup="$(mktemp)"; cp -p "$policy" "$backup"; fi
  printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install --no-install-recommends "${missing[@]}" || rc=$?
  if [ -n "$backup" ]; then mv -f "$backup" "$policy"; else rm -f "$policy"; fi
  [ "$rc" = 0 ] || die "apt-get install failed ($rc)"
}

# A deb-src twin of every deb entry in debian.sources (same URIs/Suites/Components/Signed-By).
ensure_deb_src() {
  local src=/etc/apt/sources.list.d/debian.sources twin=/etc/apt/sources.list.d/kstreams-deb-src.sources
  if grep -rqsE '^(Types:.*deb-src|deb-src )' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    return 0
  fi
  [ -f "$src" ] || die "$src not found; add a deb-src entry for Debian bookworm by hand"
  log "adding deb-src twin of $src as $twin"
  sed -E 's/^Types:.*$/Types: deb-src/' "$src" >"$twin.tmp"
  mv -f "$twin.tmp" "$twin"
  apt_updated=0
}

install_packages() {
  ensure_packages "${RUN_PACKAGES[@]}"
  if [ "${KSTREAMS_NODE_PACKAGES:-1}" != 0 ]; then ensure_packages "${NODE_PACKAGES[@]}"; fi
}

mkdir -p "$CACHE_ROOT"
# One build at a time on this machine; a second caller waits and then finds the cache.
exec 9>"$CACHE_ROOT/.install-kubernetes.lock"
if ! flock -n 9; then
  log "another install is running; waiting for it"
  flock 9
fi

if cached_ok; then
  log "cached binaries present in $BIN"
  install_packages
  log "done"
  exit 0
fi

log "no usable cache in $BIN; building Kubernetes $K8S_VERSION from Debian source"
T0=$(date +%s)
ensure_packages "${BUILD_PACKAGES[@]}"
install_packages
ensure_deb_src
apt_update_once

mkdir -p "$BUILD_ROOT"
SCRATCH="$(mktemp -d "$BUILD_ROOT/kubernetes-$K8S_VERSION.XXXXXX")"
STAGE=""
cleanup() {
  local rc=$?
  [ -n "$SCRATCH" ] && rm -rf "$SCRATCH"
  [ -n "$STAGE" ] && rm -rf "$STAGE"
  rmdir "$BUILD_ROOT" 2>/dev/null || true
  [ "$rc" = 0 ] || log "FAILED (exit $rc); scratch removed, nothing cached"
}
trap cleanup EXIT

log "apt-get source kubernetes into $SCRATCH"
(cd "$SCRATCH" && apt-get -q source kubernetes >"$SCRATCH/source.log" 2>&1) || { cat "$SCRATCH/source.log" >&2; die "apt-get source failed"; }
SRC="$(find "$SCRATCH" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
[ -n "$SRC" ] && [ -f "$SRC/Makefile" ] || die "kubernetes source tree not found in $SCRATCH"
case "$(basename "$SRC")" in kubernetes-*"$K8S_VERSION") ;; *) die "unexpected source version: $SRC (wanted $K8S_VERSION)";; esac
log "source at $SRC"

# The vendored reflect2 1.0.1 is broken under Go >= 1.18 (random SIGSEGV in kube-apiserver).
R2=/usr/share/gocode/src/github.com/modern-go/reflect2
[ -d "$R2" ] || die "$R2 missing (golang-github-modern-go-reflect2-dev)"
log "replacing vendor/github.com/modern-go/reflect2 with Debian's copy"
rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
cp -a "$R2" "$SRC/vendor/github.com/modern-go/reflect2"
rm -f "$SRC/vendor/github.com/modern-go/reflect2/go.mod" "$SRC/vendor/github.com/modern-go/reflect2/go.sum"
# A previous failed build could leave empty generator binaries behind; the tree is fresh, but be explicit.
rm -rf "$SRC/_output"

WHAT=""
for b in "${BINARIES[@]}"; do WHAT="$WHAT cmd/$b"; done
log "building:$WHAT (nice 10; takes ~7 min on 2 cores)"
(
  cd "$SRC"
  export GOPATH="$SRC/.go" CGO_ENABLED=0 HOME="$SCRATCH/home" GOCACHE="$SCRATCH/gocache"
  mkdir -p "$HOME" .go/src/k8s.io
  ln -sfn ../../.. .go/src/k8s.io/kubernetes
  "${NICE[@]}" make WHAT="${WHAT# }" >"$SCRATCH/build.log" 2>&1
) || { tail -n 60 "$SCRATCH/build.log" >&2; die "make failed"; }

OUT="$SRC/_output/bin"
[ -x "$OUT/kube-apiserver" ] || OUT="$(dirname "$(find "$SRC/_output" -type f -name kube-apiserver | head -n1)")"
for b in "${BINARIES[@]}"; do
  [ -s "$OUT/$b" ] || die "build produced no $b in $OUT"
done

STAGE="$(mktemp -d "$CACHE_ROOT/.kubernetes-$K8S_VERSION.tmp.XXXXXX")"
mkdir -p "$STAGE/bin"
for b in "${BINARIES[@]}"; do install -m 0755 "$OUT/$b" "$STAGE/bin/$b"; done

# The pod sandbox ("pause") binary, static, from the same source; the node harness wraps it into an image.
log "building static pause binary"
"${NICE[@]}" gcc -Os -static -Wall -DVERSION="v$K8S_VERSION-kstreams" \
  -o "$STAGE/bin/pause" "$SRC/build/pause/linux/pause.c"
strip "$STAGE/bin/pause" 2>/dev/null || true

"$STAGE/bin/kube-apiserver" --version | grep -q "v$K8S_VERSION" || die "built kube-apiserver reports wrong version"
printf 'version=%s\nsource=%s\nbuilt=%s\ngo=%s\n' "$K8S_VERSION" "$(basename "$SRC")" "$(date -u +%FT%TZ)" \
  "$(go version)" >"$STAGE/BUILD-INFO"

# Atomic publish: whatever incomplete tree sits at $DEST is replaced in one rename.
if [ -e "$DEST" ]; then
  OLD="$(mktemp -d "$CACHE_ROOT/.kubernetes-$K8S_VERSION.old.XXXXXX")"
  mv -T "$DEST" "$OLD/x"
  mv -T "$STAGE" "$DEST"
  rm -rf "$OLD"
else
  mv -T "$STAGE" "$DEST"
fi
STAGE=""
log "cached in $BIN ($(( $(date +%s) - T0 ))s)"
log "done"
