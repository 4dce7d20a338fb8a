#!/usr/bin/env bash
# Builds the agent's image from the repository's Dockerfile with buildah, no Docker engine or
# registry needed: the runtime stage, around the agent built on the host (AGENT_STAGE=prebuilt,
# so run `cargo build --release --locked` first). The Dockerfile's pinned base image cannot be
# pulled here, so it is made once, under the same name, from the Debian release it names
# (debootstrapped by build-bpftrace.sh, or for another architecture by build-debian-root.sh).
#   build-agent-image.sh STORAGE_DIR IMAGE [ARCH]
# STORAGE_DIR is buildah's own (vfs) storage, so the machine's image store is left alone; the
# base image and the apt layer stay cached there between builds. One storage per architecture:
# the base is there under the Dockerfile's name, for that platform only.
# ARCH (Debian's name: amd64, arm64) is the host's by default. For another one the image is built
# with --platform linux/ARCH, its apt step under qemu-user-static through binfmt_misc (registered
# by tests/setup.sh), around the agent cross-built for it: $AGENT_BINARY, by default
# target/TRIPLE/release/tracejob-agent (`cargo build --release --locked --target TRIPLE`); a
# binary elsewhere is copied there, into the build context, where the Dockerfile takes it. The
# host's agent is $CARGO_TARGET_DIR/release/tracejob-agent (default target/), copied likewise.
set -euo pipefail
cd "$(dirname "$0")/../.."
storage=$1
image=$2
host_arch=$(dpkg --print-architecture)
arch=${3:-$host_arch}

b() { buildah --storage-driver=vfs --root "$storage/root" --runroot "$storage/run" "$@"; }
log() { echo "build-agent-image: $*" >&2; }

case "$arch" in
  amd64) triple=x86_64-unknown-linux-gnu qemu=x86_64 ;;
  arm64) triple=aarch64-unknown-linux-gnu qemu=aarch64 ;;
  *) log "the image is for amd64 and arm64, not $arch"; exit 1 ;;
esac
if [ "$arch" = "$host_arch" ]; then
  agent=target/release/tracejob-agent
  # Built elsewhere (CARGO_TARGET_DIR, as the test command builds): copied into the context.
  built=${CARGO_TARGET_DIR:-target}/release/tracejob-agent
  [ -x "$built" ] || { log "build the agent first: cargo build --release --locked"; exit 1; }
  if ! [ "$built" -ef "$agent" ]; then
    mkdir -p "$(dirname "$agent")"
    cp "$built" "$agent"
  fi
else
  agent=target/$triple/release/tracejob-agent
  if [ -n "${AGENT_BINARY:-}" ] && ! [ "$AGENT_BINARY" -ef "$agent" ]; then
    [ -x "$AGENT_BINARY" ] || { log "no agent at $AGENT_BINARY"; exit 1; }
    mkdir -p "$(dirname "$agent")"
    # Stripped on the way in (the test command's aarch64 build is a debug build, 90 MB).
    if command -v "$qemu-linux-gnu-strip" >/dev/null; then
      "$qemu-linux-gnu-strip" -o "$agent" "$AGENT_BINARY"
    else
      cp "$AGENT_BINARY" "$agent"
    fi
  fi
  [ -x "$agent" ] ||
    { log "build the agent first: cargo build --release --locked --target $triple"; exit 1; }
  # F: the interpreter is opened now, so it runs in the build's containers too.
  binfmt=/proc/sys/fs/binfmt_misc/qemu-$qemu
  grep -q '^flags: .*F' "$binfmt" 2>/dev/null ||
    { log "no qemu-$qemu binfmt_misc entry with the F flag: run tests/setup.sh"; exit 1; }
fi
base=$(sed -n 's/^FROM \([^ ]*\) AS runtime$/\1/p' Dockerfile)
[ -n "$base" ] || { log "the Dockerfile has no runtime stage"; exit 1; }

if base_arch=$(b inspect --type image --format '{{.OCIv1.Architecture}}' "$base" 2>/dev/null); then
  [ "$base_arch" = "$arch" ] ||
    { log "$storage holds $base for $base_arch: use another storage for $arch"; exit 1; }
else
  c=$(b from scratch)
  m=$(b mount "$c")
  if [ "$arch" = "$host_arch" ]; then
    log "making $base from the debootstrapped Debian trixie root, without bpftrace"
    rootfs=$(dirname "$(dirname "$(bash tests/harness/build-bpftrace.sh trixie)")")/root
    cp -a "$rootfs/." "$m"
    # The debootstrap included bpftrace (for the release tests); the image's comes from apt.
    chroot "$m" dpkg --remove --force-depends bpftrace >/dev/null
  else
    log "making $base for $arch from a debootstrapped Debian trixie root"
    rootfs=$(bash tests/harness/build-debian-root.sh trixie "$arch")
    cp -a "$rootfs/." "$m"
  fi
  b umount "$c" >/dev/null
  b config --os linux --arch "$arch" "$c"
  b commit -q "$c" "$base" >/dev/null
  b rm "$c" >/dev/null
fi

# --layers keeps the apt step cached, so a rebuild only copies in the new agent.
if [ "$arch" = "$host_arch" ]; then
  # The host's agent, so the host's platform (this buildah sets no TARGETARCH itself without
  # --platform).
  b bud -q --layers --network host --build-arg AGENT_STAGE=prebuilt \
    --build-arg TARGETARCH="$arch" --target runtime -t "$image" . >&2
else
  b bud -q --layers --network host --platform "linux/$arch" --build-arg AGENT_STAGE=prebuilt \
    --build-arg AGENT_BINARY="$agent" --target runtime -t "$image" . >&2
fi
# The images the tag named before are left without a name: removed, so that rebuilds in a kept
# storage do not pile up copies of the whole root (vfs), as is the container bud leaves on the
# prebuilt stage's (unnamed) image. The cached base and apt layer stay.
b containers --format '{{.ContainerID}} {{.ImageName}}' | awk '$2 == "" { print $1 }' |
  while read -r c; do b rm "$c" >/dev/null; done
b rmi --prune >/dev/null 2>&1 || log "could not prune $storage's unnamed images (in use)"
