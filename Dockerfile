# presenced in a container: the one-file binary of scripts/build-binary on a
# slim Debian, run as an unprivileged user.
#
#   docker build -t presenced .
#   docker run -p 8085:8085 -p 8086:8086 -e PRESENCED_ADMIN_TOKEN=change-me presenced
#
# Every option comes from the environment (PRESENCED_<OPTION>), e.g.
# -e PRESENCED_REDIS_URL=redis://redis:6379/0. The admin endpoint listens on
# all interfaces here (for Prometheus), which requires PRESENCED_ADMIN_TOKEN.

# ---- build: the same script CI runs
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY presenced ./presenced
COPY scripts/build-binary ./scripts/
RUN python -m venv .venv && scripts/build-binary

# ---- run: no Python, no venv; the binary carries them
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin presenced
COPY --from=build /src/dist/presenced /usr/local/bin/presenced
USER presenced
ENV PRESENCED_HOST=0.0.0.0 \
    PRESENCED_ADMIN_HOST=0.0.0.0 \
    PRESENCED_LOG_FORMAT=json \
    TMPDIR=/tmp
EXPOSE 8085 8086
# Ready = /readyz answers 200 (`presenced status` exits 0); during start-up
# it says what it waits for, e.g. "starting: waiting for Redis".
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["presenced", "status", "--timeout", "4"]
# SIGTERM (docker stop) closes every connection with 1001 and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["presenced"]
CMD ["serve"]
