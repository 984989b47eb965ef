#!/usr/bin/env bash
# The H200 recordings of traces/examples, as one unattended run (the device tool allows 10 minutes a
# call, so the run goes on in its own session and later calls collect what has finished).
#
#   bash scripts/gpu_session.sh start            # on the GPU host: cwd /tmp, bundles unpacked
#   bash scripts/gpu_session.sh collect SECONDS  # wait up to SECONDS for the run, pack results into $OUT
#   STEPS="tp" bash scripts/gpu_session.sh start         # some steps only (default: backends nsys ncu)
#
# Steps, one server at a time (SGLang sizes its KV pool from the memory free at start):
#   backends  experiment 3: flashinfer vs triton, batch {1,8,32} x prompt {512,2048,8192} -> 128
#   nsys      the traced triton server under Nsight Systems, layer-level NVTX (eager prefill, so the
#             per-layer ranges show), 4 requests 512 -> 32
#   ncu       the traced flashinfer server under Nsight Compute, attention kernels, 512 -> 4
#   tp        experiment 6 on a host with 2 GPUs: TP=1 (GPU 0) and TP=2 (GPUs 0,1), triton,
#             64 requests 512 -> 128 at concurrency 32, SGLang's profiler on both ranks after each
# Runs still owed to the issues (benchmarks/README.md and docs/ say what each writes; ~5-9 min each):
#   features  HiCache and NGRAM traced vs untraced, equal pools (issue 24): benchmarks/gpu_features.py
#   specov    NGRAM traced vs untraced only, 10 rounds of 64 requests, each server on its own cores (~4 min)
#   baseline  the plan's experiment 1 in one command, with its profiled pass (issue 21)
#   soak      500 concurrent, tail-based keep, memory over time (issue 23); startup, volume likewise
#   layer     --trace-level layer's batch-1 TTFT, eager prefill in every arm (issue 26); topov: top attached
# The project must be pip-installed there (pip install --no-deps --no-build-isolation -e .): traced servers
# find the plugin through its entry point.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODEL=${MODEL:-/tmp/llama2}
RES=${RES:-/tmp/res}
NSYS=${NSYS:-$(python3 -c 'from sglang_tracing.app.profilers import DEFAULT_NSYS_PATH; print(DEFAULT_NSYS_PATH)')}
# Pools that fit three 7B servers (overhead.py) or two (soak.py) on one card: an H200 (141 GB) or an H100 (80 GB)
GPU_MIB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
if [ "${GPU_MIB:-0}" -gt 100000 ]; then OVERHEAD_POOL=45000 SOAK_POOL=80000; else OVERHEAD_POOL=12000 SOAK_POOL=30000; fi

step() {
    local name=$1
    shift
    echo "$name start $(date +%T)" >>"$RES/progress.log"
    python3 -m sglang_tracing experiment "$@" --model "$MODEL" --dummy-weights --out "$RES/$name" >"$RES/$name.log" 2>&1
    echo "$name rc=$? end $(date +%T)" >>"$RES/progress.log"
}

bench() {  # a benchmark script: NAME SCRIPT ARGS...; its results go under $RES/NAME
    local name=$1
    shift
    mkdir -p "$RES/$name"
    local script=$ROOT/$1
    shift
    echo "$name start $(date +%T)" >>"$RES/progress.log"
    python3 "$script" "$@" >"$RES/$name.log" 2>&1
    echo "$name rc=$? end $(date +%T)" >>"$RES/progress.log"
}

run_step() {
    case "$1" in
    backends)  # Llama-2's 4096-token context is raised for the 8192-token cells (dummy weights: speed is what counts)
        SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1 step backends backends --backends flashinfer,triton \
            --output-len 128 --sglang-args "--mem-fraction-static 0.85 --context-length 8448" \
            --trace-args "--profile-steps 1:3" ;;
    nsys)
        step nsys nsys --backend triton --tool-path "$NSYS" --num-requests 4 --prompt-len 512 --output-len 32 \
            --sglang-args "--mem-fraction-static 0.5 --disable-prefill-cuda-graph" --trace-args "--trace-level layer" ;;
    ncu)
        step ncu ncu --backend flashinfer --num-requests 1 --prompt-len 512 --output-len 4 \
            --sglang-args "--mem-fraction-static 0.5" ;;
    tp)
        step tp tp --tp-sizes 1,2 --gpus "0;0,1" --num-requests 64 --concurrency 32 --prompt-len 512 \
            --output-len 128 --sglang-args "--attention-backend triton --mem-fraction-static 0.8" ;;
    features) bench features benchmarks/gpu_features.py --model "$MODEL" --out "$RES/features" ;;
    specov) bench specov benchmarks/gpu_features.py --model "$MODEL" --out "$RES/specov" --phases spec \
        --spec-servers spec-traced,spec-untraced --spec-requests 64 --rounds 10 --pin --budget-s 270 ;;
    baseline)
        step baseline baseline --num-requests 100 --prompt-len 512 --output-len 128 \
            --sglang-args "--attention-backend triton" ;;
    soak) bench soak benchmarks/soak.py --model "$MODEL" --duration 40 --phase 20 --warmup 5 --concurrency 500 \
        --max-total-tokens $SOAK_POOL --mem-fraction 0.85 \
        --extra "--attention-backend triton --disable-piecewise-cuda-graph" --keep "$RES/soak-keep" --out "$RES/soak" ;;
    startup) bench startup benchmarks/startup.py --model "$MODEL" --repeats 1 --out "$RES/startup/startup.json" ;;
    volume) bench volume benchmarks/volume.py live --model "$MODEL" --requests 512 --concurrency 64 \
        --prompt-len 512 --output-len 128 --keep "$RES/volume-keep" --out "$RES/volume/volume.json" ;;
    layer)  # 5 rounds x 8 batch-1 TTFTs (8 tokens out: a sample costs 0.1 s, not 0.8 s); idle servers sleep
        # instead of spinning a core beside the one measured; then the per-sample breakdown from the traces
        bench layer benchmarks/overhead.py --model "$MODEL" --configs traced,traced-layer,untraced --rounds 5 \
            --batch1-samples 8 --batch1-output-len 8 --max-total-tokens $OVERHEAD_POOL \
            --extra "--attention-backend triton --disable-prefill-cuda-graph --sleep-on-idle" \
            --out "$RES/layer/layer-cost.json" --keep "$RES/layer-keep"
        python3 "$ROOT/benchmarks/batch1_breakdown.py" "$RES/layer/layer-cost.json" "$RES/layer-keep" \
            >"$RES/layer/batch1.txt" 2>&1 ;;
    topov) bench topov benchmarks/overhead.py --model "$MODEL" --configs traced,traced-top,untraced --rounds 3 \
        --batch1-output-len 8 --max-total-tokens $OVERHEAD_POOL \
        --extra "--attention-backend triton --disable-prefill-cuda-graph --sleep-on-idle" \
        --out "$RES/topov/top-overhead.json" --keep "$RES/topov-keep" ;;
    *) echo "unknown step $1" >>"$RES/progress.log" ;;
    esac
}

run_all() {
    for s in ${STEPS:-backends nsys ncu}; do run_step "$s"; done
    echo "all done $(date +%T)" >>"$RES/progress.log"
}

collect() {
    local deadline=$(($(date +%s) + $1))
    while [ "$(date +%s)" -lt "$deadline" ] && ! grep -q "all done" "$RES/progress.log" 2>/dev/null; do
        sleep 5
    done
    cat "$RES/progress.log"
    nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader || true
    cp "$RES"/*.log "$OUT"/ 2>/dev/null
    for d in "$RES"/*/; do
        local name
        name=$(basename "$d")
        grep -q "^$name rc=" "$RES/progress.log" || continue
        find "$d" -name '*.sqlite' -exec gzip -kf {} \;
        tar czf "$OUT/$name.tgz" -C "$RES" --exclude='*.nsys-rep' --exclude='*.sqlite' \
            --exclude='model' --exclude='*-keep' "$name"
    done
    ls -la "$OUT"
}

case "${1:-}" in
    start)
        mkdir -p "$RES"
        setsid nohup bash "$0" run >"$RES/driver.log" 2>&1 </dev/null &
        echo "started; progress in $RES/progress.log"
        ;;
    run) run_all ;;
    collect) collect "${2:-540}" ;;
    *) echo "usage: $0 start | collect SECONDS" >&2; exit 2 ;;
esac
