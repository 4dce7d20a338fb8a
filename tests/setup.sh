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
  all) total=11 ;;
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
                  containernetworking-plugins gcc libc6-dev iproute2 procps systemtap-sdt-dev)
# The rest of the tests: bpftrace on the host, the aarch64 cross build run under qemu-user, and
# the arm64 image (tests/image.rs), whose apt step runs under qemu-user-static through binfmt_misc.
test_packages=(rsync jq make bpftrace qemu-user qemu-user-static gcc-aarch64-linux-gnu
               libc6-dev-arm64-cross chromium)
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

# The other architecture's binaries run by the kernel through qemu-user-static, also inside a
# build's containers and chroots: registered with the F flag (the interpreter opened once, here),
# from the entry qemu-user-static ships (as systemd-binfmt would, where it runs).
binfmt() {
  local qemu entry
  case "$(dpkg --print-architecture)" in amd64) qemu=aarch64 ;; *) qemu=x86_64 ;; esac
  entry=/proc/sys/fs/binfmt_misc/qemu-$qemu
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  if [ -e "$entry" ] && grep -q '^enabled' "$entry" && grep -q '^flags: .*F' "$entry" &&
     grep -qx "interpreter /usr/libexec/qemu-binfmt/$qemu-binfmt-P" "$entry"; then
    return 0
  fi
  [ ! -e "$entry" ] || echo -1 > "$entry"
  cat "/usr/lib/binfmt.d/qemu-$qemu.conf" > /proc/sys/fs/binfmt_misc/register
  grep -q '^flags: .*F' "$entry"
}

# A Debian root debootstrapped in the background (network, while Kubernetes builds: CPU); its log
# is shown only if it fails. NAME is a suite (build-bpftrace.sh) or SUITE-ARCH
# (build-debian-root.sh: another architecture's, the arm64 image's base).
declare -A debootstraps
debootstrap_cmd() {
  case "$1" in
    *-*) echo "tests/harness/build-debian-root.sh ${1%%-*} ${1#*-}" ;;
    *) echo "tests/harness/build-bpftrace.sh $1" ;;
  esac
}
debootstrap_start() {
  local name=$1 logfile
  logfile=$(mktemp "${TMPDIR:-/tmp}/tracejob-debootstrap-$name.XXXXXX")
  # shellcheck disable=SC2046
  bash $(debootstrap_cmd "$name") >/dev/null 2>"$logfile" &
  debootstraps[$name]="$! $logfile"
}
debootstrap_wait() {
  local name=$1 pid logfile
  read -r pid logfile <<<"${debootstraps[$name]}"
  if ! wait "$pid"; then
    cat "$logfile" >&2
    rm -f "$logfile"
    return 1
  fi
  rm -f "$logfile"
  # shellcheck disable=SC2046
  case "$name" in
    *-*) log "Debian ${name%%-*} for ${name#*-}: $(bash $(debootstrap_cmd "$name"))" ;;
    *) log "bpftrace of Debian $name: $(bash $(debootstrap_cmd "$name"))" ;;
  esac
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
if [ "$profile" = all ]; then
  step "qemu-user-static registered in binfmt_misc (F flag; the arm64 image's apt step)" binfmt
fi
debootstrap_start trixie
if [ "$profile" = all ]; then debootstrap_start sid; debootstrap_start trixie-arm64; fi
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
  step "Debian trixie for arm64, debootstrapped alongside under qemu (the arm64 image's base)" \
    debootstrap_wait trixie-arm64
fi
