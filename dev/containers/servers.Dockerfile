# PostgreSQL 15 and Redis 7 from Debian's packages, for running the stack from the images on
# a machine without a registry (tests/images, `skinscreen-images`); never deployed: clusters
# use managed servers or components/in-cluster-servers. One image, two containers:
#   postgres: run as user postgres, with PGPORT set (data in a tmpfs, trust on loopback)
#   redis:    redis-server --port N (no persistence)
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 redis-server \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH
# A throwaway cluster in the container's /tmp on each start: initdb, then the server on
# loopback at PGPORT, trusting local connections (the user is skinscreen).
CMD ["sh", "-c", "initdb --auth=trust --username=skinscreen -D /tmp/pgdata >/dev/null && exec postgres -D /tmp/pgdata -h 127.0.0.1 -p \"$PGPORT\" -k /tmp -c fsync=off -c full_page_writes=off -c max_connections=300"]
