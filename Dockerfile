# meshlet: the agent, MLServer (scikit-learn, XGBoost and LightGBM runtimes)
# and Triton (from the nvidia-pytriton wheel) in one image, on Debian's
# Python 3.11. Build it with scripts/build-image (podman, or docker with
# BuildKit, the default since Docker 23: RUN --mount needs it).
#
# The builder stage makes the virtualenv; the final stage gets only that
# virtualenv and the few Debian packages it runs on: no compilers, no pip cache,
# no source tree. It runs as uid 10001 on a read-only root, writing only to
# /var/lib/meshlet (data), /var/cache/meshlet (node cache) and /tmp.

ARG BASE_IMAGE=debian:bookworm-slim

# --- builder: the virtualenv ----------------------------------------------
FROM ${BASE_IMAGE} AS builder
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/meshlet/venv
ENV PATH=/opt/meshlet/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Package index settings of the machine that builds (scripts/build-image passes
# the host's http(s) indexes; empty means pip's default). They stay in this
# stage. A host whose downloads go through a certificate authority of its own
# passes its CA bundle as the secret pip-ca: mounted for the download only,
# never stored in a layer.
ARG PIP_INDEX_URL=""
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_TRUSTED_HOST=""
ARG PIP_DEFAULT_TIMEOUT=120
# MLServer runtimes beyond meshlet's own dependencies (which bring
# mlserver-sklearn), at MLServer's version.
ARG MLSERVER_RUNTIMES="mlserver-lightgbm==1.7.1"
# XGBoost's: mlserver-xgboost goes in without its declared dependencies
# (MLServer and xgboost), the XGBoost build from XGBOOST: xgboost-cpu (~5 MB),
# or xgboost, which adds CUDA kernels and NCCL (~700 MB) that MLServer models,
# served on the CPU, never use. xgboost-cpu is the same `xgboost` module under
# another distribution name.
ARG MLSERVER_XGBOOST="mlserver-xgboost==1.7.1"
ARG XGBOOST=xgboost-cpu

# Dependencies first, from pyproject.toml alone (an empty placeholder project),
# so a change to the code does not download them again. setuptools goes into
# the virtualenv so the next step builds meshlet offline.
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip-ca \
    set -eu; \
    [ -n "$PIP_INDEX_URL" ] || unset PIP_INDEX_URL; \
    [ -n "$PIP_EXTRA_INDEX_URL" ] || unset PIP_EXTRA_INDEX_URL; \
    [ -n "$PIP_TRUSTED_HOST" ] || unset PIP_TRUSTED_HOST; \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi; \
    touch README.md; \
    pip install -q '.[triton]' $MLSERVER_RUNTIMES "$XGBOOST" 'setuptools>=68'; \
    pip install -q --no-deps $MLSERVER_XGBOOST; \
    pip uninstall -q -y meshlet; \
    rm -rf /src/*

# Then meshlet itself (what .dockerignore lets in), without the network.
COPY . ./
RUN pip install -q --no-deps --no-index --no-build-isolation . \
    && meshlet --help >/dev/null \
    && { pip check || true; } \
       | grep -v -e '^No broken requirements' \
                 -e '^mlserver-xgboost .* requires xgboost, which is not installed' \
       | { ! grep .; }

# --- final: what runs --------------------------------------------------------
FROM ${BASE_IMAGE}
ARG DEBIAN_FRONTEND=noninteractive
# python3.11: the interpreter the virtualenv links to; libpython3.11: Triton's
# Python-backend stub links to it; libgomp1: LightGBM (and XGBoost) need
# OpenMP; tini: PID 1; ca-certificates: https and s3 model storage.
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends \
         python3.11 libpython3.11 libgomp1 tini ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && groupadd --gid 10001 meshlet \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /var/lib/meshlet \
         --no-create-home --shell /usr/sbin/nologin meshlet \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/meshlet /var/cache/meshlet

COPY --from=builder /opt/meshlet/venv /opt/meshlet/venv

ENV PATH=/opt/meshlet/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MESHLET_DATA_DIR=/var/lib/meshlet \
    MESHLET_CACHE_DIR=/var/cache/meshlet
# Fails the build here, not at a model's first load, when a runtime's shared
# library is missing from this stage (writes nothing: no bytecode).
RUN python3 -c "import lightgbm, xgboost, mlserver_lightgbm, mlserver_sklearn, mlserver_xgboost" \
    && triton=/opt/meshlet/venv/lib/python3.11/site-packages/pytriton/tritonserver \
    && ! ldd "$triton/bin/tritonserver" "$triton/python_backend_stubs/3.11/triton_python_backend_stub" \
         | grep 'not found'
VOLUME ["/var/lib/meshlet", "/var/cache/meshlet"]
WORKDIR /var/lib/meshlet
USER 10001:10001
# gRPC (KServe v2, ModelMesh), peer port, HTTP metrics and health.
EXPOSE 8033 8034 2112
# /healthz on the metrics port (MESHLET_METRICS_PORT when set); no curl here.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MESHLET_METRICS_PORT', '2112'), timeout=4)"]
# tini as PID 1 reaps orphans and passes SIGTERM on; arguments go to `meshlet serve`.
ENTRYPOINT ["tini", "--", "meshlet", "serve"]
CMD []

# Last, so a new revision rebuilds no layer above.
ARG VERSION=unknown
ARG REVISION=unknown
ARG SOURCE=https://github.com/meshlet/meshlet
LABEL org.opencontainers.image.title="meshlet" \
      org.opencontainers.image.description="Per-node model-serving agent: many models packed into MLServer and Triton behind one KServe v2 gRPC endpoint" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
