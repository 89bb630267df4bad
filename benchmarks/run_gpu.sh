#!/usr/bin/env bash
# The GPU measurements in stages (benchmarks/run_gpu.py): --stage N, --budget SECONDS, or --smoke DIR on CPU.
# Run from anywhere; results go to benchmarks/results (or --output DIR).
set -u
cd "$(dirname "$0")/.."
exec python benchmarks/run_gpu.py "$@"
