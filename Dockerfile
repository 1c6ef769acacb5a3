# Build stage: compile the release binary.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
COPY broker.toml ./
COPY examples ./examples
RUN cargo build --release --bin leveret

# Runtime stage: just the binary, on a small base.
FROM debian:bookworm-slim
RUN useradd --system --home /var/lib/leveret leveret \
    && mkdir -p /var/lib/leveret && chown leveret /var/lib/leveret
COPY --from=build /src/target/release/leveret /usr/local/bin/leveret
# In a container clients never come from loopback: let guest in from anywhere,
# as RabbitMQ's official image does. Change the password in production.
RUN mkdir -p /etc/leveret \
    && leveret default-config | sed 's/^loopback_users = .*/loopback_users = []/' > /etc/leveret/broker.toml
USER leveret
VOLUME /var/lib/leveret
EXPOSE 5672 15672
ENTRYPOINT ["leveret", "serve", "--config", "/etc/leveret/broker.toml", "--data-dir", "/var/lib/leveret", "--mgmt-listen", "0.0.0.0:15672"]
