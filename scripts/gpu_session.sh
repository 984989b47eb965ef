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
set -u
MODEL=${MODEL:-/tmp/llama2}
RES=${RES:-/tmp/res}
NSYS=${NSYS:-$(python3 -c 'from sglang_tracing.app.profilers import DEFAULT_NSYS_PATH; print(DEFAULT_NSYS_PATH)')}

step() {
    local name=$1
    shift
    echo "$name start $(date +%T)" >>"$RES/progress.log"
    python3 -m sglang_tracing experiment "$@" --model "$MODEL" --dummy-weights --out "$RES/$name" >"$RES/$name.log" 2>&1
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
            --exclude='model' "$name"
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
