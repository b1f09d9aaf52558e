#!/usr/bin/env bash
# The one script a GPU session runs (at most about 12 minutes on an H200, each part
# capped): everything the real-scale issue asks to measure on a GPU, in one log.
#
#     bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
#
# 1. benchmarks/gpt_speed.py --preset gpt2_small: craft vs nanoGPT's loop: tokens/s, MFU, peak memory, loss
#    (first: the figure the issue asks for comes out even if a later part is cut short)
# 2. the plain-torch donation reproduction (no craft): does a donated compiled step match eager,
#    copied back with one _foreach_copy_ (races, docs/gpu.md) or one copy_ per tensor (as craft)?
# 3. tests/test_step_cuda.py: craft's CUDA step (parity, no host sync, CUDA graphs, donated GPT steps)
# Each part has its own time limit; a part that fails or times out does not stop the next.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
STEPS="${STEPS:-200}"

section() { printf '\n===== %s (%s) =====\n' "$1" "$(date -u +%H:%M:%S)"; }

section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

section "1. gpt_speed --preset gpt2_small --device cuda ($STEPS steps each)"
timeout 330 python benchmarks/gpt_speed.py --preset gpt2_small --device cuda --steps "$STEPS" || echo "exit status $?"

section "2. donation reproduction, plain torch (GPT-2 widths, 1 layer), and pytorch#198280's case"
timeout 180 python benchmarks/cuda_donation_repro.py --layers 1 --minimal || echo "exit status $?"

section "3. tests/test_step_cuda.py (one process: the suite's xdist options are reset)"
timeout 200 python -m pytest tests/test_step_cuda.py -q -o addopts="" -p no:randomly -rxXs || echo "exit status $?"

section "done"
