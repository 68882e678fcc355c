# setgate image: built in a Rust image, run from a small Debian one as a non-root user.
FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p setgate \
 && strip target/release/setgate

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin setgate
COPY --from=build /src/target/release/setgate /usr/local/bin/setgate
USER setgate
EXPOSE 5672 9090
ENTRYPOINT ["/usr/local/bin/setgate"]
CMD ["run", "--config", "/etc/setgate/setgate.toml"]
