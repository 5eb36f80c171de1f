# syntax=docker/dockerfile:1
# sidecar-proxy container image: build with `docker build -t sidecar-proxy:0.1.0 .`
#
# Both stages use the same base image on purpose: the venv built in the first stage points at
# that image's /usr/local/bin/python3, so the final stage can copy the venv as it is.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# setup.py compiles the data path with mypyc: a C compiler here (the image already has Python's
# headers), never in the final stage, which gets only the venv. Unpinned on purpose: libc6-dev
# must match the base image's libc6, whichever Debian point release that is.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
# .dockerignore lets in only pyproject.toml, setup.py, the README, the licence and src/.
COPY . .
# Every dependency ships manylinux wheels for CPython 3.11. SIDECAR_PROXY_COMPILE=1 fails the
# build rather than fall back to pure Python, and --version shows "compiled" in the build log.
# --compile writes the .pyc files now: the running container has a read-only root filesystem
# (and PYTHONDONTWRITEBYTECODE), so without them every start would compile from source.
RUN python -m venv /opt/sidecar \
    && SIDECAR_PROXY_COMPILE=1 pip wheel --no-deps --wheel-dir /wheels . \
    && /opt/sidecar/bin/pip install --compile /wheels/*.whl \
    && /opt/sidecar/bin/sidecar-proxy --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sidecar-proxy" \
      org.opencontainers.image.description="HTTP/1.1 sidecar proxy: streaming, retries, circuit breaker, metrics, clean shutdown" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH="/opt/sidecar/bin:${PATH}"
# A named account for uid/gid 1000, so tools inside the container show a name rather than
# "I have no name!"; USER below stays numeric so Kubernetes' runAsNonRoot can verify it.
RUN groupadd --system --gid 1000 sidecar \
    && useradd --system --uid 1000 --gid 1000 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin sidecar
COPY --from=builder /opt/sidecar /opt/sidecar
USER 1000:1000
# 8080: proxied traffic (plus /health and /ready unless HEALTH_ON_PROXY_PORT=false);
# 9090: /metrics, /health and /ready.
EXPOSE 8080 9090
# Probes the admin port: its /health is always there, while the proxy port's can be switched
# off with HEALTH_ON_PROXY_PORT=false. Python's urllib, because the slim image has neither curl
# nor wget; urlopen raises on any non-2xx answer or refused connection, so the exit code is 1.
# Kubernetes ignores HEALTHCHECK and uses the probes in deploy/kubernetes instead.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('METRICS_PORT', '9090'), timeout=2)"]
# SIGTERM is Docker's and Kubernetes' default stop signal, and the one the sidecar drains on.
STOPSIGNAL SIGTERM
# Exec form: sidecar-proxy is PID 1 and receives SIGTERM itself; there is no shell in between.
# No tini: the sidecar installs its own SIGTERM/SIGINT handlers (PID 1 gets no default signal
# actions) and starts no child processes, so there are no zombies to reap.
ENTRYPOINT ["sidecar-proxy"]
CMD ["run"]
