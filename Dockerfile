# tracejob-agent image: the agent, and bpftrace from the distribution. For linux/amd64 and
# linux/arm64:
#   docker build -t REGISTRY/tracejob-agent:0.1.0 . && docker push REGISTRY/tracejob-agent:0.1.0
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/tracejob-agent:0.1.0 --push .
#   buildah bud --platform linux/arm64 -t REGISTRY/tracejob-agent:0.1.0-arm64 .
# The agent is cross-compiled on the builder's own platform (no emulation for the Rust build);
# the runtime stage's apt step runs on the target platform (a builder for another platform needs
# qemu binfmt for it, as every multi-arch Dockerfile with a RUN does).
# With an agent built on the host instead (cargo build --release --locked):
#   docker build --build-arg AGENT_STAGE=prebuilt --target runtime -t tracejob-agent:dev .
# (for arm64: --platform linux/arm64 --build-arg
#  AGENT_BINARY=target/aarch64-unknown-linux-gnu/release/tracejob-agent).
# Base images are pinned to release tags, each published for both platforms; pin them by digest
# in your own registry if you mirror.
ARG AGENT_STAGE=build

# Built on bookworm so the binary needs no newer glibc than the runtime stage has.
FROM --platform=$BUILDPLATFORM docker.io/library/rust:1.95.0-slim-bookworm AS build
# Set by the builder (docker buildx, buildah --platform); unset, the builder's own architecture.
ARG TARGETARCH
WORKDIR /src
RUN arch=${TARGETARCH:-$(dpkg --print-architecture)} \
 && case "$arch" in \
      amd64) triple=x86_64-unknown-linux-gnu; gcc=x86_64-linux-gnu-gcc; cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gcc=aarch64-linux-gnu-gcc; cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      *) echo "tracejob-agent builds for amd64 and arm64, not $arch" >&2; exit 1 ;; \
    esac \
 && if [ "$arch" != "$(dpkg --print-architecture)" ]; then \
      apt-get update && apt-get install -y --no-install-recommends $cross \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && rustup target add "$triple" \
 && printf 'triple=%s\ngcc=%s\n' "$triple" "$gcc" > /target.env
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN . /target.env \
 && TRIPLE=$(echo "$triple" | tr 'a-z-' 'A-Z_') \
 && env "CARGO_TARGET_${TRIPLE}_LINKER=$gcc" "CC_$(echo "$triple" | tr - _)=$gcc" \
      cargo build --release --locked --target "$triple" --bin tracejob-agent \
 && install -m 0755 "target/$triple/release/tracejob-agent" /usr/local/bin/tracejob-agent

# The agent as built on the host (used with --build-arg AGENT_STAGE=prebuilt); AGENT_BINARY names
# another build, for another platform.
FROM scratch AS prebuilt
ARG AGENT_BINARY=target/release/tracejob-agent
COPY ${AGENT_BINARY} /usr/local/bin/tracejob-agent

FROM ${AGENT_STAGE} AS agent

# Debian 13 (trixie) ships bpftrace 0.23, the newest release of its base (amd64 and arm64 alike).
FROM docker.io/library/debian:13.2-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends bpftrace ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=agent /usr/local/bin/tracejob-agent /usr/local/bin/tracejob-agent
# Root: bpftrace loads kernel programs (the DaemonSet runs the container privileged).
USER 0
ENTRYPOINT ["/usr/local/bin/tracejob-agent"]
CMD ["run"]
