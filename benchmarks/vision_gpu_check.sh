#!/usr/bin/env bash
# The vision figures on one CUDA GPU, in about 5 minutes (a session with a GPU runs this once):
#   1. benchmarks/vision_speed.py: the ResNet-18 step at 224 px, bf16, channels-last, data on the device,
#      craft against the imperative loop (eager, compile(model), compile(step)), alternating rounds;
#   2. end to end: experiments/resnet_folder.toml on photo-like 128-px JPEGs (decoding + augmentation
#      in 12 threads, 112-px crops), 120 steps of 256, images/s as the run logs it.
# Output goes to stdout and, when $OUT is set (the device runner's folder), to $OUT/vision_gpu.txt.
#
#     bash benchmarks/vision_gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="${OUT:-/tmp}/vision_gpu.txt"
WORK="$(mktemp -d)"
exec > >(tee "$LOG") 2>&1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'bf16', torch.cuda.is_bf16_supported())"

echo "== 1. ResNet-18 step, 224 px, batch 256, bf16, channels-last (data on the device)"
timeout 300 python benchmarks/vision_speed.py --device cuda --image_size 224 --batch 256 \
    --rounds 4 --steps 10 --warmup 3 --check_steps 5 || echo "vision_speed.py stopped: exit $?"

echo "== 2. end to end: decoding + augmentation + step, experiments/resnet_folder.toml"
timeout 60 python -m craft prepare photos "$WORK/photos" --num_train=4096 --num_val=256 --image_size=128 \
    || echo "prepare stopped: exit $?"
timeout 120 python -m craft experiments/resnet_folder.toml --out_dir="$WORK/runs" --data.path="$WORK/photos" \
    --data.image_size=128 --data.augment.random_resized_crop.size=112 --data.batch_size=256 \
    --data.num_threads=12 --data.prefetch=8 --data.cache=false --train.steps=120 --train.log_every=20 \
    --train.eval_every=120 --train.eval_batches=1 || echo "train stopped: exit $?"
tail -n 8 "$WORK"/runs/resnet_folder/metrics.jsonl 2>/dev/null
rm -rf "$WORK"
