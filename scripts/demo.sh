#!/usr/bin/env bash
# The main job on its embedded default, set-up included: a tiny traced SGLang server on CPU,
# a few requests, then a new trace dir (traces/demo/<timestamp>), its reports and a Perfetto file.
# Arguments go to `sglang-trace demo`. The first run sets up .venv (about 5 minutes, with progress).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bash "$ROOT/scripts/setup_env.sh" 0.5.17 "$ROOT/.venv"
cd "$ROOT"
exec "$ROOT/.venv/bin/sglang-trace" demo "$@"
