#!/usr/bin/env bash
# Install everything that is missing (idempotent), then run the test suite.
#   bash scripts/test.sh            # fast suite (slow tests deselected)
#   bash scripts/test.sh -m slow    # extra pytest arguments are passed through
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
PY=${PYTHON:-python3}
exec "$PY" -m pytest -q "$@"
