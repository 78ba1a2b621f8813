"""Shared helpers of the benchmark scripts (not a test module; nothing here asserts).

One module per concern, all re-exported here (scripts use ``import _common as common``):

* ``_structures``: OC20-like PBC slabs with adsorbates, batched without edges;
* ``_models``: the reference eSCN and ours with the same weights, the timed calls;
* ``_timing``: synchronised timing, medians of interleaved repeats, wall or CPU clock;
* ``_memory``: peak memory (RSS in a fresh subprocess, or CUDA), live-tensor peaks;
* ``_reporting``: machine description, Markdown tables, ``--out`` files;
* here: the command-line options every script shares and the torch setup.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=FutureWarning)  # fairchem's torch.load of Jd.pt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from _memory import peak_live_tensors_mib, peak_memory_mib, run_worker  # noqa: E402
from _models import (  # noqa: E402
    COMMON,
    CONFIGS,
    build_ours,
    build_pair,
    build_reference,
    forward,
    forward_backward,
    model_config,
    reference_uses_our_frame,
    training_loss,
)
from _reporting import (  # noqa: E402
    cpu_model,
    machine_info,
    machine_lines,
    markdown_table,
    publish,
    write_outputs,
)
from _structures import (  # noqa: E402
    GENERIC_EULER_XYZ,
    SYSTEMS,
    count_edges,
    make_batch,
    slab,
    slab_batch,
)
from _timing import (  # noqa: E402
    CLOCKS,
    clock_name,
    fmt_time,
    interleaved_medians,
    set_clock,
    summarize,
    synchronize,
    timed,
)

__all__ = [
    "CLOCKS", "COMMON", "CONFIGS", "GENERIC_EULER_XYZ", "REPO", "SYSTEMS", "add_common_args",
    "build_ours", "build_pair", "build_reference", "clock_name", "count_edges", "cpu_model",
    "fmt_time", "forward", "forward_backward", "interleaved_medians", "machine_info",
    "machine_lines", "make_batch", "markdown_table", "model_config", "peak_live_tensors_mib",
    "peak_memory_mib", "publish", "reference_uses_our_frame", "run_worker", "set_clock",
    "setup", "setup_torch", "slab", "slab_batch", "summarize", "synchronize", "timed",
    "training_loss", "write_outputs",
]  # fmt: skip


def setup_torch(device: str, threads: int | None, clock: str = "wall") -> None:
    """Threads, device check, clock and float32 default for a benchmark run."""
    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if clock == "cpu" and device.startswith("cuda"):
        raise SystemExit("--clock cpu measures host CPU time: use it with --device cpu only")
    set_clock(clock)
    torch.set_default_dtype(torch.float32)


def add_common_args(parser) -> None:
    """--device, --threads, --clock, --out (shared by the benchmark scripts)."""
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=list(CLOCKS),
        help="wall: elapsed time; cpu: process CPU time (user+sys), not inflated by other jobs "
        "waiting for the same cores; use with --threads 1 on a shared machine",
    )
    parser.add_argument("--out", help="write OUT.md, OUT.json (raw samples) and OUT.png")


def setup(args) -> None:
    """:func:`setup_torch` from the parsed :func:`add_common_args` options."""
    setup_torch(args.device, args.threads, args.clock)
