#!/usr/bin/env bash
# Builds the Kubernetes release the tests run on, from Go modules, once, into a cache outside the
# repository; prints the directory holding the binaries. Later runs find the cache and return at
# once.
#   build-kubernetes.sh [MODULE_DIR]
# MODULE_DIR (default tests/harness/kubernetes, the current release) is a small Go module that
# requires k8s.io/kubernetes at one exact version, pins each staging module to the matching
# v0.N.x, and lists in tools.go the commands to build; go.sum makes the build reproducible.
# etcd comes from tests/harness/etcd the same way and lands beside them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
module=$(cd "${1:-$here/kubernetes}" && pwd)
version=$(sed -n 's/^require k8s.io\/kubernetes \(v[0-9.]*\)$/\1/p' "$module/go.mod")
[ -n "$version" ] || { echo "build-kubernetes: no k8s.io/kubernetes version in $module/go.mod" >&2; exit 1; }
commands=($(sed -n 's|^\s*_ "k8s.io/kubernetes/cmd/\([a-z-]*\)"$|\1|p' "$module/tools.go"))
cache_root=${TRACEJOB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tracejob-agent}
out="$cache_root/kubernetes-$version"

complete() {
  for b in "${commands[@]}" etcd; do [ -x "$out/bin/$b" ] || return 1; done
}
if complete; then echo "$out/bin"; exit 0; fi

log() { echo "build-kubernetes: $*" >&2; }
# The Go this machine kind ships lives in /usr/local/go; sudo's PATH may not name it.
[ -d /usr/local/go/bin ] && PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null || { log "missing go (Go 1.26 or later)"; exit 1; }
# Never fetch another toolchain: the modules need Go 1.26, which this machine has.
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly GOCACHE="$cache_root/go-build"
major_minor=${version#v}; major_minor=${major_minor%.*}
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=${major_minor%.*} -X $pkg.gitMinor=${major_minor#*.}"
  ldflags+=" -X $pkg.gitTreeState=clean"
done

mkdir -p "$out/bin.partial"
log "building ${commands[*]} $version from Go modules (about 7 minutes on 2 cores, once)"
(cd "$module" && go build -trimpath -ldflags "$ldflags" -o "$out/bin.partial/" \
  "${commands[@]/#/k8s.io/kubernetes/cmd/}") >&2
log "building etcd"
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/bin.partial/etcd" go.etcd.io/etcd/server/v3) >&2
rm -rf "$out/bin"; mv "$out/bin.partial" "$out/bin"
echo "$out/bin"
