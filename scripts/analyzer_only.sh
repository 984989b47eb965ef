#!/usr/bin/env bash
# CI: the analyzer-only install (`pip install .`, without SGLang or torch) runs every analyzer command
# on committed examples, and `launch` refuses in one line. The venv is reused while pyproject.toml's
# dependencies are unchanged (the project itself is reinstalled each time), so this step is quick.
#   bash scripts/analyzer_only.sh [VENV=.venv-analyzer-only]
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${1:-$ROOT/.venv-analyzer-only}
cd "$ROOT"
export PIP_DISABLE_PIP_VERSION_CHECK=1
quiet() { "$@" 2>&1 | { grep -v -e "^WARNING: Location" || true; }; return "${PIPESTATUS[0]}"; }
STAMP="$VENV/.deps-$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$STAMP" ]; then
  quiet "$VENV/bin/pip" install -q --no-deps --force-reinstall "$ROOT"
else
  echo "analyzer_only.sh: creating $VENV with the analyzer's dependencies only (about a minute)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  quiet "$VENV/bin/pip" install -q "$ROOT"
  touch "$STAMP"
fi
rm -rf "$ROOT/build"
"$VENV/bin/python" - <<'EOF'
import importlib.util, sys
there = [m for m in ("torch", "sglang", "h11") if importlib.util.find_spec(m)]
sys.exit(f"analyzer_only.sh: {', '.join(there)} importable: not an analyzer-only install" if there else 0)
EOF
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
export SGLANG_TRACE_CACHE_DIR="$OUT/cache"
cd "$OUT"  # the installed package, not the source tree, is what runs
ST="$VENV/bin/sglang-trace"
EX="$ROOT/traces/examples"
run() { echo "analyzer_only.sh: sglang-trace $*"; "$ST" "$@" >/dev/null; }
run --help
run analyze "$EX/h200-llama2-7b-triton" --out "$OUT/analyze"
run requests "$EX/h200-llama2-7b-triton" --out "$OUT/requests"
run perfetto "$EX/h200-llama2-7b-triton" -o "$OUT/run.pftrace"
run diff "$EX/h200-backends/server-triton/trace" "$EX/h200-backends/server-flashinfer/trace" --out "$OUT/diff"
run top "$EX/h200-llama2-7b-triton" --json
echo "analyzer_only.sh: sglang-trace launch (must refuse in one line, exit 2)"
set +e
"$ST" launch --trace-dir "$OUT/launch" -- --model-path m 2>"$OUT/launch.err"
rc=$?
set -e
lines=$(wc -l <"$OUT/launch.err")
if [ "$rc" != 2 ] || [ "$lines" != 1 ]; then
  cat "$OUT/launch.err" >&2
  echo "analyzer_only.sh: launch without SGLang gave exit $rc and $lines stderr lines (want 2 and 1)" >&2
  exit 1
fi
echo "analyzer_only.sh: the analyzer-only install runs"
