"""Benchmark timing: synchronised calls, medians of interleaved repeats, and the clock
(wall or process CPU time)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: str) -> None:
    """Wait for queued CUDA work (no-op on CPU)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# "wall": elapsed time. "cpu": CPU time (user + sys) of this process, which time spent
# waiting for a CPU held by other jobs does not inflate; with one torch thread it equals the
# wall time of an idle machine (CPU device only; set by ``setup``).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = {"name": "wall"}


def clock_name() -> str:
    """The clock in use: ``wall`` or ``cpu``."""
    return _clock["name"]


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds of one call of ``fn`` on the current clock."""
    now = CLOCKS[_clock["name"]]
    synchronize(device)
    start = now()
    fn()
    synchronize(device)
    return now() - start


def interleaved_medians(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    device: str,
    warmup: int = 1,
    verbose: bool = True,
) -> dict[str, dict]:
    """Run ``fns`` round-robin ``repeats`` times (order reversed every other round, so a
    drifting machine load hits all of them alike); median and spread per name."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(repeats):
        for name in names if rep % 2 == 0 else names[::-1]:
            samples[name].append(timed(fns[name], device))
            if verbose:
                print(f"    {name}: {fmt_time(samples[name][-1])}", flush=True)
    return {name: summarize(values) for name, values in samples.items()}


def summarize(values: list[float]) -> dict:
    """Median, min, max, count and the samples."""
    return dict(
        median=statistics.median(values),
        min=min(values),
        max=max(values),
        n=len(values),
        samples=values,
    )


def set_clock(name: str) -> None:
    """Use the clock ``name`` (a key of ``CLOCKS``) for :func:`timed`."""
    if name not in CLOCKS:
        raise ValueError(f"unknown clock {name!r}; choose one of {', '.join(CLOCKS)}")
    _clock["name"] = name


def fmt_time(seconds: float) -> str:
    """Seconds in s, ms or µs with 3-4 significant digits."""
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"
