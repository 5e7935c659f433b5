# One image with every defacto job binary. Build: docker build -t defacto .
# Run:   docker run --rm -v "$PWD/examples/showcase:/defs" defacto --config /defs validate

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p defacto-jobs --bins \
 && mkdir -p /out \
 && cp target/release/defacto /out/ \
 && for job in normalize build tick export; do ln -s defacto /out/$job; done

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /work --create-home defacto
COPY --from=build /out/ /usr/local/bin/
USER defacto
WORKDIR /work
ENTRYPOINT ["defacto"]
CMD ["--help"]
