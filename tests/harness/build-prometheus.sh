#!/usr/bin/env bash
# Builds the Prometheus and Alertmanager the trigger tests run, from Go modules, once, into a cache
# outside the repository (as build-kubernetes.sh builds Kubernetes); prints the directory holding
# both binaries. Later runs find the cache and return at once.
#   build-prometheus.sh
# tests/harness/prometheus and tests/harness/alertmanager are small Go modules that each require
# one release and name its command in tools.go; go.sum makes the build reproducible.
# Neither module holds its web UI's assets (npm generates them at release). Prometheus builds
# without them (no `builtinassets` tag; its UI then serves nothing) and without service discovery
# (`remove_all_sd`: the tests use static targets). Alertmanager embeds its UI unconditionally
# (`//go:embed app/dist`), so it is built from a copy of its module with a placeholder page there
# (`alertmanager/ui-placeholder`), through a `replace` in a copy of the build module: the
# committed go.mod and go.sum stay as they are, and every other module is checked against go.sum.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version() { sed -n "s|^require $1 \(v[0-9.]*\)$|\1|p" "$here/$2/go.mod"; }
prometheus=$(version github.com/prometheus/prometheus prometheus)
alertmanager=$(version github.com/prometheus/alertmanager alertmanager)
[ -n "$prometheus" ] && [ -n "$alertmanager" ] || { echo "build-prometheus: no versions in the modules' go.mod" >&2; exit 1; }
cache_root=${TRACEJOB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tracejob-agent}
out="$cache_root/prometheus-$prometheus-alertmanager-$alertmanager"

if [ -x "$out/bin/prometheus" ] && [ -x "$out/bin/alertmanager" ]; then echo "$out/bin"; exit 0; fi

log() { echo "build-prometheus: $*" >&2; }
[ -d /usr/local/go/bin ] && PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null || { log "missing go (Go 1.26 or later)"; exit 1; }
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly GOCACHE="$cache_root/go-build"
mkdir -p "$out/bin.partial"
log "building prometheus $prometheus from Go modules (once)"
(cd "$here/prometheus" && go build -trimpath -tags remove_all_sd -ldflags "-s -w" \
  -o "$out/bin.partial/prometheus" github.com/prometheus/prometheus/cmd/prometheus) >&2
log "building alertmanager $alertmanager from Go modules (once)"
src=$(cd "$here/alertmanager" && go mod download -json "github.com/prometheus/alertmanager@$alertmanager" |
  sed -n 's/^\s*"Dir": "\(.*\)",$/\1/p')
[ -d "$src" ] || { log "alertmanager's module was not downloaded"; exit 1; }
rm -rf "$out/src"; mkdir -p "$out/src/build"
cp -r "$src" "$out/src/alertmanager"; chmod -R u+w "$out/src/alertmanager"
for ui in elm mantine; do
  mkdir -p "$out/src/alertmanager/ui/app/dist/$ui"
  cp "$here/alertmanager/ui-placeholder/index.html" "$out/src/alertmanager/ui/app/dist/$ui/"
done
cp "$here/alertmanager/go.mod" "$here/alertmanager/go.sum" "$here/alertmanager/tools.go" "$out/src/build/"
(cd "$out/src/build" &&
  go mod edit -replace "github.com/prometheus/alertmanager=$out/src/alertmanager" &&
  go build -trimpath -ldflags "-s -w" \
    -o "$out/bin.partial/alertmanager" github.com/prometheus/alertmanager/cmd/alertmanager) >&2
rm -rf "$out/src"
rm -rf "$out/bin"; mv "$out/bin.partial" "$out/bin"
echo "$out/bin"
