# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
# The image's binary has no debug info and no symbols; Cargo.toml's release
# profile keeps `debug = 1` for profiling benchmarks, so this is set here only.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=symbols

# Dependencies first, built against empty crates: this layer is rebuilt only
# when a Cargo.toml or Cargo.lock changes, not on every source edit.
COPY Cargo.toml Cargo.lock ./
# etcd-client with its generated gRPC code (Cargo.toml's [patch.crates-io]).
COPY vendor ./vendor
COPY crates/protocol/Cargo.toml crates/protocol/
COPY crates/ctl/Cargo.toml crates/ctl/
COPY crates/perf/Cargo.toml crates/perf/
RUN for crate in . crates/protocol crates/ctl crates/perf; do \
        mkdir -p "$crate/src" && touch "$crate/src/lib.rs"; \
    done \
    && echo 'fn main() {}' > src/main.rs \
    && cargo build --release --bin leveret \
    && rm -rf src crates/*/src

# Then the sources. COPY keeps their modification times, which may be older
# than the empty crates' build: touching the crate roots makes Cargo rebuild
# the four workspace crates (and nothing else).
COPY broker.toml ./
COPY src ./src
COPY crates ./crates
RUN touch src/main.rs src/lib.rs crates/*/src/lib.rs \
    && cargo build --release --bin leveret

# Runtime stage: just the binary, on a small base, as an unprivileged user.
FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/leveret --shell /usr/sbin/nologin leveret \
    && mkdir -p /var/lib/leveret \
    && chown leveret:leveret /var/lib/leveret
COPY --from=build /src/target/release/leveret /usr/local/bin/leveret
# Settings as environment variables (LEVERET_<SECTION>_<KEY>, see broker.toml),
# so `docker run -e` overrides any of them. In a container clients never come
# from loopback: the default user may connect from anywhere, as in RabbitMQ's
# image; set LEVERET_DEFAULT_USER and LEVERET_DEFAULT_PASS in production.
ENV LEVERET_SERVER_DATA_DIR=/var/lib/leveret \
    LEVERET_SERVER_MGMT_LISTEN=0.0.0.0:15672 \
    LEVERET_AUTH_LOOPBACK_USERS=[]
USER leveret
VOLUME /var/lib/leveret
EXPOSE 5672 15672
# The binary checks itself through the management API (no curl in the
# image): exit 0 with "ok", 1 on an alarm or when the API does not answer.
# LEVERET_USER / LEVERET_PASSWORD name another user for it.
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s --retries=3 \
    CMD leveret ctl --user "${LEVERET_USER:-${LEVERET_DEFAULT_USER:-guest}}" \
        --password "${LEVERET_PASSWORD:-${LEVERET_DEFAULT_PASS:-guest}}" health
ENTRYPOINT ["leveret", "serve"]
