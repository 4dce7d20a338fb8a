#!/usr/bin/env bash
# Prepares a Debian bookworm machine, as root, and says what each step is and how long it took.
# Safe to run again: what is already there is kept (Kubernetes, etcd, Prometheus, slowfs and the
# Debian roots are cached under ~/.cache/tracejob-agent, or $TRACEJOB_CACHE).
#   tests/setup.sh          everything the test command (tests/run) needs
#   tests/setup.sh try-it   only what tests/cluster/try-it needs: the cluster's packages, tracefs,
#                           Kubernetes 1.37 and etcd, and Debian trixie (the image's base)
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-all}
case "$profile" in
  all) total=9 ;;
  try-it) total=4 ;;
  *) echo "usage: tests/setup.sh [try-it]" >&2; exit 2 ;;
esac
source tests/harness/steps.sh
[ "$step_total" != 0 ] || step_total=$total

log() { echo "setup: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root: the tests run bpftrace"; exit 1; }
cache_root=${TRACEJOB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tracejob-agent}

# The local cluster and its image (tests/cluster/up, tests/harness/build-agent-image.sh).
cluster_packages=(ca-certificates curl openssl debootstrap buildah containerd runc
                  containernetworking-plugins gcc libc6-dev iproute2 procps)
# The rest of the tests: bpftrace on the host, and the aarch64 cross build run under qemu-user.
test_packages=(rsync jq make bpftrace qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
packages=("${cluster_packages[@]}")
[ "$profile" = try-it ] || packages+=("${test_packages[@]}")

install_packages() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

rust_aarch64() {
  command -v rustup >/dev/null || { log "rustup is missing: the aarch64 build needs its target"; return 1; }
  rustup target list --installed | grep -qx aarch64-unknown-linux-gnu ||
    rustup target add aarch64-unknown-linux-gnu
}

tracefs() {
  [ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing
}

# A Debian root debootstrapped in the background (network, while Kubernetes builds: CPU); its log
# is shown only if it fails.
declare -A debootstraps
debootstrap_start() {
  local suite=$1 logfile
  logfile=$(mktemp "${TMPDIR:-/tmp}/tracejob-debootstrap-$suite.XXXXXX")
  bash tests/harness/build-bpftrace.sh "$suite" >/dev/null 2>"$logfile" &
  debootstraps[$suite]="$! $logfile"
}
debootstrap_wait() {
  local suite=$1 pid logfile
  read -r pid logfile <<<"${debootstraps[$suite]}"
  if ! wait "$pid"; then
    cat "$logfile" >&2
    rm -f "$logfile"
    return 1
  fi
  rm -f "$logfile"
  log "bpftrace of Debian $suite: $(bash tests/harness/build-bpftrace.sh "$suite")"
}

kubernetes() {
  local bin
  bin=$(bash tests/harness/build-kubernetes.sh "$1")
  log "in $bin"
}
version() { sed -n "s|^require $1 \(v[0-9.]*\)$|\1|p" "$2/go.mod"; }
k8s=$(version k8s.io/kubernetes tests/harness/kubernetes)
k8s_oldest=$(version k8s.io/kubernetes tests/harness/kubernetes-1.34)
etcd=$(version go.etcd.io/etcd/server/v3 tests/harness/etcd)

step "Debian packages (${#packages[@]}; those missing are installed)" install_packages "${packages[@]}"
command -v cargo >/dev/null || { log "cargo is missing: install a Rust toolchain (rustup)"; exit 1; }
if [ "$profile" = all ]; then
  step "Rust's aarch64-unknown-linux-gnu target (the cross build)" rust_aarch64
fi
step "tracefs at /sys/kernel/tracing" tracefs
debootstrap_start trixie
if [ "$profile" = all ]; then debootstrap_start sid; fi
step "Kubernetes $k8s and etcd $etcd, built from Go modules once (cached)" \
  kubernetes tests/harness/kubernetes
if [ "$profile" = all ]; then
  step "Kubernetes $k8s_oldest (the oldest supported) and etcd, built from Go modules once (cached)" \
    kubernetes tests/harness/kubernetes-1.34
fi
if [ "$profile" = all ]; then
  step "Prometheus and Alertmanager, built from Go modules once (cached; the trigger tests)" \
    bash tests/harness/build-prometheus.sh
  step "slowfs (the slow disk: FUSE), built from Go modules once (cached; the slow-disk test)" \
    bash tests/harness/build-slowfs.sh
fi
step "Debian trixie, debootstrapped alongside (the image's base; bpftrace 0.23)" debootstrap_wait trixie
if [ "$profile" = all ]; then
  step "Debian sid, debootstrapped alongside (bpftrace 0.27)" debootstrap_wait sid
fi
