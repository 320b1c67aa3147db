#!/usr/bin/env bash
# The GPU checks of this project, as one script for a lent device machine (see benchmarks/README.md):
# a bf16 training run of the `base` preset, the train-step and generation comparisons on CUDA
# (ONNX Runtime's CUDA provider in fp32 and fp16 where it can be created), the CUDA tests.
# Needs an ingested dataset at data/dataset (carried along). Results land in $OUT (or ./gpu-out).
set -uo pipefail
export PYTHONUNBUFFERED=1
out=${OUT:-gpu-out}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, torch.cuda.get_device_name(0), '| ort', o.__version__, o.get_available_providers())" | tee -a "$out/gpu.txt"
timeout 270 python3 benchmarks/gpu_train.py data/dataset --preset base --minutes 2.5 --batch 32 --src 2048 --tgt 512 2>&1 \
  | grep -v '^train: *[0-9]*%' | tail -4 | tee "$out/gpu_train.txt"
timeout 120 python3 benchmarks/train_step.py --device cuda --rounds 3 --steps 10 2>&1 | tail -10 | tee "$out/train_step.txt"
timeout 200 python3 benchmarks/generate.py --devices cuda --providers cuda cpu --fp16 --batches 1 8 64 --rounds 2 2>&1 \
  | grep -v '^W1' | tail -24 | tee "$out/generate.txt"
timeout 120 python3 -m pytest -q -rs tests/test_onnx.py -k cuda 2>&1 | tail -3 | tee "$out/onnx_cuda_test.txt"  # skips without a usable CUDA provider
cp benchmarks/results/*.json "$out/" 2>/dev/null
ls -la "$out"
