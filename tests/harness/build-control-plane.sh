#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kubectl 1.20.2 from
# Debian bookworm's `kubernetes` source package, once, into a cache outside the repository.
# Prints the directory holding the binaries. Later runs find the cache and return at once.
set -euo pipefail

version=1.20.2
cache_root=${TRACEJOB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tracejob-agent}
out="$cache_root/kubernetes-$version"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)

complete() {
  for b in "${binaries[@]}"; do [ -x "$out/bin/$b" ] || return 1; done
}
if complete; then echo "$out/bin"; exit 0; fi

log() { echo "build-control-plane: $*" >&2; }
for tool in go rsync make apt-get; do
  command -v "$tool" >/dev/null || { log "missing $tool (apt-get install golang-go rsync make)"; exit 1; }
done

work="$cache_root/build-$version"
rm -rf "$work"; mkdir -p "$work/apt/lists/partial" "$work/src"
# A private sources list, so the machine's apt configuration is left as it is.
echo "deb-src http://deb.debian.org/debian bookworm main" > "$work/apt/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o "Dir::State::Lists=$work/apt/lists" -o APT::Sandbox::User=root)
log "downloading the kubernetes source package"
apt-get "${apt_opts[@]}" -qq update >&2
(cd "$work/src" && apt-get "${apt_opts[@]}" -qq source --download-only kubernetes >&2)
tar -C "$work/src" -xzf "$work"/src/kubernetes_*.orig.tar.gz
tree="$work/src/kubernetes-$version"
[ -d "$tree" ] || { log "no $tree after unpacking"; exit 1; }

# reflect2 v1.0.1 mirrors an old runtime hiter and lets mapiterinit allocate it: under Go >= 1.18
# that corrupts memory (SIGSEGV in mapiterinit on the first custom-resource create). v1.0.2's fix:
# mirror the runtime's full hiter and pass one for mapiterinit to fill.
python3 "$(dirname "$0")/patch-reflect2.py" "$tree/vendor/github.com/modern-go/reflect2"

export GOPATH="$work/gopath" GO111MODULE=off GOFLAGS= GOCACHE="$work/gocache"
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$tree" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"
log "make generated_files"
make generated_files >&2
ldflags="-s -w -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitVersion=v$version"
ldflags+=" -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitMinor=20"
ldflags+=" -X k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version.gitVersion=v$version"
mkdir -p "$out/bin.partial"
for b in "${binaries[@]}"; do
  log "go build $b"
  go build -ldflags "$ldflags" -o "$out/bin.partial/$b" "./cmd/$b" >&2
done
rm -rf "$out/bin"; mv "$out/bin.partial" "$out/bin"
rm -rf "$work"
echo "$out/bin"
