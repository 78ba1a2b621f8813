"""Progress output of the main job: prefixed log lines and periodic progress lines."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

_START = time.perf_counter()


def log(msg: str) -> None:
    """One line of the main job's own output (fairchem's is indented below it), with the
    seconds since the job started."""
    print(f"[demo {time.perf_counter() - _START:5.0f} s] {msg}", flush=True)


def progress(
    items: Iterable[T], total: int, what: str, every_s: float = 10.0, prefix: str = "[demo]"
) -> Iterator[T]:
    """Yield ``items``, printing ``what k/total (x%), elapsed, ETA`` at most every
    ``every_s`` seconds and once at the end (a progress bar that survives log files)."""
    start = last = time.perf_counter()
    done = 0
    for item in items:
        yield item
        done += 1
        now = time.perf_counter()
        if now - last >= every_s or done == total:
            last = now
            elapsed = now - start
            eta = elapsed / done * (total - done) if done else 0.0
            bar = "#" * int(20 * done / max(total, 1))
            print(
                f"{prefix} {what} [{bar:<20}] {done}/{total} ({100 * done / max(total, 1):.0f}%)"
                f", {elapsed:.0f} s, ETA {eta:.0f} s",
                flush=True,
            )
