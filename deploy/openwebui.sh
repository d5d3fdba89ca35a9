#!/usr/bin/env bash
# `make openwebui`: the real Open WebUI against a gateway on this machine, for a manual check.
# Starts `tutor serve` too when nothing answers at GATEWAY_URL, and stops it on exit.
# Offline: no model downloads (embeddings go through the "openai" engine, i.e. nowhere until
# configured), no Ollama; one local user, no login. See docs/OPENWEBUI.md.
set -euo pipefail

OPENWEBUI_VENV=${OPENWEBUI_VENV:-.venv-openwebui}
TUTOR_BIN=${TUTOR_BIN:-.venv/bin}
GATEWAY_URL=${GATEWAY_URL:-http://127.0.0.1:8000}
OPENWEBUI_PORT=${OPENWEBUI_PORT:-3000}
OPENWEBUI_ENGINE=${OPENWEBUI_ENGINE:-transformers}   # the gateway's engine, if started here

gateway_pid=""
webui_pid=""
cleanup() {
  for pid in $webui_pid $gateway_pid; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT INT TERM

if ! curl -fsS -o /dev/null "$GATEWAY_URL/v1/models"; then
  port=${GATEWAY_URL##*:}
  echo "starting the gateway on port $port ($OPENWEBUI_ENGINE engine)"
  TUTOR_UI=false "$TUTOR_BIN/tutor" serve --engine "$OPENWEBUI_ENGINE" --port "$port" &
  gateway_pid=$!
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$GATEWAY_URL/health" && break
    kill -0 "$gateway_pid" 2>/dev/null || { echo "the gateway exited"; exit 1; }
    sleep 1
  done
fi

export DATA_DIR=${OPENWEBUI_DATA_DIR:-${TUTOR_HOME:-$HOME/.cache/tutor}/openwebui}
mkdir -p "$DATA_DIR"
export OPENAI_API_BASE_URL="$GATEWAY_URL/v1"
export OPENAI_API_KEY=${TUTOR_OPENWEBUI_KEY:-unused}   # a chat key when the gateway has keys on
export ENABLE_OLLAMA_API=false
export OFFLINE_MODE=true HF_HUB_OFFLINE=1 RAG_EMBEDDING_ENGINE=openai
export WEBUI_AUTH=${WEBUI_AUTH:-false}                 # one local user, no sign-up
export WEBUI_SECRET_KEY=${WEBUI_SECRET_KEY:-$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')}
export ANONYMIZED_TELEMETRY=false DO_NOT_TRACK=true SCARF_NO_ANALYTICS=true

echo "Open WebUI on http://127.0.0.1:$OPENWEBUI_PORT (gateway $OPENAI_API_BASE_URL)"
"$OPENWEBUI_VENV/bin/open-webui" serve --host 127.0.0.1 --port "$OPENWEBUI_PORT" &
webui_pid=$!
wait "$webui_pid"
