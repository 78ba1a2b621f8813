#!/usr/bin/env bash
# The main job (README quick start): install (idempotent), then generate the OC20-EMT demo
# data, train/validate/predict a small eSCN with the stock fairchem CLI, write an OC20 S2EF
# submission file, run relaxations and report (OUT/report.md, OUT/parity.png).
#
#   bash scripts/demo.sh [--out demo_output] [--seed 0] [--epochs N] [--size demo|tiny] [--workers 2]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh
exec "$PY" -m escn_plugin.demo "$@"
