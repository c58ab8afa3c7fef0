# Build with cargo, run from a slim Debian image as a non-root user.
FROM rust:1-slim-bookworm AS build
# make: jemalloc (the allocator) is built from C source.
RUN apt-get update && apt-get install -y --no-install-recommends make \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY tests ./tests
RUN cargo build --release --locked --bin sluice

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin sluice \
    && mkdir -p /etc/sluice
COPY --from=build /src/target/release/sluice /usr/local/bin/sluice
COPY pooler.toml /etc/sluice/pooler.toml
USER sluice
EXPOSE 6432
ENTRYPOINT ["/usr/local/bin/sluice", "--config", "/etc/sluice/pooler.toml"]
