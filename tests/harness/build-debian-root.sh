#!/usr/bin/env bash
# Debootstraps a minimal Debian root for another architecture, once, cached under
# ~/.cache/tracejob-agent/debian-SUITE-ARCH (or $TRACEJOB_CACHE): the base of the agent's image
# for that platform (build-agent-image.sh; the host's own comes from build-bpftrace.sh). The
# second stage runs under qemu-user-static through binfmt_misc (tests/setup.sh registers it).
# Prints the root's path.
#   build-debian-root.sh SUITE ARCH      e.g. trixie arm64
set -euo pipefail

suite=${1:?usage: build-debian-root.sh SUITE ARCH}
arch=${2:?usage: build-debian-root.sh SUITE ARCH}
cache_root=${TRACEJOB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tracejob-agent}
out="$cache_root/debian-$suite-$arch"
# Written last: a root without it is an interrupted debootstrap, made again.
done_mark="$out/complete"
if [ -f "$done_mark" ]; then echo "$out/root"; exit 0; fi

log() { echo "build-debian-root: $*" >&2; }
command -v debootstrap >/dev/null || { log "missing debootstrap (apt-get install debootstrap)"; exit 1; }
rm -rf "$out"
mkdir -p "$out"
log "debootstrap $suite for $arch (a few minutes: the second stage runs under qemu)"
debootstrap --arch="$arch" --variant=minbase "$suite" "$out/root" http://deb.debian.org/debian >&2
# As Debian's slim images: no downloaded packages left behind.
rm -f "$out/root/var/cache/apt/archives/"*.deb
touch "$done_mark"
echo "$out/root"
