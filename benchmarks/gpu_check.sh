#!/usr/bin/env bash
# The one script a GPU session runs first: the headline figures of the two real-scale issues, in
# order of value, within one device call (BUDGET seconds in all, default 540; a call may run 600).
#
#     bash benchmarks/device_wheels.sh       # here, once: craft's missing dependencies as wheels
#     run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# 1. benchmarks/gpt_speed.py --preset gpt2_small: craft vs nanoGPT's loop: tokens/s, MFU, peak memory, loss
# 2. tests/test_step_cuda.py: craft's CUDA step (parity with eager, donated GPT steps, no host sync, CUDA graphs)
# 3. benchmarks/vision_speed.py: the ResNet-18 step at 224 px, bf16, channels-last, craft vs the imperative loop
# 4. the plain-torch donation reproduction (no craft): one _foreach_copy_ back into the inputs (races,
#    docs/gpu.md) against one copy_ per tensor (as craft), and pytorch#198280's and #176591's cases
# Each part has its own cap, cut to what is left of BUDGET; a part that fails or times out does not
# stop the next. The log also goes to $OUT/gpu_check.log when $OUT is set (the device runner's folder).
set -u
cd "$(dirname "$0")/.."
exec > >(tee "${OUT:-/tmp}/gpu_check.log") 2>&1
source benchmarks/device_env.sh
export PYTHONUNBUFFERED=1
BUDGET="${BUDGET:-540}"
STEPS="${STEPS:-200}"

section() { printf '\n===== %s (%s) =====\n' "$1" "$(date -u +%H:%M:%S)"; }
part() {  # part CAP NAME COMMAND...: COMMAND with at most CAP seconds, and no more than BUDGET has left
    local cap=$1 name=$2 left=$((BUDGET - SECONDS))
    shift 2
    if ((left < 30)); then section "$name: skipped, ${BUDGET}s budget spent"; return; fi
    ((cap > left)) && cap=$left
    section "$name (at most ${cap}s)"
    timeout "$cap" "$@" || echo "exit status $?"
}

section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

part 250 "1. gpt_speed --preset gpt2_small --device cuda ($STEPS steps each)" \
    python3 benchmarks/gpt_speed.py --preset gpt2_small --device cuda --steps "$STEPS"
part 130 "2. tests/test_step_cuda.py (one process: the suite's xdist options are reset)" \
    python3 -m pytest tests/test_step_cuda.py -q -o addopts="" -p no:randomly -rxXs
part 150 "3. vision_speed: ResNet-18, 224 px, batch 256, bf16, channels-last, data on the device" \
    python3 benchmarks/vision_speed.py --device cuda --image_size 224 --batch 256 --rounds 4 --steps 10 \
    --warmup 3 --check_steps 5
part 60 "4. donation reproduction, plain torch (GPT-2 widths, 1 layer), and pytorch#198280's and #176591's cases" \
    python3 benchmarks/cuda_donation_repro.py --layers 1 --minimal
section "done in ${SECONDS}s"
