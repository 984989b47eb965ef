#!/usr/bin/env bash
# SGLang's offline bundles on the GPU host when the working tree (~20 MB) leaves too little of a call's 64 MiB:
# both parts as one stream in three chunks, one chunk carried per device call.
#
# Here (once):  bash /work/shared/gpu-offline/build-bundles.sh /tmp/bundles
#               cat /tmp/bundles/sglang-part1.tar.xz /tmp/bundles/sglang-part2.tar.xz > /tmp/all.bin
#               mkdir -p .gpub0 .gpub1 .gpub2 && split -n 3 -d /tmp/all.bin /tmp/chunk.
#               mv /tmp/chunk.00 .gpub0/; mv /tmp/chunk.01 .gpub1/; mv /tmp/chunk.02 .gpub2/
#               printf '/.gpub0/\n/.gpub1/\n/.gpub2/\n' >> .git/info/exclude
# Calls 1, 2 (carry .gpubN):  mkdir -p /tmp/b && cp .gpubN/chunk.0N /tmp/b/
# Call 3 (carry .gpub2):      PART1_BYTES=<size of sglang-part1.tar.xz> STEPS="layer topov" bash scripts/gpu_setup_chunks.sh
# then collect with `bash scripts/gpu_session.sh collect SECONDS` in later calls (back to back: the host is
# given back after 30 s idle).
set -u
: "${PART1_BYTES:?the size of sglang-part1.tar.xz in bytes}"
cat /tmp/b/chunk.00 /tmp/b/chunk.01 .gpub2/chunk.02 > /tmp/b/all.bin && rm -f /tmp/b/chunk.0*
head -c "$PART1_BYTES" /tmp/b/all.bin > /tmp/b/sglang-part1.tar.xz
tail -c +$((PART1_BYTES + 1)) /tmp/b/all.bin > /tmp/b/sglang-part2.tar.xz && rm /tmp/b/all.bin
T=/tmp/sglang-offline  # what ../shared/gpu-offline/unpack.sh does: both parts into one site folder
mkdir -p "$T" && tar -C "$T" -xJf /tmp/b/sglang-part1.tar.xz && tar -C "$T" -xJf /tmp/b/sglang-part2.tar.xz || exit 1
echo "export PYTHONPATH=$T/site\${PYTHONPATH:+:\$PYTHONPATH} LD_LIBRARY_PATH=$T/nsys-libs\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" > /tmp/env.sh
. /tmp/env.sh
rm -rf /tmp/proj && mkdir -p /tmp/proj
tar --exclude='./.bundle*' --exclude='./.gpub*' --exclude='./.venv*' --exclude=./.git -cf - . | tar -C /tmp/proj -xf -
cd /tmp/proj
python3 -m pip install -q --no-deps --no-build-isolation -e . > /tmp/pip.log 2>&1; echo "pip rc=$?"; tail -3 /tmp/pip.log
python3 -c "from sglang_tracing.models.builder import build_model_dir; build_model_dir('llama-2-7b','/tmp/llama2')" || exit 1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader
STEPS="$STEPS" RES=/tmp/res MODEL=/tmp/llama2 bash /tmp/proj/scripts/gpu_session.sh start
