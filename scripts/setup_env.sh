#!/usr/bin/env bash
# Create a virtual environment that runs real SGLang on CPU, with sglang-tracing installed.
#   bash scripts/setup_env.sh [SGLANG_VERSION=0.5.17] [VENV=.venv]      (idempotent)
# SGLang is installed --no-deps (its pins ask for CUDA torch 2.11); what it imports is listed here.
set -euo pipefail
VER=${1:-0.5.17}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${2:-$ROOT/.venv}
case "$VER" in
  0.5.17) PINS="transformers==5.12.1 xgrammar==0.2.1 openai==2.6.1" ;;
  0.5.23) PINS="transformers==5.19.0 xgrammar==0.2.7 openai==2.8.0" ;;
  *) echo "setup_env.sh: no dependency pins for sglang $VER (known: 0.5.17, 0.5.23)" >&2; exit 2 ;;
esac
step() { echo "setup_env.sh: [$((SECONDS / 60))m$((SECONDS % 60))s] $*"; }
STAMP="$VENV/.sglang-tracing-$VER"
[ -f "$STAMP" ] || step "first run: creating $VENV with SGLang $VER on CPU torch; this usually takes about 5 minutes (later runs reuse it)"
# Debian's Chromium renders the HTML report in the tests (headless): only scripts/test.sh asks for it
if [ "${WITH_CHROMIUM:-0}" = 1 ] && ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  step "installing chromium (apt; the tests render the HTML report with it)"
  { apt-get update -qq && apt-get install -y -qq chromium; } >/dev/null 2>&1 || echo "setup_env.sh: could not install chromium" >&2
fi
if ! command -v tmux >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  step "installing tmux (apt; the tests drive sglang-trace top in a terminal with it)"
  { apt-get update -qq && apt-get install -y -qq tmux; } >/dev/null 2>&1 || echo "setup_env.sh: could not install tmux" >&2
fi
# prefill-decode disaggregation on CPU (tests/test_pd.py): Mooncake's TCP transfer engine links libibverbs
if ! ldconfig -p 2>/dev/null | grep -q libibverbs.so.1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  step "installing libibverbs1 (apt; Mooncake's transfer engine needs it for PD on CPU)"
  { apt-get update -qq && apt-get install -y -qq libibverbs1; } >/dev/null 2>&1 || echo "setup_env.sh: could not install libibverbs1" >&2
fi
pd_packages() {  # Mooncake without CUDA, the router in PD mode and grpcio for its OTLP spans (venvs made before too)
  "$VENV/bin/python" -c "import mooncake.engine, sglang_router, grpc" 2>/dev/null \
    || "$VENV/bin/pip" install -q mooncake-transfer-engine-non-cuda sglang-router grpcio 2>&1 | grep -v "^WARNING: Location" || true
}
if [ -f "$STAMP" ]; then
  pd_packages
  "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT" 2>/dev/null
  "$VENV/bin/python" -c "import textual" 2>/dev/null || "$VENV/bin/pip" install -q textual  # added after some venvs were built
  echo "$VENV ready (sglang $VER)"; exit 0
fi
python3 -m venv "$VENV"
PIP="$VENV/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { "$@" 2>&1 | grep -v -e "^WARNING: Location" -e "^WARNING: Ignoring invalid" -e "requires torch" -e "incompatible" -e "which is not installed" -e "dependency conflicts" -e "^ERROR: pip's dependency resolver" || true; }
# torchvision from PyPI is CUDA-linked: this pair imports together on a CPU-only host.
step "1/4 torch 2.14.1 and torchvision 0.29.1 (the largest download)"
quiet "$PIP" install -q torch==2.14.1 torchvision==0.29.1
CONSTRAINTS=$(mktemp); echo -e "torch==2.14.1\ntorchvision==0.29.1" > "$CONSTRAINTS"
step "2/4 sglang $VER (without its CUDA pins)"
quiet "$PIP" install -q --no-deps "sglang==$VER"
step "3/4 what SGLang imports on CPU, and the tracing, analyzer and test packages"
quiet "$PIP" install -q -c "$CONSTRAINTS" $PINS fastapi uvicorn pyzmq msgspec python-multipart orjson \
  pybase64 setproctitle partial_json_parser interegular aiohttp requests psutil pillow numpy scipy \
  sentencepiece tiktoken tqdm uvloop watchfiles xxhash zstandard einops prometheus-client pydantic \
  packaging IPython nvidia-ml-py easydict distro dill compressed-tensors gguf jsonschema soundfile \
  opentelemetry-sdk opentelemetry-exporter-otlp-json-file opentelemetry-exporter-otlp-proto-http \
  nvtx polars perfetto matplotlib textual pytest
pd_packages
step "4/4 sglang-tracing (editable) and an import check"
quiet "$PIP" install -q --no-deps --no-build-isolation -e "$ROOT"
check=$("$VENV/bin/python" -c "import sglang.launch_server, sglang.srt.managers.scheduler, sglang_tracing.plugin" 2>&1) \
  || { echo "$check" | tail -5 >&2; echo "setup_env.sh: sglang $VER does not import in $VENV" >&2; exit 1; }
touch "$STAMP"
step "$VENV ready (sglang $VER)"
