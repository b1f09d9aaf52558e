#!/usr/bin/env bash
# The second GPU call, when device time is left after benchmarks/gpu_check.sh (which has the ResNet-18
# step figures): the vision path end to end on one CUDA GPU, in about 3 minutes.
# experiments/resnet_folder.toml on photo-like 128-px JPEGs (decoding + augmentation in 12 threads,
# 112-px crops), 120 steps of 256, images/s as the run logs it.
# Output goes to stdout and, when $OUT is set (the device runner's folder), to $OUT/vision_gpu.txt.
#
#     run(command="bash benchmarks/vision_gpu_check.sh", carry=[".whl"], timeout_s=300)
set -uo pipefail
cd "$(dirname "$0")/.."
exec > >(tee "${OUT:-/tmp}/vision_gpu.txt") 2>&1
source benchmarks/device_env.sh
WORK="$(mktemp -d)"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'bf16', torch.cuda.is_bf16_supported())"

echo "== end to end: decoding + augmentation + step, experiments/resnet_folder.toml"
timeout 60 python3 -m craft prepare photos "$WORK/photos" --num_train=4096 --num_val=256 --image_size=128 \
    || echo "prepare stopped: exit $?"
timeout 150 python3 -m craft experiments/resnet_folder.toml --out_dir="$WORK/runs" --data.path="$WORK/photos" \
    --data.image_size=128 --data.augment.random_resized_crop.size=112 --data.batch_size=256 \
    --data.num_threads=12 --data.prefetch=8 --data.cache=false --train.steps=120 --train.log_every=20 \
    --train.eval_every=120 --train.eval_batches=1 || echo "train stopped: exit $?"
tail -n 8 "$WORK"/runs/resnet_folder/metrics.jsonl 2>/dev/null
rm -rf "$WORK"
