"""Cost of gradient forces (and stress) vs direct forces: time and tensor memory.

Same model size (default L6-M2, C = 128, H = 256, 2 layers on CPU), same weights where
shared, same batch (one OC20-like 65-atom slab, graph built on the fly at 12 A / 20
neighbours as the paper's configs, so every mode sees the same edges). Modes:

* ``direct``: the paper's force head;
* ``gradient``: forces = -dE/dpos (``direct_forces: False``);
* ``gradient+stress``: also stress = dE/d(strain) / V (``regress_stress: True``).

For each: a training step (forward, energy + force loss, backward; the gradient modes
differentiate through the force computation, ``create_graph``) and inference
(``torch.no_grad`` as fairchem's predict: the gradient modes still run one backward pass).
Time: median process CPU time of interleaved repeats (1 thread). Memory: peak bytes held
by tensors during one call above those held before (torch.profiler memory events). With
``--device cuda``: synchronised wall time and ``torch.cuda.max_memory_allocated``.

    python benchmarks/energy_gradients_cost.py --threads 1 \
        --out benchmarks/results/cpu_energy_gradients_cost
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _memory import peak_live_tensors_mib  # noqa: E402  (benchmarks/, the script's folder)

SIZES = {
    "L6-M2": dict(lmax_list=[6], mmax_list=[2], sphere_channels=128, hidden_channels=256),
    "small": dict(lmax_list=[2], mmax_list=[1], sphere_channels=32, hidden_channels=64),
}
MODES = {
    "direct": dict(direct_forces=True),
    "gradient": dict(direct_forces=False),
    "gradient+stress": dict(direct_forces=False, regress_stress=True),
}


def slab_batch():
    from ase.build import add_adsorbate, fcc111, molecule
    from fairchem.core.preprocessing import AtomsToGraphs
    from scipy.spatial.transform import Rotation
    from torch_geometric.data import Batch

    atoms = fcc111("Cu", size=(4, 4, 4), vacuum=7.0, periodic=True)
    add_adsorbate(atoms, molecule("CO"), 1.8, "fcc")
    atoms.rattle(0.05, seed=0)
    rot = Rotation.from_euler("xyz", (0.3, 0.7, 1.1)).as_matrix()
    atoms.set_positions(atoms.get_positions() @ rot.T)
    atoms.set_cell(atoms.get_cell()[:] @ rot.T)
    atoms.wrap()
    data = AtomsToGraphs(r_edges=False, r_fixed=True, r_pbc=True).convert(atoms)
    data.tags = torch.zeros(len(atoms), dtype=torch.long)
    return Batch.from_data_list([data])


def build(size: str, layers: int, mode: str):
    import escn_plugin

    torch.manual_seed(0)
    return escn_plugin.eSCN(
        num_layers=layers,
        edge_channels=128 if size == "L6-M2" else 32,
        cutoff=12.0,
        max_neighbors=20,
        otf_graph=True,
        distance_resolution=0.02,
        basis_width_scalar=2.0,
        **SIZES[size],
        **MODES[mode],
    )


def train_step(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(batch)
    loss = out["energy"].abs().sum() + out["forces"].norm(dim=-1).mean()
    if "stress" in out:
        loss = loss + out["stress"].abs().mean()
    loss.backward()


def inference(model, batch):
    model.eval()
    with torch.no_grad():
        model(batch)


def cuda_peak_mib(fn) -> float:
    """Peak CUDA memory of one call above what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def clock(device: str) -> float:
    """Process CPU time on the CPU; synchronised wall time on a GPU."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", default="L6-M2", choices=sorted(SIZES))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    batch = slab_batch().to(args.device)
    models = {mode: build(args.size, args.layers, mode).to(args.device) for mode in MODES}
    with torch.no_grad():
        edges = models["direct"].generate_graph(batch).edge_index.shape[1]
    fns = {}
    for mode, model in models.items():
        fns[f"{mode} train step"] = lambda m=model: train_step(m, batch)
        fns[f"{mode} inference"] = lambda m=model: inference(m, batch)
    for fn in fns.values():  # warm-up
        fn()
    samples = {name: [] for name in fns}
    for rep in range(args.repeats):
        for name in fns if rep % 2 == 0 else list(fns)[::-1]:
            start = clock(args.device)
            fns[name]()
            samples[name].append(clock(args.device) - start)
    peak = cuda_peak_mib if args.device.startswith("cuda") else peak_live_tensors_mib
    rows = {}
    for name, fn in fns.items():
        rows[name] = dict(cpu_s=statistics.median(samples[name]), peak_mib=peak(fn))
        print(name, json.dumps(rows[name]), flush=True)
    results = dict(
        size=args.size,
        layers=args.layers,
        atoms=int(batch.natoms.sum()),
        edges=int(edges),
        threads=args.threads,
        device=args.device,
        torch=torch.__version__,
        rows=rows,
    )
    md = report(results)
    print(md)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
        Path(args.out).with_suffix(".md").write_text(md)
    return results


def report(results: dict) -> str:
    rows = results["rows"]
    lines = [
        f"{results['size']}, {results['layers']} layers, {results['atoms']} atoms, "
        f"{results['edges']} edges, {results['threads']} thread(s), "
        + (
            "CPU time (median)"
            if results.get("device", "cpu") == "cpu"
            else f"wall time on {results['device']} (median; the 's' columns)"
        ),
        "",
        "| mode | train step (s) | vs direct | train peak (MiB) | vs direct "
        "| inference (s) | vs direct | inference peak (MiB) | vs direct |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base_t, base_i = rows["direct train step"], rows["direct inference"]
    for mode in MODES:
        t, i = rows[f"{mode} train step"], rows[f"{mode} inference"]
        lines.append(
            f"| {mode} | {t['cpu_s']:.2f} | {t['cpu_s'] / base_t['cpu_s']:.2f}x | "
            f"{t['peak_mib']:.0f} | {t['peak_mib'] / base_t['peak_mib']:.2f}x | "
            f"{i['cpu_s']:.2f} | {i['cpu_s'] / base_i['cpu_s']:.2f}x | "
            f"{i['peak_mib']:.0f} | {i['peak_mib'] / base_i['peak_mib']:.2f}x |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
