#!/usr/bin/env bash
# Experiment 6: bash scripts/06_tp_scaling.sh [--tp-sizes 1,2,4,8] [--gpus "0;0,1;0,1,2,3;0,1,2,3,4,5,6,7"] [...]
set -euo pipefail
# the experiment turns NVLink multicast off in every server it starts (config.MULTICAST_OFF_ENV)
exec python3 -m sglang_tracing experiment tp "$@"
