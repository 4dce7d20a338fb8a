#!/usr/bin/env bash
# Makes a newer bpftrace release available for the tests, once, from a debootstrapped Debian
# suite (trixie: 0.23, sid: 0.27), cached under ~/.cache/tracejob-agent/bpftrace-SUITE.
# Prints the path of a `bpftrace` wrapper that runs that release against the host kernel through
# the suite's own dynamic loader and libraries, without chroot, so host paths (program files, the
# agent's state directory) stay valid.
set -euo pipefail

suite=${1:?usage: build-bpftrace.sh trixie|sid}
cache_root=${TRACEJOB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tracejob-agent}
out="$cache_root/bpftrace-$suite"
wrapper="$out/bin/bpftrace"
if [ -x "$wrapper" ] && "$wrapper" --version >/dev/null 2>&1; then echo "$wrapper"; exit 0; fi

log() { echo "build-bpftrace: $*" >&2; }
command -v debootstrap >/dev/null || { log "missing debootstrap (apt-get install debootstrap)"; exit 1; }
rm -rf "$out"
mkdir -p "$out"
log "debootstrap $suite with bpftrace (a few minutes)"
debootstrap --variant=minbase --include=bpftrace "$suite" "$out/root" http://deb.debian.org/debian >&2
mkdir -p "$out/bin"
root="$out/root"
cat > "$wrapper" <<WRAP
#!/bin/sh
# bpftrace from Debian $suite, run with its own loader and libraries against the host kernel.
exec "$root/lib64/ld-linux-x86-64.so.2" --library-path "$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu" "$root/usr/bin/bpftrace" "\$@"
WRAP
chmod +x "$wrapper"
"$wrapper" --version >&2
echo "$wrapper"
