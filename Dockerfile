# syntax=docker/dockerfile:1
# Parley in a container: built with the Swift image, run from a slim Ubuntu with only the
# binary, its web client and CA certificates (for Web Push and TLS to Redis and PostgreSQL).
#
#   docker build -t parley .
#   docker run -p 8080:8080 -p 50051:50051 -v parley-data:/var/lib/parley parley
#
# The server runs as an unprivileged user and keeps its SQLite history (and files) in
# /var/lib/parley; configure it with PARLEY_* variables (README, "Configure it").

ARG SWIFT_VERSION=6.3
ARG UBUNTU=noble

FROM swift:${SWIFT_VERSION}-${UBUNTU} AS build
WORKDIR /src
# Dependencies first: they are fetched again only when the manifest changes.
COPY Package.swift ./
RUN swift package resolve
COPY . .
RUN swift build -c release --product parley --static-swift-stdlib \
    && mkdir -p /out \
    && cp "$(swift build -c release --show-bin-path)/parley" /out/ \
    && cp -R "$(swift build -c release --show-bin-path)/parley_ParleyServer.resources" /out/

FROM ubuntu:${UBUNTU}
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /var/lib/parley --shell /usr/sbin/nologin parley \
    && mkdir -p /var/lib/parley && chown parley:parley /var/lib/parley
# The web client is looked up next to the binary.
COPY --from=build /out/ /usr/local/bin/
USER parley
WORKDIR /var/lib/parley
ENV PARLEY_DATA_DIR=/var/lib/parley
VOLUME ["/var/lib/parley"]
EXPOSE 8080 50051
# SIGTERM drains: sessions are told to reconnect elsewhere, queued messages are committed.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS http://127.0.0.1:${PORT:-8080}/healthz >/dev/null || exit 1
ENTRYPOINT ["/usr/local/bin/parley"]
CMD ["serve"]
