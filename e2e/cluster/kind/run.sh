#!/usr/bin/env bash
# Runs the e2e journeys on a kind cluster (machines with Docker; untested on the Docker-less CI VMs).
#   e2e/cluster/kind/run.sh [vitest args...]
# Creates the cluster $KIND_CLUSTER (default kstreams-e2e) unless it exists, builds the KStreams image with
# scripts/build-image.sh and loads it with `kind load image-archive`, loads busybox, runs
# `npm run test:e2e` with KUBECONFIG pointing at the cluster, and deletes the cluster it created
# (KEEP_CLUSTER=1 keeps it). Needs: docker, kind, root for the bpftool checks (optional).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
cd "$repo"
cluster=${KIND_CLUSTER:-kstreams-e2e}
busybox=${KSTREAMS_E2E_BUSYBOX_IMAGE:-busybox:1.36}
created=0
if ! kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --config e2e/cluster/kind/kind-config.yaml --wait 120s
  created=1
fi
cleanup() { if [ "$created" = 1 ] && [ "${KEEP_CLUSTER:-0}" != 1 ]; then kind delete cluster --name "$cluster"; fi; }
trap cleanup EXIT
kubeconfig=$(mktemp)
trap 'rm -f "$kubeconfig"; cleanup' EXIT
kind get kubeconfig --name "$cluster" >"$kubeconfig"
# The journey's pods use imagePullPolicy Never on kind: every image must be on the node beforehand.
docker image inspect "$busybox" >/dev/null 2>&1 || docker pull "$busybox"
kind load docker-image "$busybox" --name "$cluster"
KUBECONFIG="$kubeconfig" KSTREAMS_E2E_CLUSTER=kubeconfig KSTREAMS_E2E_KIND_CLUSTER="$cluster" \
  KSTREAMS_E2E_BUSYBOX_IMAGE="$busybox" npm run test:e2e -- "$@"
