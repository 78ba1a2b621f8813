"""Benchmark memory: peak memory of one call (CPU: peak RSS increase, in a fresh
subprocess; CUDA: ``torch.cuda.max_memory_allocated``) and live-tensor peaks."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from _timing import synchronize


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark VmHWM to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mib(fn: Callable[[], object], device: str) -> dict:
    """Peak memory of one call of ``fn`` above what was in use before it, MiB.

    CPU: resident set size; call in a fresh process (the allocator keeps freed memory, so a
    second call in the same process under-reports). Uses VmHWM after resetting it when the
    kernel allows, else ``ru_maxrss``.
    """
    if device.startswith("cuda"):
        synchronize(device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated()
        return dict(peak_increase_mib=(peak - base) / 2**20, method="cuda.max_memory_allocated")
    base_kb = _proc_status_kb("VmRSS")
    if base_kb is not None and _reset_peak_rss():
        fn()
        peak_kb = _proc_status_kb("VmHWM")
        method = "VmHWM - VmRSS (clear_refs)"
    else:
        base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss difference"
    return dict(peak_increase_mib=(peak_kb - base_kb) / 1024, method=method)


def peak_live_tensors_mib(fn: Callable[[], object]) -> float:
    """Peak of the bytes held by tensors during one call of ``fn`` above what was held before,
    MiB (CPU): torch.profiler's memory events (allocations +, frees -) summed in time order.
    Independent of the allocator (RSS also counts memory the allocator keeps cached)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.events() if e.self_cpu_memory_usage != 0]
    events.sort(key=lambda e: e.time_range.start)
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def run_worker(script: Path, payload: dict, timeout: float = 900) -> dict:
    """Run ``script --worker JSON`` in a fresh interpreter; it prints one JSON line last."""
    cmd = [sys.executable, str(script), "--worker", json.dumps(payload)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
