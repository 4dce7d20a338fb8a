#!/usr/bin/env bash
# Builds slowfs (tests/harness/slowfs: a passthrough FUSE file system whose writes are slow, the
# slow disk of tests/e2e/reliability/slowdisk.rs) from Go modules, once, into a cache outside the
# repository (as build-prometheus.sh builds Prometheus); prints the binary's path. The cache is keyed
# by a hash of the module's files, so a changed slowfs is built again; later runs return at once.
#   build-slowfs.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache_root=${TRACEJOB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tracejob-agent}
hash=$(cd "$here/slowfs" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-16)
out="$cache_root/slowfs-$hash"

if [ -x "$out/slowfs" ]; then echo "$out/slowfs"; exit 0; fi

log() { echo "build-slowfs: $*" >&2; }
[ -d /usr/local/go/bin ] && PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null || { log "missing go (Go 1.26 or later)"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly GOCACHE="$cache_root/go-build"
log "building slowfs from Go modules (once)"
rm -rf "$cache_root"/slowfs-*  # builds of earlier sources
mkdir -p "$out"
(cd "$here/slowfs" && go build -trimpath -ldflags "-s -w" -o "$out/slowfs.partial" .) >&2
mv "$out/slowfs.partial" "$out/slowfs"
echo "$out/slowfs"
