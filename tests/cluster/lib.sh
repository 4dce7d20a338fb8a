# Shared by tests/cluster/{up,down,try-it}: where the local cluster lives and how to reach it.
# shellcheck shell=bash
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cluster_dir=${TRACEJOB_CLUSTER_DIR:-/var/tmp/tracejob-cluster}
cache_root=${TRACEJOB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tracejob-agent}
# buildah's private storage: the pause and agent images and their base stay cached here.
image_store="$cache_root/images"
# The API server's port; tests/cluster/overlay tells the agent the same number.
api_port=6443
node=$(hostname | tr '[:upper:]' '[:lower:]')
kubeconfig="$cluster_dir/admin.kubeconfig"
containerd_sock="$cluster_dir/containerd/containerd.sock"
pause_image=localhost/tracejob-pause:1
# A container doing one known system call at a known rate (tests/cluster/workload.c), and /app
# (tests/userspace/app.c) for the user-space probes.
workload_image=localhost/tracejob-workload:2
agent_image=localhost/tracejob-agent:dev
bridge=tracejob0
# The kubelet sets these on start (it will not run otherwise); down restores what was there.
kubelet_sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
                 kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

# Made outside $cluster_dir by the kubelet (its device-plugin socket and pod logs have fixed
# places), containerd's shims and the agent (its state hostPath); down removes those that up
# found absent.
host_paths=(/var/lib/kubelet /var/log/pods /var/log/containers /run/containerd /var/lib/tracejob-agent)

log() { echo "$(basename "$0"): $*" >&2; }
die() { log "$*"; exit 1; }

# The kubectl of the cluster's release (built with it), unless TRACEJOB_KUBECTL names another.
kubectl_bin() {
  if [ -n "${TRACEJOB_KUBECTL:-}" ]; then echo "$TRACEJOB_KUBECTL"
  else echo "$(bash "$repo/tests/harness/build-kubernetes.sh")/kubectl"; fi
}
k() { "$(kubectl_bin)" --kubeconfig "$kubeconfig" "$@"; }
# buildah on the cluster's own image store.
images() { buildah --storage-driver=vfs --root "$image_store/root" --runroot "$image_store/run" "$@"; }

alive() { [ -f "$cluster_dir/pids/$1" ] && kill -0 "$(cat "$cluster_dir/pids/$1")" 2>/dev/null; }

# Waits until "$@" succeeds, up to $1 seconds.
wait_for() {
  local seconds=$1; shift
  local end=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.5
  done
}
