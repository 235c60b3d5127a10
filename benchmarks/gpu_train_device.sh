#!/usr/bin/env bash
# One-shot run of benchmarks/gpu_train.py on a lent GPU machine, bounded to 8 minutes of device time.
#
# That machine's python3 has torch, torchvision, accelerate, safetensors, huggingface_hub and tensorboard, but not
# diffusers, and nothing can be installed from a registry there: carry diffusers' (pure-Python) wheel. Once, here,
# in the repository root:
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: -d .whl diffusers==0.42.1
# then the device tool's `run` with command `bash benchmarks/gpu_train_device.sh`, carry [".whl"], timeout_s 540.
# What comes back: $OUT/gpu_train/gpu_train.csv, gpu_train.json and log.txt. Extra arguments go to gpu_train.py.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks}/gpu_train"
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1  # rcdm from this checkout, not installed
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$out/log.txt"
# The 420 s budget, plus one configuration started inside it; rows are written as they finish, so a kill keeps them.
timeout 470 python3 benchmarks/gpu_train.py --out "$out" --time-budget 420 "$@" 2>&1 | tee -a "$out/log.txt"
