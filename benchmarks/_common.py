"""Shared helpers of the benchmark scripts (not a test module; nothing here asserts).

* structures: OC20-like PBC slabs with adsorbates (ASE), rotated by a generic rotation,
  batched through fairchem's AtomsToGraphs without edges (the models build the graph on the
  fly, ``otf_graph=True``), float32;
* models: the reference eSCN (fairchem's registry name ``escn``) and ours
  (:class:`escn_plugin.eSCN`) with the same weights (:func:`escn_plugin.convert.
  convert_state_dict`);
* timing (synchronised, medians of interleaved repeats), peak memory (CPU: peak RSS increase
  in a fresh subprocess; CUDA: ``torch.cuda.max_memory_allocated``);
* report: machine description, Markdown tables, ``--out`` files.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore", category=FutureWarning)  # fairchem's torch.load of Jd.pt

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# a fixed generic rotation (the tests' GENERIC_ROTATION): keeps edges away from +-y, where the
# reference's Euler-angle Wigner-D is singular
GENERIC_EULER_XYZ = (0.3, 0.7, 1.1)

# the paper's configurations (SPEC §4); layer counts are set per run (CPU: fewer layers)
CONFIGS: dict[str, dict] = {
    "small": dict(
        lmax_list=[2], mmax_list=[1], sphere_channels=32, hidden_channels=64, edge_channels=32
    ),
    "L4-M2": dict(
        lmax_list=[4], mmax_list=[2], sphere_channels=128, hidden_channels=256, edge_channels=128
    ),
    "L6-M2": dict(
        lmax_list=[6], mmax_list=[2], sphere_channels=128, hidden_channels=256, edge_channels=128
    ),
    "L6-M3": dict(
        lmax_list=[6], mmax_list=[3], sphere_channels=160, hidden_channels=384, edge_channels=128
    ),
}
COMMON = dict(
    use_pbc=True,
    regress_forces=True,
    otf_graph=True,
    max_neighbors=20,
    cutoff=12.0,
    num_sphere_samples=128,
    distance_function="gaussian",
    basis_width_scalar=2.0,
    distance_resolution=0.02,
)

# slab builders: (metal, adsorbate) pairs used round-robin
SYSTEMS = [("Cu", "CO"), ("Pt", "OH"), ("Cu", "CH3"), ("Pt", "O")]


# -- structures --------------------------------------------------------------------------


def slab(index: int = 0, size: tuple[int, int, int] = (4, 4, 4)):
    """An fcc(111) slab with an adsorbate, tags, fixed sub-surface atoms, rattled and rotated.

    ``size=(4, 4, 4)`` gives 64 metal atoms + the adsorbate (65..68 atoms).
    """
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.constraints import FixAtoms
    from scipy.spatial.transform import Rotation

    metal, ads = SYSTEMS[index % len(SYSTEMS)]
    atoms = fcc111(metal, size=size, vacuum=7.0, periodic=True)
    tags = atoms.get_tags()  # ase: layer number from the top, 1 = top layer
    adsorbate = molecule(ads) if len(ads) > 1 else ads
    add_adsorbate(atoms, adsorbate, 1.8, "fcc")
    tags = np.concatenate([np.where(tags <= 2, 1, 0), np.full(len(atoms) - len(tags), 2)])
    atoms.set_tags(tags)
    atoms.set_constraint(FixAtoms(mask=tags == 0))
    atoms.rattle(0.05, seed=index)
    rot = Rotation.from_euler("xyz", GENERIC_EULER_XYZ).as_matrix()
    atoms.set_positions(atoms.get_positions() @ rot.T, apply_constraint=False)
    atoms.set_cell(atoms.get_cell()[:] @ rot.T, scale_atoms=False)
    atoms.wrap()
    return atoms


def make_batch(atoms_list, device: str = "cpu"):
    """PyG batch of float32 systems without edges (``otf_graph=True`` builds them)."""
    from fairchem.core.preprocessing import AtomsToGraphs
    from torch_geometric.data import Batch

    a2g = AtomsToGraphs(r_edges=False, r_fixed=True, r_pbc=True)
    data = []
    for i, atoms in enumerate(atoms_list):
        d = a2g.convert(atoms)
        d.pos = torch.tensor(atoms.get_positions(), dtype=torch.float32)
        d.cell = torch.tensor(atoms.get_cell()[:], dtype=torch.float32).view(1, 3, 3)
        d.tags = torch.tensor(atoms.get_tags(), dtype=torch.long)
        d.sid = i
        data.append(d)
    return Batch.from_data_list(data).to(device)


def slab_batch(num_systems: int = 2, size=(4, 4, 4), device: str = "cpu"):
    return make_batch([slab(i, size) for i in range(num_systems)], device)


def count_edges(model, batch) -> int:
    with torch.no_grad():
        return int(model.generate_graph(batch).edge_index.shape[1])


# -- models ------------------------------------------------------------------------------


def model_config(name: str, num_layers: int, **overrides) -> dict:
    return {**COMMON, **CONFIGS[name], "num_layers": num_layers, **overrides}


def build_ours(config: dict, device: str = "cpu", seed: int = 0):
    import escn_plugin

    torch.manual_seed(seed)
    return escn_plugin.eSCN(**config).to(device)


def build_reference(config: dict, device: str = "cpu", seed: int = 0):
    import fairchem.core.models.escn.escn  # noqa: F401  (registers the reference "escn")
    from fairchem.core.common.registry import registry

    torch.manual_seed(seed)
    return registry.get_model_class("escn")(**config).to(device)


def build_pair(config: dict, device: str = "cpu", seed: int = 0):
    """The reference and ours with the same weights (ours loaded from the reference's)."""
    from escn_plugin.convert import convert_state_dict

    ref = build_reference(config, device, seed)
    ours = build_ours(config, device, seed)
    result = ours.load_state_dict(convert_state_dict(ref.state_dict()), strict=True)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"weight conversion mismatch: {result}")
    return ref, ours


@contextlib.contextmanager
def reference_uses_our_frame(ref) -> Iterator[None]:
    """Replace the reference's random edge frame by ours (outputs become comparable)."""
    from escn_plugin.so3 import edge_frame

    cls = type(ref)
    original = cls._init_edge_rot_mat

    def ours_frame(self, data, edge_index, edge_distance_vec):
        return edge_frame(edge_distance_vec).detach()

    cls._init_edge_rot_mat = ours_frame
    try:
        yield
    finally:
        cls._init_edge_rot_mat = original


def training_loss(out: dict) -> torch.Tensor:
    return out["energy"].sum() + out["forces"].pow(2).sum()


def forward(model, batch) -> dict:
    return model(batch)


def forward_backward(model, batch) -> None:
    model.zero_grad(set_to_none=True)
    training_loss(model(batch)).backward()


# -- timing ------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# "wall": elapsed time. "cpu": CPU time (user + sys) of this process, which time spent
# waiting for a CPU held by other jobs does not inflate; with one torch thread it equals the
# wall time of an idle machine (CPU device only; set by ``setup``).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = {"name": "wall"}


def clock_name() -> str:
    return _clock["name"]


def timed(fn: Callable[[], object], device: str) -> float:
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
    return dict(
        median=statistics.median(values),
        min=min(values),
        max=max(values),
        n=len(values),
        samples=values,
    )


# -- memory ------------------------------------------------------------------------------


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


# -- reporting ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str) -> dict:
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
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


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


def setup_torch(device: str, threads: int | None, clock: str = "wall") -> None:
    if threads:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if clock == "cpu" and device.startswith("cuda"):
        raise SystemExit("--clock cpu measures host CPU time: use it with --device cpu only")
    _clock["name"] = clock
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
    setup_torch(args.device, args.threads, args.clock)
