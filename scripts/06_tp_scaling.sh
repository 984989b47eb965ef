#!/usr/bin/env bash
# Experiment 6: bash scripts/06_tp_scaling.sh [--tp-sizes 1,2,4,8] [--gpus "0;0,1;0,1,2,3;0,1,2,3,4,5,6,7"] [...]
set -euo pipefail
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
exec python3 -m sglang_tracing experiment tp "$@"
