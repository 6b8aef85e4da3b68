#!/usr/bin/env bash
# Brings a fresh Debian 12 machine (as root) to the point where the demo, the tests and the bench run:
# Debian packages, npm dependencies, the native addon with its eBPF programs, the TypeScript build.
# Idempotent and quick when nothing changed. With --cluster it also builds (once, cached outside the
# repo) the Kubernetes binaries the integration tests run against.
set -euo pipefail
cd "$(dirname "$0")/.."

with_cluster=0
for arg in "$@"; do
  case "$arg" in
    --cluster) with_cluster=1 ;;
    *) echo "setup.sh: unknown option $arg (known: --cluster)" >&2; exit 2 ;;
  esac
done

say() { printf '\033[1m== %s\033[0m\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: KStreams loads eBPF programs and creates network namespaces: run as root (sudo)." >&2
  exit 4
fi

# Debian packages: the BPF toolchain, the network tools the demo and tests drive, the real servers and clients
# the protocol tests mirror (PostgreSQL 15 with pgbench, Redis 7 with redis-benchmark), and the bench's peers.
# util-linux-extra: fincore, which the capture tests read the page cache of a file with.
packages=(
  clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev libzstd-dev pkg-config make g++ python3
  iproute2 iptables socat curl jq procps util-linux util-linux-extra openssl
  haproxy iperf3
  postgresql-15 postgresql-client-15 redis-server redis-tools
  etcd-server
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # The tests run their own PostgreSQL, Redis and etcd in network namespaces: the packages' system
  # services are not wanted, so they are not started on install (policy-rc.d, exit 101 = "not allowed").
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && own_policy=1
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}" || { [ "$own_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ "$own_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
fi

# npm dependencies: again only when the lock file changed since the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci"
  npm ci --no-audit --no-fund
fi

# The native addon and its BPF objects: rebuilt when any native source is newer than the addon.
addon=native/build/Release/kstreams.node
if [ ! -f "$addon" ] || [ -n "$(find native/src native/bpf native/binding.gyp native/Makefile -newer "$addon" -type f -not -path '*/.output/*' 2>/dev/null | head -n 1)" ]; then
  say "building the native addon and eBPF programs"
  npm run --silent build:native
fi

say "compiling TypeScript"
npm run --silent build:ts

if [ "$with_cluster" -eq 1 ]; then
  say "Kubernetes binaries for the integration tests"
  bash scripts/install-kubernetes.sh
  say "helm for the chart tests"
  bash scripts/install-helm.sh >/dev/null
fi
