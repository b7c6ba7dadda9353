# syntax=docker/dockerfile:1
#
# pgtenant container image. Not exercised by CI (Docker cannot run on our machines); see
# deploy/README.md.
#
#   docker build -t pgtenant .                        # the runtime image (last stage)
#   docker run -v ./pgtenant.toml:/etc/pgtenant/pgtenant.toml:ro -p 6432:6432 -p 9930:9930 pgtenant
#
# The configuration is not baked in: mount it at /etc/pgtenant/pgtenant.toml. The HEALTHCHECK
# needs `metrics_listen` on port 9930 of 127.0.0.1 or 0.0.0.0 (PGTENANT_HEALTH_PORT changes the
# port it probes).

# --- build -------------------------------------------------------------------------------
FROM rust:1.95-bookworm AS build
# pg_query (the SQL guard's parser) generates its bindings with bindgen, which needs libclang.
# Build stage only, so unpinned Debian packages are acceptable here.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends clang libclang-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The caches keep the registry and incremental artefacts between builds; the binary is copied
# out of the cache mount so that the next stage can use it.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgtenant \
    && install -D -m 0755 target/release/pgtenant /out/pgtenant

# --- demo client (docker-compose.yml only) -----------------------------------------------
# psql from the PostgreSQL image plus the pgtenant binary, which mints the demo tokens with
# the compose configuration's secret. Both images are Debian bookworm, so the binary runs.
FROM postgres:15-bookworm AS demo-client
COPY --from=build /out/pgtenant /usr/local/bin/pgtenant
COPY docker/demo-client.sh /usr/local/bin/pgtenant-demo-client
# The image's postgres user (uid/gid 999), numeric so that it resolves on any host.
USER 999:999
ENTRYPOINT ["/usr/local/bin/pgtenant-demo-client"]

# --- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
RUN groupadd --system --gid 10001 pgtenant \
    && useradd --system --uid 10001 --gid pgtenant --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin pgtenant \
    && mkdir -p /etc/pgtenant
COPY --from=build /out/pgtenant /usr/local/bin/pgtenant
COPY docker/healthcheck.sh /usr/local/bin/pgtenant-healthcheck
# Numeric user, so that Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 10001:10001
EXPOSE 6432 9930
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/pgtenant-healthcheck"]
# SIGTERM drains: stop accepting, let transactions in flight finish (up to 30 s), exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pgtenant"]
CMD ["--config", "/etc/pgtenant/pgtenant.toml"]
