# syntax=docker/dockerfile:1
# The CPU image: `mirrorplay` and `mirrorplay-worker` in /usr/local/bin, the example configs and
# models in /opt/mirrorplay (the working directory, so `configs/...` and `examples/...` resolve
# as they do in the repository), run as the unprivileged user `mirrorplay` (uid/gid 10001).
#
#   docker build -t mirrorplay:0.1.0 .
#   podman build -t mirrorplay:0.1.0 .          # or: buildah bud -t mirrorplay:0.1.0 .
#
# docs/kubernetes.md shows how a cluster gets it (a registry, or `kind load`/`k3d image import`).

ARG RUST_VERSION=1.88
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY worker worker
COPY coordinator coordinator
# `mirrorplay plot` embeds its font.
COPY assets/fonts assets/fonts
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin mirrorplay --bin mirrorplay-worker \
    && mkdir -p /out \
    && cp target/release/mirrorplay target/release/mirrorplay-worker /out/

FROM docker.io/library/debian:${DEBIAN_RELEASE}-slim
# CA roots for object stores and https:// coordinators.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 mirrorplay \
    && useradd --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin mirrorplay
COPY --from=build /out/mirrorplay /out/mirrorplay-worker /usr/local/bin/
WORKDIR /opt/mirrorplay
COPY configs configs
COPY examples examples
USER 10001:10001
CMD ["mirrorplay", "--help"]
