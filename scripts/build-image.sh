#!/usr/bin/env bash
# Builds the one KStreams image (operator, webhook and the injected agent) WITHOUT Docker: a docker-archive
# tar (manifest.json, a config JSON, one layer tar) that `ctr -n k8s.io images import`, `kind load
# image-archive` and `docker load` accept. The layer is a minimal rootfs:
#   /usr/bin/node + the shared libraries `ldd` lists (and the dynamic loader)
#   /opt/kstreams/{package.json, dist/, node_modules/ (production only), native/build/Release/kstreams.node}
#     + the addon's shared libraries (libbpf, libelf, libz, ... via ldd)
#   /usr/local/bin/kstreams -> /opt/kstreams/bin/kstreams.mjs (#!/usr/bin/node; no shell in the image)
#   /etc/passwd, /etc/group (root, nonroot 65532), /tmp (1777)
# Tag: kstreams/kstreams:<version in package.json> (the chart's default image).
#
# Output: $KSTREAMS_CACHE/images/kstreams-<version>.tar (default cache /var/cache/kstreams), printed on stdout.
# Reproducible (sorted entries, mtime 0, uid/gid 0, fixed config) and fast when unchanged: a hash of every
# input is kept beside the tar; when it matches, nothing is rebuilt.
#
# Usage: scripts/build-image.sh [--build] [--tag REF] [--out FILE]
#                               [--import-containerd SOCKET] [--kind-load CLUSTER]
#   --build                     run `npm run build` first (native addon + TypeScript into dist/)
#   --import-containerd SOCKET  import into that containerd's k8s.io namespace (the local e2e node)
#   --kind-load CLUSTER         `kind load image-archive` into that kind cluster
set -euo pipefail
umask 022

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
version=$(node -p 'require("./package.json").version')
tag="kstreams/kstreams:$version"
cache=${KSTREAMS_CACHE:-/var/cache/kstreams}/images
out=""
build=0
import_sock=""
kind_cluster=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build) build=1 ;;
    --tag) tag=$2; shift ;;
    --out) out=$2; shift ;;
    --import-containerd) import_sock=$2; shift ;;
    --kind-load) kind_cluster=$2; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "build-image.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
say() { echo "[build-image] $*" >&2; }

[ "$build" = 1 ] && npm run build >&2
addon=native/build/Release/kstreams.node
for f in "$addon" dist/operator/src/main.js dist/sidecar/src/cli/main.js; do
  [ -e "$f" ] || { echo "build-image.sh: $f missing: run npm run build (or pass --build)" >&2; exit 3; }
done

mkdir -p "$cache"
[ -n "$out" ] || out="$cache/kstreams-$version.tar"

# Shared objects (resolved paths) that node and the addon need, the dynamic loader included.
libs_of() { ldd "$1" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}'; }
# tar: `kubectl cp` runs it in the container to fetch a capture from the sidecar (docs/capture.md).
tar_bin=$(readlink -f "$(command -v tar)")
mapfile -t libs < <( { libs_of /usr/bin/node; libs_of "$addon"; libs_of "$tar_bin"; } | sort -u)
# Production packages (paths relative to the repo), from the lockfile-resolved tree in node_modules.
mapfile -t pkgs < <(npm ls --omit=dev --all --parseable 2>/dev/null | tail -n +2 | sed "s|^$repo/||" | grep '^node_modules/' | sort -u)
[ "${#pkgs[@]}" -gt 0 ] || { echo "build-image.sh: npm ls found no production packages (run npm ci)" >&2; exit 3; }
# Copied from each package: everything but nested node_modules (listed separately), sources maps,
# type declarations and docs.
rsync_excludes=(--exclude=/node_modules --exclude='*.d.ts' --exclude='*.d.mts' --exclude='*.d.cts' --exclude='*.map' --exclude='*.md' --exclude='*.ts')

key=$( {
  echo "kstreams-image v1 $tag"
  sha256sum "$0" images/kstreams.mjs package.json package-lock.json "$addon"
  stat -L -c '%n %s %Y' /usr/bin/node "$tar_bin" "${libs[@]}"
  find dist -type f -not -path 'dist/e2e/*' -not -path 'dist/bench/*' -print0 | sort -z | xargs -0 sha256sum
  printf '%s\n' "${pkgs[@]}"
  for p in "${pkgs[@]}"; do find "$p" -path "$p/node_modules" -prune -o -type f -printf '%p %s %T@\n'; done | sort
} | sha256sum | cut -d' ' -f1)

if [ -f "$out" ] && [ "$(cat "$out.key" 2>/dev/null)" = "$key" ]; then
  say "unchanged: $out ($tag)"
else
  t0=$(date +%s%N)
  work=$(mktemp -d "$cache/.build-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  root="$work/rootfs"
  mkdir -p "$root"/{usr/bin,usr/local/bin,opt/kstreams/bin,opt/kstreams/native/build/Release,etc,tmp}
  chmod 1777 "$root/tmp"
  cp -L /usr/bin/node "$root/usr/bin/node"
  cp -L "$tar_bin" "$root/usr/bin/tar"
  for l in "${libs[@]}"; do
    mkdir -p "$root$(dirname "$l")"
    cp -L "$l" "$root$l"
  done
  app="$root/opt/kstreams"
  cp package.json "$app/"
  rsync -a --exclude='e2e/' --exclude='bench/' dist/ "$app/dist/"
  cp "$addon" "$app/native/build/Release/kstreams.node"
  for p in "${pkgs[@]}"; do
    mkdir -p "$app/$p"
    rsync -a "${rsync_excludes[@]}" "$p/" "$app/$p/"
  done
  cp images/kstreams.mjs "$app/bin/kstreams.mjs"
  chmod 755 "$app/bin/kstreams.mjs"
  ln -s /opt/kstreams/bin/kstreams.mjs "$root/usr/local/bin/kstreams"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$root/etc/group"
  # The image must run what it carries: the launcher and the addon load with only the rootfs' libraries.
  [ "$(env -i PATH=/usr/local/bin:/usr/bin /usr/sbin/chroot "$root" /usr/local/bin/kstreams --version 2>&1)" = "$version" ] || {
    echo "build-image.sh: the rootfs does not run: $(env -i PATH=/usr/local/bin:/usr/bin /usr/sbin/chroot "$root" /usr/local/bin/kstreams --version 2>&1 | tail -3)" >&2; exit 4; }
  env -i PATH=/usr/local/bin:/usr/bin /usr/sbin/chroot "$root" /usr/bin/node -e 'require("/opt/kstreams/native/build/Release/kstreams.node")' || {
    echo "build-image.sh: the addon does not load in the rootfs" >&2; exit 4; }
  env -i PATH=/usr/bin /usr/sbin/chroot "$root" /usr/bin/tar --version >/dev/null || {
    echo "build-image.sh: tar does not run in the rootfs (kubectl cp needs it)" >&2; exit 4; }

  img="$work/image"
  mkdir -p "$img"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -C "$root" -cf "$img/layer.tar" .
  diff_id="sha256:$(sha256sum "$img/layer.tar" | cut -d' ' -f1)"
  cat >"$img/config.json" <<EOF
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z","config":{"Entrypoint":["/usr/local/bin/kstreams"],"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","NODE_ENV=production"],"WorkingDir":"/opt/kstreams","Labels":{"org.opencontainers.image.title":"kstreams","org.opencontainers.image.version":"$version"}},"rootfs":{"type":"layers","diff_ids":["$diff_id"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"scripts/build-image.sh"}]}
EOF
  cfg="$(sha256sum "$img/config.json" | cut -d' ' -f1).json"
  mv "$img/config.json" "$img/$cfg"
  printf '[{"Config":"%s","RepoTags":["%s"],"Layers":["layer.tar"]}]\n' "$cfg" "$tag" >"$img/manifest.json"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -C "$img" -cf "$work/out.tar" manifest.json "$cfg" layer.tar
  mv "$work/out.tar" "$out"
  echo "$key" >"$out.key"
  rm -rf "$work"
  trap - EXIT
  say "built $out ($tag, $(du -m "$out" | cut -f1) MB, layer $diff_id) in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
fi

if [ -n "$import_sock" ]; then
  ctr --address "$import_sock" --namespace k8s.io images import "$out" >&2
  say "imported $tag into containerd $import_sock"
fi
if [ -n "$kind_cluster" ]; then
  kind load image-archive "$out" --name "$kind_cluster" >&2
  say "loaded $tag into kind cluster $kind_cluster"
fi
echo "$out"
