#!/usr/bin/env bash
# Installs what the tests need on a Debian bookworm machine and builds Kubernetes and etcd from Go
# modules once (cached under ~/.cache/tracejob-agent). Safe to run again: what is already there is
# kept.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root: the tests run bpftrace"; exit 1; }

packages=(rsync jq make bpftrace openssl curl ca-certificates debootstrap buildah
          containerd runc containernetworking-plugins gcc libc6-dev iproute2 procps)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v cargo >/dev/null || { log "cargo is missing: install a Rust toolchain (rustup)"; exit 1; }

if [ ! -d /sys/kernel/tracing/events ]; then
  log "mounting tracefs"
  mount -t tracefs nodev /sys/kernel/tracing
fi

# Newer bpftrace releases for the release tests, trixie (0.23) and sid (0.27), debootstrapped while
# Kubernetes builds (network against CPU).
bash tests/harness/build-bpftrace.sh trixie > /dev/null &
trixie=$!
bash tests/harness/build-bpftrace.sh sid > /dev/null &
sid=$!
bin=$(bash tests/harness/build-kubernetes.sh)
log "Kubernetes and etcd in $bin"
oldest=$(bash tests/harness/build-kubernetes.sh tests/harness/kubernetes-1.34)
log "the oldest supported Kubernetes, for the compatibility subset, in $oldest"
wait "$trixie"
wait "$sid"
log "bpftrace releases: $(bash tests/harness/build-bpftrace.sh trixie) $(bash tests/harness/build-bpftrace.sh sid)"
