"""Energy jump when an edge crosses a boundary between edge-frame charts, vs the S2 grids.

Edge frames are chart-based (:mod:`escn_plugin.so3.edge_frame`): the helper axis is the
coordinate axis least aligned with the edge, so the frame's roll about the edge jumps where
two of |x|, |y|, |z| of the edge direction are equal. The SO(2) convolution is exactly roll
equivariant, the point-wise SiLU on the edge-frame S2 grid only approximately (aliasing of
the non-band-limited SiLU output on ``res_alpha`` points), so the energy jumps by a small
amount at each crossing. Gradient forces miss that jump; in MD it is energy that appears
from nowhere.

Measurement (float64, graph precomputed and held fixed): rotate the structure so that one
chosen edge points at (s, c, s) / |.| (|x| = |z|: on a chart boundary), then turn the whole
structure about +y by -delta and +delta (delta = 1e-9 rad). Only that edge (and its
reverse) changes chart between the two; the smooth part of the energy changes by
O(delta * torque) ~ 1e-9 of the energy scale, far below the jumps. Repeated for ``--edges``
edges; reported: max and median |E(+delta) - E(-delta)| per grid.

Also reported per grid: float32 rotation error of forces (max over atoms of
|F(R x) - R F(x)| / max |F|, random rotations), the conservative configs' second target.

    python benchmarks/chart_jump.py --threads 1     # L6-M2, 2 layers, random 1/sqrt(fan_in) init
    python benchmarks/chart_jump.py --checkpoint ckpt.pt --energy-scale-ev 0.9
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.spatial.transform import Rotation

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

F64 = torch.float64
DEVICE = {"name": "cpu"}  # set by --device

L6_M2 = dict(
    num_layers=2,
    lmax_list=[6],
    mmax_list=[2],
    sphere_channels=32,
    hidden_channels=64,
    edge_channels=32,
    cutoff=6.0,
    max_neighbors=300,
    enforce_max_neighbors_strictly=False,
    distance_resolution=0.05,
    basis_width_scalar=2.0,
    otf_graph=False,
    direct_forces=False,
    envelope_exponent=5,
    energy_scale=1.0,
)


def structure(name: str = "slab"):
    """``slab``: a rattled Cu(111)+O slab (13 atoms), the tests' first slab; ``bulk_cu``:
    the 32-atom fcc Cu cell of benchmarks/conservative_md.py, rattled by 0.05 A."""
    if name == "bulk_cu":
        from ase.build import bulk

        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.05, seed=3)
        return atoms
    from structures import slabs

    return slabs()[0]


def rotation_taking(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A rotation matrix R with R a = b (unit vectors)."""
    rot, _ = Rotation.align_vectors(b[None], a[None])
    return rot.as_matrix()


def rotated(atoms, rot: np.ndarray):
    from structures import rotate_atoms

    return rotate_atoms(atoms, rot)


def batch_of(atoms, cutoff: float, dtype=F64):
    from structures import make_batch

    return make_batch([atoms], dtype=dtype, radius=cutoff, max_neigh=300).to(DEVICE["name"])


def chart_of(vec: torch.Tensor) -> torch.Tensor:
    return (vec / vec.norm(dim=-1, keepdim=True)).abs().argmin(dim=-1)


def edge_vectors(model, batch) -> torch.Tensor:
    from escn_plugin.model.inputs import edge_vectors as exact_edge_vectors

    graph = model.generate_graph(batch)
    vec, _ = exact_edge_vectors(
        batch.pos, batch.cell, batch.batch, graph.edge_index, graph.cell_offsets
    )
    return vec


def jumps(model, atoms, num_edges: int, delta: float = 1e-9, seed: int = 0) -> list[float]:
    cutoff = model.cutoff
    base = batch_of(atoms, cutoff)
    with torch.no_grad():
        vecs = edge_vectors(model, base)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vecs), size=min(num_edges, len(vecs)), replace=False)
    target = np.array([0.45, 1.0, 0.45])
    target /= np.linalg.norm(target)
    out = []
    for e in picks:
        v = vecs[e].cpu().numpy()
        r0 = rotation_taking(v / np.linalg.norm(v), target)
        energies, charts = [], []
        for sign in (-1.0, 1.0):
            turn = Rotation.from_rotvec([0.0, sign * delta, 0.0]).as_matrix()
            b = batch_of(rotated(atoms, turn @ r0), cutoff)
            with torch.no_grad():
                energies.append(model(b)["energy"].sum().item())
                charts.append(chart_of(edge_vectors(model, b)))
        changed = int((charts[0] != charts[1]).sum())
        if changed == 0:  # the graph came out in another edge order or missed: skip
            continue
        out.append(abs(energies[1] - energies[0]))
    return out


def rotation_error_float32(model, atoms, seeds=(1, 2, 3)) -> float:
    model = model.float()
    errs = []
    for seed in seeds:
        rot = Rotation.random(random_state=seed).as_matrix()
        a = model(batch_of(atoms, model.cutoff, torch.float32))
        b = model(batch_of(rotated(atoms, rot), model.cutoff, torch.float32))
        r = torch.as_tensor(rot, dtype=torch.float32, device=DEVICE["name"])
        f = a["forces"].detach()
        errs.append(((f @ r.T - b["forces"].detach()).abs().max() / f.abs().max()).item())
    model.double()
    return max(errs)


def spread_weights_(model: torch.nn.Module, seed: int = 1) -> None:
    """Weights at a 1/sqrt(fan_in) scale (embeddings N(0, 1)): fairchem's default init gives
    an untrained eSCN almost no dependence on geometry (jumps ~1e-17 eV, meaningless)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device)
            if "embedding" in name:
                p.copy_(noise)
            elif p.dim() == 2:
                p.copy_(noise / p.shape[1] ** 0.5)
            else:
                p.copy_(0.1 * noise)


def build(config: dict, seed: int = 0):
    import escn_plugin

    torch.manual_seed(seed)
    return escn_plugin.eSCN(**config).to(F64).to(DEVICE["name"]).eval()


def scales(model, atoms) -> dict:
    out = model(batch_of(atoms, model.cutoff))
    return dict(
        energy=out["energy"].item(),
        max_force=out["forces"].abs().max().item(),
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--edges", type=int, default=8)
    parser.add_argument(
        "--grids",
        default="default;14,9;14,15;16,21;18,25",
        help="semicolon-separated res_beta,res_alpha pairs ('default' = the reference's)",
    )
    parser.add_argument("--readout-grid", default="16,17", help="res_beta,res_alpha or none")
    parser.add_argument("--checkpoint", help="a fairchem checkpoint of escn_plugin.eSCN")
    parser.add_argument(
        "--energy-scale-ev",
        type=float,
        default=1.0,
        help="multiply energies by this (the normaliser rmsd of a trained checkpoint)",
    )
    parser.add_argument("--structure", default="slab", choices=["slab", "bulk_cu"])
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but torch.cuda.is_available() is False")
    DEVICE["name"] = args.device

    config, state = dict(L6_M2), None
    if args.checkpoint:
        ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
        config = {k: v for k, v in ckpt["config"]["model"].items() if k != "name"}
        config["otf_graph"] = False
        state = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
        if ckpt.get("ema") is not None:
            print("note: using the raw (non-EMA) weights of the checkpoint")
    readout = (
        None if args.readout_grid == "none" else [int(x) for x in args.readout_grid.split(",")]
    )
    atoms = structure(args.structure)
    results = []
    for grid in args.grids.split(";"):
        res = None if grid == "default" else [int(x) for x in grid.split(",")]
        cfg = {**config, "resolution": res, "readout_grid": readout}
        model = build(cfg)
        if state is not None:
            model.load_state_dict(state)  # copies onto the model's device
        else:
            spread_weights_(model)
        scale = scales(model, atoms)
        start = time.process_time()
        found = np.array(jumps(model, atoms, args.edges)) * args.energy_scale_ev
        rot_err = rotation_error_float32(model, atoms)
        row = dict(
            resolution=grid,
            readout_grid=args.readout_grid,
            edges=len(found),
            max_jump_ev=float(found.max()) if len(found) else None,
            median_jump_ev=float(np.median(found)) if len(found) else None,
            force_rotation_error_f32=rot_err,
            energy_ev=scale["energy"] * args.energy_scale_ev,
            max_force_ev_per_a=scale["max_force"] * args.energy_scale_ev,
            cpu_s=time.process_time() - start,
        )
        print(json.dumps(row), flush=True)
        results.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(dict(config=config, results=results), indent=1))
    return dict(results=results)


if __name__ == "__main__":
    main()
