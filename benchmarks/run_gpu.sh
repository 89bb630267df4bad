#!/usr/bin/env bash
# Every GPU measurement of the project in one run: the kernel and whole-model tests at real sizes in bf16, then
# the benchmarks. Run from the repository root on a CUDA machine; results go to $OUT (default benchmarks/results).
set -u
OUT=${OUT:-benchmarks/results}
DAY=$(date +%F)
mkdir -p "$OUT"
export TRITON_INTERPRET=0 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu-$DAY.txt"
python -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> "$OUT/gpu-$DAY.txt"
python -m pytest -q -p no:cacheprovider tests/test_kernels_gpu.py tests/test_kernels_long_conv_gpu.py \
    tests/test_kernels_model.py::test_real_size_model_in_bf16_on_the_kernels_matches_the_reference 2>&1 \
    | tail -40 > "$OUT/gpu-tests-$DAY.txt"
python benchmarks/bench_long_conv.py --single-program-up-to 8192 --one-launch-forward --output "$OUT/long-conv-$DAY.md"
python benchmarks/bench_kernels.py --lengths 512 1024 2048 4096 8192 16384 32768 --output "$OUT/kernels-$DAY.md"
python benchmarks/bench_encoder.py --m2-backends triton triton-1-launch torch --output "$OUT/encoder-$DAY.md"
python benchmarks/bench_generation.py --device cuda --dtype bfloat16 --output "$OUT/generation-gpu-$DAY.md"
python benchmarks/bench_vision.py --image-sizes 224 384 512 --batch 256 --output "$OUT/vision-$DAY.md"
