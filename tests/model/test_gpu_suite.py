"""benchmarks/gpu_suite.py runs end to end on the CPU at tiny sizes (--smoke), so the GPU
run it is prepared for cannot break on Python errors; and its search finds the boundary."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


def _suite_module():
    sys.path.insert(0, str(SUITE.parent))
    try:
        spec = importlib.util.spec_from_file_location("gpu_suite", SUITE)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SUITE.parent))


@pytest.mark.parametrize("limit", [1, 37, 1000, 5000])
def test_search_largest_brackets_the_limit(limit):
    search = _suite_module().search_largest
    calls = []

    def fits(n):
        calls.append(n)
        return n <= limit

    found = search(fits, 500, growth=1.25, tries=30)
    assert found["largest"] is not None and found["largest"] <= limit
    assert found["smallest_failed"] is None or found["smallest_failed"] > limit
    assert found["largest"] >= 0.97 * limit - 1  # converged (30 tries)
    assert all(n > 0 for n in calls)


def test_smoke_run_writes_every_part(tmp_path):
    cmd = [sys.executable, str(SUITE), "--device", "cpu", "--smoke", "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    payload = json.loads((tmp_path / "report.json").read_text())
    results = payload["results"]
    assert set(results) == {"train_step", "inference", "determinism", "syncs", "largest"}
    assert not [k for k, v in results.items() if "error" in v], results
    step = results["train_step"]["smoke"]
    for precision in ("fp32", "tf32"):
        assert step[precision]["speedup"] > 0
    assert step["agreement_fp32"]["forces"] < 1e-3
    assert all(part["identical"] for part in results["determinism"].values())
    assert results["largest"]["largest"] > 0
    report = (tmp_path / "report.md").read_text()
    for heading in ("Forward+backward", "Inference", "Largest system", "determinism", "syncs"):
        assert heading in report
