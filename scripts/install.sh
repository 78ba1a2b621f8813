#!/usr/bin/env bash
# Install escn-plugin and everything it needs into the current Python environment.
# Idempotent: each step first checks whether its packages already import at the right
# versions, so a second run takes seconds.
#
#   bash scripts/install.sh            # CPU or GPU machine, PyPI only
#
# On a GPU cluster you may prefer prebuilt torch-scatter/torch-sparse wheels:
#   pip install torch-scatter torch-sparse -f https://data.pyg.org/whl/torch-2.4.0+cu121.html
# before running this script (it then skips the source build).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PIP=("$PY" -m pip install --disable-pip-version-check)

have() { "$PY" -c "$1" >/dev/null 2>&1; }

# 1. torch 2.4 (fairchem-core 1.10 pins torch~=2.4.0 and numpy<2; scipy>=1.15 lacks sph_harm).
if ! have "import torch, numpy, scipy; assert torch.__version__.startswith('2.4.'); \
assert numpy.__version__ < '2'; assert tuple(map(int, scipy.__version__.split('.')[:2])) < (1, 15)"; then
  echo "[install] torch 2.4.1, numpy<2, scipy<1.15"
  "${PIP[@]}" "torch==2.4.1" "numpy<2" "scipy<1.15" wheel "setuptools>=64" ninja
fi

# 2. torch-scatter / torch-sparse: PyPI has sources only, which must be compiled against the
#    installed torch, hence --no-build-isolation (pip caches the built wheels).
#    Each build compiles one file at a time, so the two run side by side (one core each);
#    pip wheel keeps them out of each other's way, then one pip install takes both wheels.
if ! have "import torch_scatter, torch_sparse"; then
  echo "[install] building torch-scatter and torch-sparse from source, side by side"
  "${PIP[@]}" wheel "setuptools>=64" ninja
  WHEELS=$(mktemp -d)
  for pkg in torch-scatter torch-sparse; do
    "$PY" -m pip wheel --disable-pip-version-check --no-build-isolation --no-deps \
      -w "$WHEELS" "$pkg" > "$WHEELS/$pkg.log" 2>&1 &
  done
  failed=0
  for job in $(jobs -p); do wait "$job" || failed=1; done
  if [ "$failed" -ne 0 ]; then
    tail -n 30 "$WHEELS"/*.log; echo "[install] source build failed (logs above)"; exit 1
  fi
  "${PIP[@]}" "$WHEELS"/*.whl
  rm -rf "$WHEELS"
fi

# 3. fairchem-core 1.10 and the plugin itself (editable), with test extras.
if ! have "import escn_plugin, fairchem.core, e3nn, ase, lmdb, submitit, pytest, ruff; \
from importlib.metadata import version as v; assert v('fairchem-core') == '1.10.0'; \
assert v('ase') == '3.24.0'; assert int(v('lmdb').split('.')[0]) < 2"; then
  echo "[install] fairchem-core 1.10.0 and escn-plugin"
  "${PIP[@]}" -e ".[test,demo]"
fi
echo "[install] environment ready: $("$PY" -c 'import torch, fairchem.core; print("torch", torch.__version__, "fairchem-core", fairchem.core.__version__)')"
