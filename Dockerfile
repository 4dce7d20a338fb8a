# tracejob-agent image: the agent, and bpftrace from the distribution.
#   docker build -t REGISTRY/tracejob-agent:0.1.0 . && docker push REGISTRY/tracejob-agent:0.1.0
# Base images are pinned to release tags; pin them by digest in your own registry if you mirror.

# Built on bookworm so the binary needs no newer glibc than the runtime stage has.
FROM docker.io/library/rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin tracejob-agent \
 && install -m 0755 target/release/tracejob-agent /usr/local/bin/tracejob-agent

# Debian 13 (trixie) ships bpftrace 0.23, the newest release of its base.
FROM docker.io/library/debian:13.2-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends bpftrace ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /usr/local/bin/tracejob-agent /usr/local/bin/tracejob-agent
# Root: bpftrace loads kernel programs (the DaemonSet runs the container privileged).
USER 0
ENTRYPOINT ["/usr/local/bin/tracejob-agent"]
CMD ["run"]
