# One image with every defacto job: the `defacto` binary, linked as normalize, build, tick and
# export (invoked under one of those names it runs that job). Build and run:
#   docker build -t defacto .
#   docker run --rm -v "$PWD/examples/showcase:/defs:ro" defacto --config /defs validate
# Kubernetes (infra/) and Airflow's KubernetesPodOperator (dags/airflow) pass a job's
# arguments as the container's args: the entrypoint is `defacto`.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out
# of the cached target directory, since a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p defacto-jobs --bins \
 && mkdir -p /out \
 && cp target/release/defacto /out/ \
 && for job in normalize build tick export; do ln -s defacto "/out/$job"; done

FROM debian:bookworm-slim
# CA certificates for TLS to S3 and Postgres. Not pinned to a version: the Debian release
# pins them, and security updates must not break the build (.hadolint.yaml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 defacto \
 && useradd --system --uid 10001 --gid 10001 --home-dir /work --create-home defacto
COPY --from=build /out/ /usr/local/bin/
# Numeric, so that Kubernetes can enforce runAsNonRoot without resolving the name.
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["defacto"]
CMD ["--help"]
