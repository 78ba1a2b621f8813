#!/usr/bin/env bash
# The GPU suite, prepared to run in one go on one GPU (< 8 minutes on one H200): ours vs
# fairchem's reference eSCN (forward+backward, fp32 / TF32 / bf16), inference atoms/s at
# 1,000 and 10,000 atoms, determinism, host-device synchronisations inside the layers, and
# the largest system in 24 GiB. Writes benchmarks/results/gpu/report.md and report.json.
#
#   bash benchmarks/gpu_suite.sh                 # everything (budget: 420 s of parts)
#   bash benchmarks/gpu_suite.sh --parts syncs   # one part
#   bash benchmarks/gpu_suite.sh --smoke --device cpu --out-dir /tmp/gpu_smoke  # tiny, CPU
#
# Needs the project's environment (scripts/install.sh, with a CUDA build of torch 2.4).
set -euo pipefail
cd "$(dirname "$0")/.."
# deterministic cuBLAS for the determinism part's second try (use_deterministic_algorithms)
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::FutureWarning}"
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
exec timeout 470 python3 benchmarks/gpu_suite.py --device cuda "$@"
