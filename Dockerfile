# tracejob-agent image: the agent, and bpftrace from the distribution.
#   docker build -t REGISTRY/tracejob-agent:0.1.0 . && docker push REGISTRY/tracejob-agent:0.1.0
# With an agent built on the host instead (cargo build --release --locked):
#   docker build --build-arg AGENT_STAGE=prebuilt --target runtime -t tracejob-agent:dev .
# Base images are pinned to release tags; pin them by digest in your own registry if you mirror.
ARG AGENT_STAGE=build

# Built on bookworm so the binary needs no newer glibc than the runtime stage has.
FROM docker.io/library/rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin tracejob-agent \
 && install -m 0755 target/release/tracejob-agent /usr/local/bin/tracejob-agent

# The agent as built on the host (used with --build-arg AGENT_STAGE=prebuilt).
FROM scratch AS prebuilt
COPY target/release/tracejob-agent /usr/local/bin/tracejob-agent

FROM ${AGENT_STAGE} AS agent

# Debian 13 (trixie) ships bpftrace 0.23, the newest release of its base.
FROM docker.io/library/debian:13.2-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends bpftrace ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=agent /usr/local/bin/tracejob-agent /usr/local/bin/tracejob-agent
# Root: bpftrace loads kernel programs (the DaemonSet runs the container privileged).
USER 0
ENTRYPOINT ["/usr/local/bin/tracejob-agent"]
CMD ["run"]
