#!/usr/bin/env bash
# The test suite, set-up included: the analyzer-only install (no SGLang, no torch) runs its commands,
# then real SGLang 0.5.17 on CPU (full suite), then SGLang 0.5.23 (the end-to-end server tests, PD included).
# Extra arguments go to pytest. Chromium (apt) is installed for the HTML rendering tests.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export WITH_CHROMIUM=1
bash scripts/analyzer_only.sh  # pip install . without SGLang or torch: every analyzer command runs
bash scripts/setup_env.sh 0.5.17 "$ROOT/.venv"
"$ROOT/.venv/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
if [ "${SKIP_SGLANG_0523:-0}" != "1" ]; then
  bash scripts/setup_env.sh 0.5.23 "$ROOT/.venv-0.5.23"
  "$ROOT/.venv-0.5.23/bin/python" -m pytest -q -p no:cacheprovider -m server tests/test_traced_server.py \
    tests/test_pd.py "$@"
fi
