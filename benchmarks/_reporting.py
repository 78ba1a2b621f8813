"""Benchmark reports: machine description, Markdown tables, ``--out`` files."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from _timing import clock_name


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str) -> dict:
    """Date, host, CPUs, torch, threads, device, clock and load average."""
    info = dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        host=platform.node(),
        nproc=os.cpu_count(),
        cpu=cpu_model(),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        device=device,
        clock=clock_name(),
    )
    with contextlib.suppress(OSError):
        info["loadavg_at_start"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def machine_lines(info: dict) -> list[str]:
    """:func:`machine_info` as Markdown list items."""
    lines = [
        f"- date: {info['date']}",
        f"- machine: {info['nproc']} logical CPUs (`nproc`), {info['cpu']}, "
        f"torch {info['torch']} ({info['threads']} threads), device `{info['device']}`"
        + (f" ({info['gpu']})" if "gpu" in info else ""),
        f"- clock: {info.get('clock', 'wall')}"
        + (
            " (process CPU time: excludes waiting for cores held by other jobs)"
            if info.get("clock") == "cpu"
            else " (elapsed time)"
        ),
    ]
    if "loadavg_at_start" in info:
        lines.append(f"- load average at start (1, 5, 15 min): {info['loadavg_at_start']}")
    return lines


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def publish(args, machine: dict, results, report: Callable, plot: Callable) -> int:
    """Print the Markdown report of ``results``; with ``--out`` also write .md, .json (raw
    samples, machine, arguments) and .png. Returns the scripts' exit code, 0."""
    markdown = report(args, machine, results)
    title = (
        f"{machine['date']}  {machine['cpu']}  nproc={machine['nproc']}  torch {machine['torch']}"
    )
    payload = dict(machine=machine, args=vars(args), results=results)
    draw = (lambda path: plot(results, path, title)) if results else None
    write_outputs(args.out, markdown, payload, draw)
    return 0


def write_outputs(out: str | None, markdown: str, results: dict, plot: Callable | None) -> None:
    """Print ``markdown``; with ``out`` (a path, ``.md`` added if missing) also write
    ``out.md``, ``out.json`` (raw samples) and ``out.png`` (``plot(path)``)."""
    print(markdown)
    if not out:
        return
    path = Path(out)
    if path.suffix != ".md":
        path = path.with_name(path.name + ".md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown + "\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    written = [path, path.with_suffix(".json")]
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        plot(path.with_suffix(".png"))
        if path.with_suffix(".png").exists():
            written.append(path.with_suffix(".png"))
    print("\nwrote " + ", ".join(str(p) for p in written))
