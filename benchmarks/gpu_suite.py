"""The GPU suite: one run on one GPU, one report (``benchmarks/gpu_suite.sh`` calls it).

Parts, in order (each recorded on its own; one that fails is reported and the run goes on;
parts are skipped once ``--budget-s`` is spent):

1. ``train_step``: forward+backward (energy + force loss), ours vs fairchem's reference
   ``escn`` with the same weights, at L6-M2-Lay12 (6 OC20-like slabs, the paper's batch)
   and L6-M3-Lay20 (2 slabs), in fp32, TF32 and bf16 autocast: median time, peak memory,
   output agreement (fp32, same edge frames).
2. ``inference``: ours, L6-M2-Lay12, bulk Pt at 1,000 and 10,000 atoms, ``torch.no_grad``
   in evaluation (blocked, and whole graph): atoms/s (graph build included, and alone),
   peak memory per atom, 1 vs 12 layers (blocked, the peak does not depend on depth).
3. ``determinism``: the same forward+backward twice (energies, forces, every parameter
   gradient) and the same blocked inference twice, compared bit for bit; where they differ,
   again under ``torch.use_deterministic_algorithms(True)``.
4. ``syncs``: the interaction layers (whole graph, forward and backward; blocked) under
   ``torch.cuda.set_sync_debug_mode("error")``, which raises on a synchronising call; then
   one whole forward pass under ``"warn"``, whose warnings locate the remaining ones.
5. ``largest``: the largest bulk-Pt system one L6-M2 inference fits in 24 GiB (the process
   capped with ``set_per_process_memory_fraction``), searched with 1 layer from the peak
   per atom of part 2, then one 12-layer call at that size if the budget allows.

Host-device synchronisations left, all outside the interaction layers (checked without a
GPU by tests/model/test_device_placement.py, on a GPU by part 4):

* input checks (``model/inputs.py``): ``check_atoms`` (3-4 ``any``/``all``), ``check_cells``
  (1), ``check_edges`` (1), ``wrap_positions`` (``periodic.any()``); ``check_overlaps`` and
  the neighbour list copy positions and cells to the host and the edges back (vesin runs
  on the CPU by design), with ``natoms.tolist()``;
* ``common/edge_groups.py`` ``group_by_node``: ``int(counts.max())``, twice per forward (the
  slot width of sources and targets);
* blocked inference's plan (``nn/blocked.py``): one target-order check, one ``.cpu()`` of
  the per-node edge counts, and per block a ``unique`` and two slot widths;
* precomputed graphs (``otf_graph: False``) go through fairchem's ``get_pbc_distances``
  (``repeat_interleave`` of the per-system edge counts).

Run: ``bash benchmarks/gpu_suite.sh`` (or ``python benchmarks/gpu_suite.py --device cuda``);
``--smoke`` runs every part at tiny sizes (CPU is fine), as the tests do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from large_systems import PAPER  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30

#: the paper's models (configs/models/*.yml), layers as named
MODELS = {
    "L6-M2-Lay12": dict(PAPER, num_layers=12),
    "L6-M3-Lay20": dict(
        PAPER, mmax_list=[3], sphere_channels=160, hidden_channels=384, num_layers=20
    ),
}
#: tiny stand-ins for --smoke
SMOKE = dict(
    PAPER, lmax_list=[2], mmax_list=[1], sphere_channels=8, hidden_channels=8, edge_channels=8,
    num_sphere_samples=16, num_layers=2, cutoff=6.0, max_neighbors=12,
)  # fmt: skip
PRECISIONS = ("fp32", "tf32", "bf16")


# --- helpers ------------------------------------------------------------------------------


@contextlib.contextmanager
def precision(name: str, device: str) -> Iterator[None]:
    """fp32 (no TF32), TF32 matmuls, or bf16 autocast."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = name == "tf32"
    try:
        if name == "bf16":
            with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                yield
        else:
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def timed_calls(fn: Callable[[], object], device: str, warmup: int, repeats: int) -> dict:
    """Median seconds of ``repeats`` calls after ``warmup``, and the peak memory of one."""
    for _ in range(warmup):
        fn()
    peak = common.peak_memory_mib(fn, device)["peak_increase_mib"] if device != "cpu" else None
    times = [common.timed(fn, device) for _ in range(repeats)]
    return dict(time_s=statistics.median(times), times_s=times, peak_mib=peak)


def bulk_pt(num_atoms: int):
    """Rattled bulk fcc Pt with about ``num_atoms`` atoms (cubic cells of 4, k x k x m)."""
    from ase.build import bulk

    cells = max(1, round(num_atoms / 4))
    k = max(1, round(cells ** (1 / 3)))
    m = max(1, round(cells / (k * k)))
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True) * (k, k, m)
    atoms.rattle(0.05, seed=0)
    atoms.wrap()
    return atoms


def bulk_batch(num_atoms: int, device: str):
    from large_systems import model_batch

    return model_batch(bulk_pt(num_atoms), device)


def build_ours(config: dict, device: str, **overrides):
    import escn_plugin

    torch.manual_seed(0)
    return escn_plugin.eSCN(**{**config, **overrides}).to(device)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


# --- parts --------------------------------------------------------------------------------


def part_train_step(args) -> dict:
    """Forward+backward, ours vs the reference, three precisions."""
    runs = [("L6-M2-Lay12", 6), ("L6-M3-Lay20", 2)] if not args.smoke else [("smoke", 2)]
    warmup, repeats = (0, 1) if args.smoke else (2, 5)
    out = {}
    for name, systems in runs:
        config = SMOKE if args.smoke else MODELS[name]
        size = (2, 2, 2) if args.smoke else (4, 4, 4)
        batch = common.slab_batch(systems, size=size, device=args.device)
        ref, ours = common.build_pair(config, args.device)
        entry = dict(systems=systems, atoms=int(batch.natoms.sum()))
        with torch.no_grad(), common.reference_uses_our_frame(ref):  # fp32 agreement
            a, b = ref(batch), ours(batch)
        entry["agreement_fp32"] = {k: relative(b[k], a[k]) for k in ("energy", "forces")}
        for prec in PRECISIONS:
            row = {}
            for label, model in (("reference", ref), ("ours", ours)):
                try:
                    with precision(prec, args.device):
                        row[label] = timed_calls(
                            lambda m=model, b=batch: common.forward_backward(m, b),
                            args.device, warmup, repeats,
                        )  # fmt: skip
                except Exception as error:  # e.g. the reference under bf16
                    row[label] = dict(error=f"{type(error).__name__}: {error}"[:300])
            if "time_s" in row["reference"] and "time_s" in row["ours"]:
                row["speedup"] = row["reference"]["time_s"] / row["ours"]["time_s"]
            entry[prec] = row
        out[name] = entry
        del ref, ours
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def part_inference(args) -> dict:
    """Atoms/s of inference (graph included), blocked and whole graph, and peak per atom."""
    sizes = [64, 256] if args.smoke else [1000, 10000]
    config = SMOKE if args.smoke else MODELS["L6-M2-Lay12"]
    warmup, repeats = (0, 1) if args.smoke else (1, 2)
    out = {}
    for num_atoms in sizes:
        batch = bulk_batch(num_atoms, args.device)
        n = int(batch.natoms.sum())
        entry = dict(atoms=n)
        for label, overrides in (
            ("blocked", {}),
            ("whole graph", dict(inference_block_edges=0)),
            ("blocked, 1 layer", dict(num_layers=1)),
        ):
            model = build_ours(config, args.device, **overrides).eval()
            for prec in ("fp32", "tf32") if label == "blocked" else ("tf32",):
                try:
                    with torch.no_grad(), precision(prec, args.device):
                        row = timed_calls(
                            lambda m=model, b=batch: m(b), args.device, warmup, repeats
                        )
                        graph = timed_calls(
                            lambda m=model, b=batch: m.prepare_graph(b), args.device, 0, 1
                        )
                except Exception as error:  # whole graph out of memory
                    row, graph = dict(error=f"{type(error).__name__}: {error}"[:300]), {}
                if "time_s" in row:
                    row["atoms_per_s"] = n / row["time_s"]
                    row["graph_s"] = graph.get("time_s")
                    if row["peak_mib"] is not None:
                        row["kib_per_atom"] = 1024 * row["peak_mib"] / n
                entry[f"{label}, {prec}"] = row
            del model
        out[str(num_atoms)] = entry
    return out


def search_largest(fits: Callable[[int], bool], start: int, growth: float, tries: int) -> dict:
    """The largest size ``fits`` accepts, searching from ``start``: grow by ``growth`` while
    it fits (shrink while it does not), at most ``tries`` calls; returns the largest size
    seen to fit and the smallest seen to fail."""
    largest, smallest_failed, n = None, None, int(start)
    for _ in range(tries):
        if fits(n):
            largest = n if largest is None else max(largest, n)
            if smallest_failed is not None and smallest_failed <= n * growth:
                n = (n + smallest_failed) // 2
            else:
                n = int(n * growth)
        else:
            smallest_failed = n if smallest_failed is None else min(smallest_failed, n)
            n = (largest + n) // 2 if largest is not None else int(n / growth)
        close = largest is not None and smallest_failed is not None
        if close and smallest_failed - largest <= 0.03 * largest:
            break
    return dict(largest=largest, smallest_failed=smallest_failed)


def part_largest(args, results: dict) -> dict:
    """The largest L6-M2 system one inference fits in ``--memory-gib`` (1 layer; then 12)."""
    config = SMOKE if args.smoke else MODELS["L6-M2-Lay12"]
    budget = args.memory_gib * GIB
    cuda = args.device.startswith("cuda")
    if cuda:
        total = torch.cuda.get_device_properties(args.device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget / total), args.device)
    one_layer = build_ours(config, args.device, num_layers=1).eval()
    calls = []

    def fits(num_atoms: int) -> bool:
        batch = bulk_batch(num_atoms, args.device)
        start = time.perf_counter()
        try:
            with torch.no_grad(), precision("tf32", args.device):
                if cuda:
                    torch.cuda.reset_peak_memory_stats(args.device)
                one_layer(batch)
                peak = torch.cuda.max_memory_allocated(args.device) if cuda else None
            ok = peak is None or peak <= budget
        except torch.cuda.OutOfMemoryError:
            ok, peak = False, None
        if not cuda:  # CPU (smoke): the estimate stands in for the allocator
            memory = one_layer.inference_memory
            peak = memory.persistent_bytes(num_atoms, 20 * num_atoms, 4)
            ok = peak <= budget
        calls.append(dict(atoms=int(batch.natoms.sum()), fits=ok, peak_gib=(peak or 0) / GIB,
                          s=time.perf_counter() - start))  # fmt: skip
        del batch
        if cuda:
            torch.cuda.empty_cache()
        return ok

    per_atom = None  # bytes per atom from part 2 (10,000 atoms, 1 layer, blocked)
    for entry in results.get("inference", {}).values():
        row = entry.get("blocked, 1 layer, tf32", {}) if isinstance(entry, dict) else {}
        if row.get("peak_mib"):
            per_atom = row["peak_mib"] * 2**20 / entry["atoms"]
    start = int(0.9 * budget / per_atom) if per_atom else (64 if args.smoke else 100_000)
    found = search_largest(fits, start, growth=1.25, tries=3 if args.smoke else 4)
    out = dict(memory_gib=args.memory_gib, start=start, calls=calls, **found)
    if found["largest"] and not args.smoke and time.perf_counter() < args.deadline - 150:
        deep = build_ours(config, args.device).eval()
        batch = bulk_batch(found["largest"], args.device)
        with torch.no_grad(), precision("tf32", args.device):
            row = timed_calls(lambda: deep(batch), args.device, 0, 1)
        out["twelve_layers"] = dict(atoms=int(batch.natoms.sum()), **row)
    if cuda:
        torch.cuda.set_per_process_memory_fraction(1.0, args.device)
        out["extrapolated_full_device_atoms"] = (
            int(found["largest"] * total / budget) if found["largest"] else None
        )
    return out


def _compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict:
    return {
        k: "bit-identical" if torch.equal(a[k], b[k]) else f"max |diff| {relative(a[k], b[k]):.2e}"
        for k in a
    }


def part_determinism(args) -> dict:
    """The same computation twice, compared bit for bit."""
    config = SMOKE if args.smoke else MODELS["L6-M2-Lay12"]
    batch = common.slab_batch(2 if args.smoke else 6, size=(2, 2, 2) if args.smoke else (4, 4, 4),
                              device=args.device)  # fmt: skip
    big = bulk_batch(256 if args.smoke else 1000, args.device)
    model = build_ours(config, args.device)

    def train_step() -> dict[str, torch.Tensor]:
        model.train().zero_grad(set_to_none=True)
        out = model(batch)
        common.training_loss(out).backward()
        grads = {f"grad {n}": p.grad.clone() for n, p in model.named_parameters()}
        return {"energy": out["energy"].detach(), "forces": out["forces"].detach(), **grads}

    def inference() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            out = model.eval()(big)
        return {"energy": out["energy"], "forces": out["forces"]}

    out = {}
    for name, fn in (("forward+backward", train_step), ("blocked inference", inference)):
        result = _compare(fn(), fn())
        differ = sorted(k for k, v in result.items() if v != "bit-identical")
        out[name] = dict(
            identical=not differ, tensors=len(result), differ=differ[:20],
            detail={k: result[k] for k in differ[:20]},
        )  # fmt: skip
        if differ:
            torch.use_deterministic_algorithms(True, warn_only=True)
            try:
                again = _compare(fn(), fn())
            finally:
                torch.use_deterministic_algorithms(False)
            out[name]["with_deterministic_algorithms"] = sorted(
                k for k, v in again.items() if v != "bit-identical"
            )[:20]
    return out


def part_syncs(args) -> dict:
    """No synchronising call inside the interaction layers; where the others are. On the
    CPU (``--smoke``) the same calls run without the check."""
    from escn_plugin.common.edge_groups import message_edges
    from escn_plugin.nn import blocked

    cuda = args.device.startswith("cuda")
    config = SMOKE if args.smoke else MODELS["L6-M2-Lay12"]
    batch = common.slab_batch(2 if args.smoke else 6, device=args.device)
    model = build_ours(config, args.device)
    z = batch.atomic_numbers.long()
    graph = model.prepare_graph(batch)
    x = model.embed_atoms(z)
    vec, dist = graph.edge_distance_vec, graph.edge_distance
    wigner, basis, weight = model.edge_tensors(vec, dist, None, x.dtype)
    edges = message_edges(wigner, graph.edge_index, x.shape[0])
    plan = blocked.plan_blocks(graph.edge_index, x.shape[0], 200 if args.smoke else 2000)

    def layers_forward_backward():
        y = model.run_layers(x, basis, z, graph.edge_index, edges, weight)
        y.square().sum().backward(retain_graph=True)

    def layers_blocked():
        with torch.no_grad():
            blocked.run_blocked_layers(
                model.layers, x.detach().clone(), z, graph.edge_index, plan,
                lambda e: model.edge_tensors(vec[e], dist[e], None, x.dtype),
            )  # fmt: skip

    out = dict(blocks=len(plan.blocks))
    for name, fn in (("layers, forward+backward", layers_forward_backward),
                     ("layers, blocked inference", layers_blocked)):  # fmt: skip
        fn()  # warm up (cuBLAS handles, caches)
        if not cuda:
            out[name] = "ran (the synchronisation check needs CUDA)"
            continue
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn()
            out[name] = "no synchronising call"
        except RuntimeError as error:
            out[name] = f"SYNC: {str(error).splitlines()[0][:300]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sites: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if cuda:
            torch.cuda.set_sync_debug_mode("warn")
        try:
            with torch.no_grad():
                model.eval()(batch)
        finally:
            if cuda:
                torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):
            site = f"{Path(w.filename).name}:{w.lineno}"
            sites[site] = sites.get(site, 0) + 1
    out["whole forward, synchronising call sites"] = sites if cuda else "needs CUDA"
    return out


PARTS = {  # in the order they run: the cheap checks before the long search
    "train_step": part_train_step,
    "inference": part_inference,
    "determinism": part_determinism,
    "syncs": part_syncs,
    "largest": part_largest,
}


# --- report -------------------------------------------------------------------------------


def _ms(row: dict) -> str:
    return f"{1000 * row['time_s']:.1f}" if "time_s" in row else row.get("error", "-")[:60]


def _mib(row: dict) -> str:
    return "-" if row.get("peak_mib") is None else f"{row['peak_mib']:.0f}"


def report(machine: dict, results: dict) -> str:
    lines = ["# GPU suite", "", *common.machine_lines(machine), ""]
    steps = results.get("train_step", {})
    if isinstance(steps, dict) and "error" not in steps:
        lines += ["## Forward+backward, ours vs the reference", ""]
        rows = []
        for name, entry in steps.items():
            for prec in PRECISIONS:
                row = entry.get(prec, {})
                ref, ours = row.get("reference", {}), row.get("ours", {})
                speedup = f"{row['speedup']:.2f}x" if "speedup" in row else "-"
                rows.append([name, entry["atoms"], prec, _ms(ref), _ms(ours), speedup,
                             _mib(ref), _mib(ours)])  # fmt: skip
        header = ["model", "atoms", "precision", "reference ms", "ours ms", "speed-up",
                  "reference MiB", "ours MiB"]  # fmt: skip
        lines += [common.markdown_table(header, rows), ""]
        for name, entry in steps.items():
            agree = entry.get("agreement_fp32", {})
            lines.append(
                f"- {name}: fp32 outputs vs the reference (same frames), max relative "
                + ", ".join(f"{k} {v:.1e}" for k, v in agree.items())
            )
        lines.append("")
    inference = results.get("inference", {})
    if isinstance(inference, dict) and "error" not in inference:
        lines += ["## Inference (L6-M2, graph built in the call)", ""]
        rows = []
        for entry in inference.values():
            for label, row in entry.items():
                if label == "atoms":
                    continue
                rate = f"{row['atoms_per_s']:.0f}" if "atoms_per_s" in row else _ms(row)
                kib = f"{row['kib_per_atom']:.1f}" if "kib_per_atom" in row else "-"
                graph = f"{row['graph_s']:.2f}" if row.get("graph_s") else "-"
                rows.append([entry["atoms"], label, rate, graph, _mib(row), kib])
        header = ["atoms", "run", "atoms/s", "graph s", "peak MiB", "KiB/atom"]
        lines += [common.markdown_table(header, rows), ""]
    largest = results.get("largest", {})
    if isinstance(largest, dict) and "largest" in largest:
        lines += [
            "## Largest system",
            "",
            f"- largest L6-M2 inference in {largest['memory_gib']} GiB: "
            f"{largest['largest']} atoms (1 layer; failed at {largest['smallest_failed']})",
        ]
        if "twelve_layers" in largest:
            deep = largest["twelve_layers"]
            lines.append(
                f"- 12 layers at {deep['atoms']} atoms: {deep['time_s']:.1f} s, peak "
                f"{_mib(deep)} MiB"
            )
        if largest.get("extrapolated_full_device_atoms"):
            lines.append(
                f"- whole device (extrapolated): ~{largest['extrapolated_full_device_atoms']} atoms"
            )
        lines.append("")
    for name in ("determinism", "syncs"):
        part = results.get(name)
        if part is not None:
            lines += [f"## {name}", "", "```", json.dumps(part, indent=1)[:4000], "```", ""]
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    if errors:
        lines += ["## Parts that failed", ""]
        lines += [f"- {k}: {v.splitlines()[-1] if v else v}" for k, v in errors.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="every part at tiny sizes")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    parser.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results" / "gpu"))
    parser.add_argument("--budget-s", type=float, default=420, help="skip parts after this")
    parser.add_argument("--memory-gib", type=float, default=24.0, help="for part 'largest'")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    if args.smoke:
        args.memory_gib = 0.004
    common.setup_torch(args.device, None)
    started = time.perf_counter()
    args.deadline = started + args.budget_s
    machine = common.machine_info(args.device)
    results: dict = {}
    elapsed: dict[str, float] = {}
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def write() -> str:  # after every part: a run cut short still leaves its report
        machine["elapsed_s"] = round(time.perf_counter() - started, 1)
        machine["parts_elapsed_s"] = elapsed
        markdown = report(machine, results)
        (out / "report.md").write_text(markdown + "\n")
        payload = dict(machine=machine, args=vars(args), results=results)
        (out / "report.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
        return markdown

    for name in args.parts:
        if time.perf_counter() > args.deadline:
            results[name] = dict(error=f"skipped: the {args.budget_s:.0f} s budget was spent")
            continue
        print(f"[gpu_suite] {name} ...", flush=True)
        start = time.perf_counter()
        try:
            fn = PARTS[name]
            results[name] = fn(args, results) if name == "largest" else fn(args)
        except Exception:
            results[name] = dict(error=traceback.format_exc()[-3000:])
            print(results[name]["error"], flush=True)
        elapsed[name] = round(time.perf_counter() - start, 1)
        write()
    print(write())
    print(f"\nwrote {out / 'report.md'}, {out / 'report.json'}")
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    return 1 if failed and args.smoke else 0


if __name__ == "__main__":
    sys.exit(main())
