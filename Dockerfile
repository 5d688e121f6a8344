# ---- build ----
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build

# Dependencies first, against stub sources, so this layer is reused while only src/ changes.
# (The slim image already has gcc, which the bundled SQLite and ring need; TLS is rustls,
# so no OpenSSL.)
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The crate itself. It embeds migrations/ (sqlx::migrate!, build.rs tells cargo so) and
# openapi.yaml (include_str!).
COPY build.rs ./
COPY migrations ./migrations
COPY openapi.yaml ./
COPY src ./src
# Newer than the stub build, whatever mtimes COPY kept, so cargo rebuilds the crate.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/connection-registry /usr/local/bin/connection-registry

# ---- run ----
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 registry \
    && useradd --system --uid 10001 --gid registry --home-dir /app --no-create-home registry \
    && mkdir -p /app/data \
    && chown -R registry:registry /app
COPY --from=builder /usr/local/bin/connection-registry /usr/local/bin/connection-registry

USER 10001:10001
# Without DATABASE_URL the embedded SQLite database and its master key go to /app/data
# (owned by the user, so a named volume mounted there is writable).
WORKDIR /app
ENV REGISTRY_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/connection-registry"]
CMD ["serve"]
