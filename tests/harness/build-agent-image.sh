#!/usr/bin/env bash
# Builds the agent's image from the repository's Dockerfile with buildah, no Docker engine or
# registry needed: the runtime stage, around the agent built on the host (AGENT_STAGE=prebuilt,
# so run `cargo build --release --locked` first). The Dockerfile's pinned base image cannot be
# pulled here, so it is made once, under the same name, from the Debian release it names
# (debootstrapped by build-bpftrace.sh).
#   build-agent-image.sh STORAGE_DIR IMAGE
# STORAGE_DIR is buildah's own (vfs) storage, so the machine's image store is left alone; the
# base image and the apt layer stay cached there between builds.
set -euo pipefail
cd "$(dirname "$0")/../.."
storage=$1
image=$2

b() { buildah --storage-driver=vfs --root "$storage/root" --runroot "$storage/run" "$@"; }
log() { echo "build-agent-image: $*" >&2; }

[ -x target/release/tracejob-agent ] || { log "build the agent first: cargo build --release --locked"; exit 1; }
base=$(sed -n 's/^FROM \([^ ]*\) AS runtime$/\1/p' Dockerfile)
[ -n "$base" ] || { log "the Dockerfile has no runtime stage"; exit 1; }

if ! b inspect --type image "$base" >/dev/null 2>&1; then
  log "making $base from the debootstrapped Debian trixie root, without bpftrace"
  rootfs=$(dirname "$(dirname "$(bash tests/harness/build-bpftrace.sh trixie)")")/root
  c=$(b from scratch)
  m=$(b mount "$c")
  cp -a "$rootfs/." "$m"
  # The debootstrap included bpftrace (for the release tests); the image's comes from apt.
  chroot "$m" dpkg --remove --force-depends bpftrace >/dev/null
  b umount "$c" >/dev/null
  b commit -q "$c" "$base" >/dev/null
  b rm "$c" >/dev/null
fi

# --layers keeps the apt step cached, so a rebuild only copies in the new agent. The agent is the
# host's, so the image is for the host's architecture (this buildah sets no TARGETARCH itself).
b bud -q --layers --network host --build-arg AGENT_STAGE=prebuilt \
  --build-arg TARGETARCH="$(dpkg --print-architecture)" --target runtime -t "$image" . >&2
