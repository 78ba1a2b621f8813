"""Large systems: cost of the on-the-fly radius graph (and, later, of model inference).

Section ``graph``: time and peak memory of one neighbour-list build, fairchem's O(N^2)
``radius_graph_pbc`` (``method="fairchem"``) vs the cell-list one (``method="vesin"``,
``escn_plugin.model.neighbors``), at eSCN's ``max_neighbors`` 20 (strict):

* Pt(111) slabs with an OH adsorbate, periodic along a1, a2 (14 A of vacuum along z),
  rattled: 866 atoms (12x12x6) and 3,464 atoms (the same repeated 2x2), cutoff 6 A; both
  methods (fairchem only up to ``--fairchem-max-atoms``, and only where its estimated
  ~100 bytes x N^2 x images fit in 3/4 of the available memory);
* rattled bulk fcc Pt (cubic supercells): 1,000 / 5,000 / 20,000 atoms at 6 A and 12 A
  (eSCN's cutoff), ours only.

Targets (issue 21): 3,464-atom slab at 6 A <= 0.5 s and <= 200 MB; 20,000 atoms at 12 A
<= 5 s and <= 1 GB.

Each point runs in a fresh interpreter (``--worker``): build the structure (float32, as
AtomsToGraphs stores it), one warm-up call on a 4-atom system, then the peak memory of one
call (CPU: peak RSS increase, VmHWM after resetting it; CUDA: max_memory_allocated, which
misses the host memory of the CPU search) and the median time of ``--repeats`` more calls.

Usage::

    python benchmarks/large_systems.py --out benchmarks/results/large_systems_graph.json
    python benchmarks/large_systems.py --sections graph --device cuda --out /tmp/lg.json

To add a section (e.g. model inference on the same structures): write ``section_x(args) ->
list[dict]`` returning rows with the keys of :data:`COLUMNS` (``None`` where not
applicable), and a ``worker`` kind if it measures in a subprocess; register it in
:data:`SECTIONS`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
if str(REPO) not in sys.path:
    sys.path.insert(1, str(REPO))
from _memory import peak_memory_mib, run_worker  # noqa: E402
from _reporting import machine_info, markdown_table  # noqa: E402
from _timing import synchronize  # noqa: E402

SCRIPT = Path(__file__).resolve()
NEIGHBORS = REPO / "escn_plugin" / "model" / "neighbors.py"

#: (atoms, cutoff A, method) -> the issue's targets (seconds, MiB)
TARGETS = {
    (3464, 6.0, "vesin"): (0.5, 200.0),
    (20000, 12.0, "vesin"): (5.0, 1024.0),
}
#: bulk Pt fcc cubic supercells (4 atoms per cell) of the scan
BULK_REPEATS = {1000: (5, 5, 10), 5000: (5, 10, 25), 20000: (10, 10, 50)}
COLUMNS = [
    "section", "structure", "atoms", "cutoff", "max_neighbors", "method", "edges",
    "time_s", "peak_mib", "target",
]  # fmt: skip


# --- structures -----------------------------------------------------------------------------


def build_structure(name: str):
    """``pt_slab_866``, ``pt_slab_3464`` or ``pt_bulk_<atoms>`` as ASE Atoms."""
    if name.startswith("pt_slab_"):
        from ase.build import add_adsorbate, fcc111, molecule

        atoms = fcc111("Pt", size=(12, 12, 6), vacuum=7.0)  # pbc [T, T, F]
        add_adsorbate(atoms, molecule("OH"), 1.8, "fcc")  # 866 atoms
        if name == "pt_slab_3464":
            atoms = atoms.repeat((2, 2, 1))
        elif name != "pt_slab_866":
            raise ValueError(f"unknown slab {name!r}: pt_slab_866 or pt_slab_3464")
        atoms.rattle(0.05, seed=1)
        atoms.wrap()
        return atoms
    if name.startswith("pt_bulk_"):
        from ase.build import bulk

        n = int(name.removeprefix("pt_bulk_"))
        if n not in BULK_REPEATS:
            raise ValueError(f"no bulk of {n} atoms: choose from {sorted(BULK_REPEATS)}")
        atoms = bulk("Pt", "fcc", a=3.92, cubic=True) * BULK_REPEATS[n]
        atoms.rattle(0.05, seed=0)
        atoms.wrap()
        return atoms
    raise ValueError(f"unknown structure {name!r}")


def graph_inputs(atoms, device: str):
    import torch

    pos = torch.tensor(atoms.positions, dtype=torch.float32, device=device)
    cell = torch.tensor(atoms.cell[:], dtype=torch.float32, device=device).view(1, 3, 3)
    natoms = torch.tensor([len(atoms)], device=device)
    pbc = torch.tensor(atoms.pbc, device=device).view(1, 3)
    return pos, cell, natoms, pbc


# --- workers (one measurement per fresh interpreter) ----------------------------------------


def graph_worker(payload: dict) -> dict:
    import importlib.util

    import torch

    # the module file alone: the package's __init__ (fairchem, e3nn) only slows the start
    spec = importlib.util.spec_from_file_location("neighbors", NEIGHBORS)
    neighbors = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(neighbors)
    neighbor_list = neighbors.neighbor_list
    if payload.get("threads"):
        torch.set_num_threads(payload["threads"])
    device = payload["device"]
    atoms = build_structure(payload["structure"])
    args = (payload["cutoff"], payload["max_neighbors"], payload["strict"])

    def build(inputs):
        return neighbor_list(*inputs, *args, method=payload["method"])

    warm = graph_inputs(atoms[:4], device)
    build(warm)  # libraries loaded, kernels initialised
    inputs = graph_inputs(atoms, device)
    out = {}

    def first():
        out["graph"] = build(inputs)

    memory = peak_memory_mib(first, device)
    times = []
    for _ in range(payload["repeats"]):
        synchronize(device)
        start = time.perf_counter()
        build(inputs)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return dict(
        atoms=len(atoms),
        edges=int(out["graph"][0].shape[1]),
        time_s=statistics.median(times) if times else None,
        times_s=times,
        peak_mib=memory["peak_increase_mib"],
        memory_method=memory["method"],
    )


WORKERS = {"graph": graph_worker}


# --- sections -------------------------------------------------------------------------------


def _graph_point(args, structure: str, cutoff: float, method: str, repeats: int) -> dict:
    payload = dict(
        kind="graph",
        structure=structure,
        cutoff=cutoff,
        max_neighbors=args.max_neighbors,
        strict=True,
        method=method,
        repeats=repeats,
        device=args.device,
        threads=args.threads,
    )
    print(f"[graph] {structure} cutoff {cutoff} A, {method} ...", flush=True)
    start = time.perf_counter()
    try:
        result = run_worker(SCRIPT, payload, timeout=args.timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as error:  # e.g. fairchem out of memory
        killed = "returncode -9" if "(-9)" in str(error) else ""
        message = str(error).strip().splitlines()[0] + (f" {killed}" if killed else "")
        print(f"  failed: {message}", flush=True)
        atoms = int(structure.rsplit("_", 1)[1])
        result = dict(atoms=atoms, edges=None, time_s=None, peak_mib=None, error=message)
    result["worker_wall_s"] = round(time.perf_counter() - start, 1)
    target = TARGETS.get((result["atoms"], cutoff, method))
    verdict = None
    if target is not None and result["time_s"] is not None:
        ok = result["time_s"] <= target[0] and result["peak_mib"] <= target[1]
        verdict = f"{'met' if ok else 'MISSED'} (<= {target[0]} s, <= {target[1]:.0f} MiB)"
    return dict(
        section="graph",
        structure=structure,
        cutoff=cutoff,
        max_neighbors=args.max_neighbors,
        method=method,
        target=verdict,
        **result,
    )


def fairchem_bytes(structure: str, cutoff: float) -> float:
    """fairchem's radius_graph_pbc holds ~100 bytes per (atom pair, image) at its peak
    (measured: 1.8 GiB for 866 atoms x 27 images)."""
    import numpy as np

    atoms = build_structure(structure)
    lattice = atoms.cell[:]
    images = 1
    for a in range(3):
        if atoms.pbc[a]:
            others = np.cross(lattice[(a + 1) % 3], lattice[(a + 2) % 3])
            spacing = abs(np.linalg.det(lattice)) / np.linalg.norm(others)
            images *= 2 * int(np.ceil(cutoff / spacing)) + 1
    return 100.0 * len(atoms) ** 2 * images


def available_bytes() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def section_graph(args) -> list[dict]:
    """fairchem vs ours on the slabs at 6 A; ours on the bulk scan at 6 and 12 A."""
    rows = []
    for structure, atoms in (("pt_slab_866", 866), ("pt_slab_3464", 3464)):
        rows.append(_graph_point(args, structure, 6.0, "vesin", args.repeats))
        if atoms > args.fairchem_max_atoms:
            continue
        need, have = fairchem_bytes(structure, 6.0), available_bytes()
        if args.device == "cpu" and need > 0.75 * have:
            message = f"skipped: needs ~{need / 2**30:.1f} GiB, {have / 2**30:.1f} available"
            print(f"[graph] {structure} fairchem {message}", flush=True)
            rows.append(
                dict(section="graph", structure=structure, atoms=atoms, cutoff=6.0,
                     max_neighbors=args.max_neighbors, method="fairchem", edges=None,
                     time_s=None, peak_mib=None, target=None, error=message)
            )  # fmt: skip
            continue
        rows.append(_graph_point(args, structure, 6.0, "fairchem", 1))
    for cutoff in (6.0, 12.0):
        for atoms in args.scan:
            rows.append(_graph_point(args, f"pt_bulk_{atoms}", cutoff, "vesin", args.repeats))
    return rows


SECTIONS = {"graph": section_graph}


# --- report ---------------------------------------------------------------------------------


def report(machine: dict, rows: list[dict]) -> str:
    lines = [
        "# Large systems",
        "",
        f"- date: {machine['date']}; {machine['nproc']} CPUs ({machine['cpu']}), torch "
        f"{machine['torch']} ({machine['threads']} threads), device `{machine['device']}`",
        "- time: median of repeats after a warm-up (fairchem: 1 call); memory: peak increase "
        "of the first call in a fresh process (RSS on CPU)",
        "",
    ]
    table = []
    for r in rows:
        table.append(
            [
                r["section"],
                r["structure"],
                r["atoms"] or "",
                f"{r['cutoff']:g}",
                r["max_neighbors"],
                r["method"],
                r["edges"] if r["edges"] is not None else "",
                "-" if r["time_s"] is None else f"{r['time_s']:.3f}",
                "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}",
                r["target"] or r.get("error") or "",
            ]
        )
    header = ["section", "structure", "atoms", "cutoff (A)", "max nb", "method", "edges"]
    header += ["time (s)", "peak (MiB)", "target"]
    lines.append(markdown_table(header, table))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in each worker")
    parser.add_argument("--sections", default="graph", help=f"comma list of {list(SECTIONS)}")
    parser.add_argument("--out", help="write the rows and machine info to this .json")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per point (ours)")
    parser.add_argument("--max-neighbors", type=int, default=20)
    parser.add_argument("--scan", type=int, nargs="+", default=sorted(BULK_REPEATS))
    parser.add_argument(
        "--fairchem-max-atoms",
        type=int,
        default=3464,
        help="skip fairchem's O(N^2) search above this (3,464 atoms: ~10 GB)",
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per worker")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        payload = json.loads(args.worker)
        print(json.dumps(WORKERS[payload["kind"]](payload)))
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}: choose from {list(SECTIONS)}")
    machine = machine_info(args.device)
    start = time.perf_counter()
    rows = [row for name in sections for row in SECTIONS[name](args)]
    machine["elapsed_s"] = round(time.perf_counter() - start, 1)
    print(report(machine, rows))
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = dict(machine=machine, args=vars(args), columns=COLUMNS, rows=rows)
        path.write_text(json.dumps(payload, indent=1) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
