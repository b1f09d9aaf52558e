#!/usr/bin/env bash
# Run HERE, where the package registries are reachable, before a GPU session: saves in .whl/
# (ignored by git) the wheels of craft's pure-Python dependencies that the device image lacks
# (its Python 3.12 has torch, numpy, pillow, tqdm, matplotlib, safetensors, tokenizers, but not
# cattrs, fire, termcolor or tomli-w; pytest and hypothesis, which tests/test_step_cuda.py needs, are
# saved too in case the image lacks them), at the versions installed here, so the GPU scripts run the
# versions the tests ran. benchmarks/device_env.sh installs them there; name .whl in the run's carry.
#
#     bash benchmarks/device_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(attrs cattrs fire termcolor tomli-w typing-extensions pytest pluggy iniconfig pygments hypothesis sortedcontainers)
pins=()
for name in "${PACKAGES[@]}"; do
    pins+=("$name==$(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
done
rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl "${pins[@]}"
ls .whl
