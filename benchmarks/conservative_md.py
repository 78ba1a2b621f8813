"""NVE energy conservation: a conservative eSCN (forces = -dE/dx) vs the direct one.

Both models are trained with the stock ``fairchem --mode train`` on the same small EMT
data set (frames of a 32-atom fcc Cu cell from EMT Langevin MD at 300-900 K, written with
:func:`escn_plugin.datasets.oc20_emt.write_lmdb`), same architecture, grids, optimiser and
number of steps; they differ only in ``direct_forces``. Then each drives ASE's
VelocityVerlet (1 fs, velocities drawn at 300 K) through fairchem's ``OCPCalculator`` with
its checkpoint, and the total energy E_tot = E_pot + E_kin is recorded every step.

Reported per model: drift = slope of a straight-line fit of E_tot(t) per atom (eV/atom/ps),
the standard deviation of E_tot (eV), the std of E_kin (for scale), force MAE on the
validation frames, and CPU time. EMT itself on the same run is the floor.

    python benchmarks/conservative_md.py --threads 1 --out benchmarks/results/cpu_conservative_md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from escn_plugin.workflows.fairchem_runner import run_fairchem  # noqa: E402

MODEL = dict(
    name="escn_plugin.eSCN",
    num_layers=2,
    lmax_list=[2],
    mmax_list=[2],
    sphere_channels=16,
    hidden_channels=32,
    edge_channels=16,
    cutoff=4.0,
    max_neighbors=300,
    enforce_max_neighbors_strictly=False,
    distance_resolution=0.1,
    basis_width_scalar=2.0,
    envelope_exponent=5,
    energy_scale=1.0,
    resolution=[12, 15],
    readout_grid=[10, 11],
    otf_graph=True,
    use_pbc=True,
    regress_forces=True,
)


def bulk_cu():
    from ase.build import bulk

    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))  # 32 atoms


def emt_frames(n: int, seed: int, temperatures=(300.0, 600.0, 900.0), every: int = 10):
    """``n`` snapshots from EMT Langevin MD of the Cu cell, cycling the temperatures."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    rng = np.random.default_rng(seed)
    frames = []
    per_run = n // len(temperatures) + 1
    for temp in temperatures:
        atoms = bulk_cu()
        atoms.calc = EMT()
        MaxwellBoltzmannDistribution(atoms, temperature_K=temp, rng=rng)
        dyn = Langevin(atoms, 2 * units.fs, temperature_K=temp, friction=0.02, rng=rng)
        dyn.run(50)  # equilibrate
        for _ in range(per_run):
            dyn.run(every)
            frame = atoms.copy()
            frame.calc = EMT()
            frames.append(frame)
    return frames[:n]


def write_split(path: Path, frames, sid0: int) -> None:
    import torch
    from fairchem.core.preprocessing import AtomsToGraphs

    from escn_plugin.datasets.oc20_emt import write_lmdb

    a2g = AtomsToGraphs(r_energy=True, r_forces=True, r_edges=False, r_fixed=True, r_pbc=True)
    records = []
    for i, atoms in enumerate(frames):
        data = a2g.convert(atoms)
        data.y = float(atoms.get_potential_energy())
        data.force = torch.as_tensor(atoms.get_forces(), dtype=torch.float32)
        del data.energy, data.forces
        data.tags = torch.ones(len(atoms), dtype=torch.long)
        data.sid, data.fid = sid0 + i, 0
        records.append(data)
    write_lmdb(path / "data.lmdb", records)


def make_data(root: Path, n_train: int, n_val: int) -> dict:
    stats_file = root / "stats.json"
    if stats_file.exists():
        return json.loads(stats_file.read_text())
    train, val = emt_frames(n_train, seed=0), emt_frames(n_val, seed=1)
    write_split(root / "train", train, 0)
    write_split(root / "val", val, n_train)
    energies = np.array([a.get_potential_energy() for a in train])
    forces = np.concatenate([a.get_forces() for a in train])
    stats = dict(
        energy_mean=float(energies.mean()),
        force_rms=float(np.sqrt((forces**2).sum(-1).mean() / 3)),
        n_train=n_train,
        n_val=n_val,
    )
    stats_file.write_text(json.dumps(stats))
    return stats


def train_config(root: Path, stats: dict, direct: bool, steps: int, batch: int) -> dict:
    # one scale for energy and forces: forces = -dE/dx must survive denormalisation
    scale = stats["force_rms"]
    normalizer = {
        "energy": {"mean": stats["energy_mean"], "rmsd": scale},
        "forces": {"mean": 0.0, "rmsd": scale},
    }
    split = lambda name: {  # noqa: E731
        "format": "lmdb",
        "src": str(root / name),
        "key_mapping": {"y": "energy", "force": "forces"},
        "transforms": {"normalizer": normalizer},
    }
    epochs = max(1, round(steps * batch / stats["n_train"]))
    return {
        "trainer": "ocp",
        "logger": "tensorboard",
        "outputs": {
            "energy": {"level": "system"},
            "forces": {"level": "atom", "train_on_free_atoms": True, "eval_on_free_atoms": True},
        },
        "loss_functions": [
            {"energy": {"fn": "per_atom_mae", "coefficient": 1}},
            {"forces": {"fn": "l2mae", "coefficient": 10}},
        ],
        "evaluation_metrics": {
            "metrics": {"energy": ["mae"], "forces": ["mae"]},
            "primary_metric": "forces_mae",
        },
        "dataset": {"train": split("train"), "val": split("val")},
        "model": {**MODEL, "direct_forces": direct},
        "optim": {
            "batch_size": batch,
            "eval_batch_size": batch,
            "num_workers": 0,
            "lr_initial": 0.004,
            "optimizer": "AdamW",
            "optimizer_params": {"amsgrad": True},
            "scheduler": "CosineAnnealingLR",
            "T_max": epochs * (stats["n_train"] // batch),
            "max_epochs": epochs,
            # fairchem saves checkpoint.pt only when it evaluates: once, at the end
            "eval_every": epochs * (stats["n_train"] // batch),
            "clip_grad_norm": 10,
        },
    }


def train(config: dict, workdir: Path, cpu: bool = True) -> tuple[Path, float]:
    workdir.mkdir(parents=True, exist_ok=True)
    ckpts = list(workdir.glob("checkpoints/*/checkpoint.pt"))
    if ckpts:
        return ckpts[0], float("nan")
    start = time.time()
    log = run_fairchem(config, workdir, "train", stream=False, cpu=cpu)  # passes config["seed"]
    (workdir / "train.log").write_text(log)
    return next(workdir.glob("checkpoints/*/checkpoint.pt")), time.time() - start


def force_mae(calc, frames) -> float:
    errs = []
    for ref in frames:
        atoms = ref.copy()
        atoms.calc = calc
        errs.append(np.abs(atoms.get_forces() - ref.get_forces()).mean())
    return float(np.mean(errs))


def nve(calc, steps: int, seed: int = 7) -> dict:
    """NVE from a rattled 32-atom Cu cell at 300 K, 1 fs steps."""
    from escn_plugin.workflows.md import nve_energy_drift

    atoms = bulk_cu()
    atoms.rattle(0.02, seed=seed)
    return nve_energy_drift(atoms, calc, steps=steps, timestep_fs=1.0, temperature_K=300, seed=seed)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", default="/tmp/escn_conservative_md")
    parser.add_argument("--n-train", type=int, default=120)
    parser.add_argument("--n-val", type=int, default=12)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per model")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--md-steps", type=int, default=1000, help="1 fs each")
    parser.add_argument(
        "--models",
        default="conservative,direct",
        help="which models to train and run (comma-separated; run them in two processes "
        "with --out A and --out B, then --combine A.json B.json)",
    )
    parser.add_argument("--combine", nargs="+", help="merge result JSONs into --out")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch
    from ase.calculators.emt import EMT
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    import escn_plugin  # noqa: F401  (registers the model for OCPCalculator)

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    stats = make_data(work / "data", args.n_train, args.n_val)
    val_frames = emt_frames(args.n_val, seed=1)
    results = {"stats": stats, "args": vars(args), "models": {}}
    results["emt"] = nve(EMT(), args.md_steps)
    print("EMT", json.dumps(results["emt"]), flush=True)
    for name, direct in (("conservative", False), ("direct", True)):
        if name not in args.models.split(","):
            continue
        config = train_config(work / "data", stats, direct, args.steps, args.batch)
        cpu = args.device == "cpu"
        ckpt, train_s = train(config, work / name, cpu)
        calc = OCPCalculator(checkpoint_path=str(ckpt), cpu=cpu, seed=0)
        row = dict(train_wall_s=train_s, val_force_mae=force_mae(calc, val_frames))
        row.update(nve(calc, args.md_steps))
        results["models"][name] = row
        print(name, json.dumps(row), flush=True)
    if set(results["models"]) != {"conservative", "direct"}:
        if args.out:
            Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
        return results
    add_ratio(results)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
        Path(args.out).with_suffix(".md").write_text(report(results))
    print(report(results))
    return results


def add_ratio(results: dict) -> None:
    cons, direct = results["models"]["conservative"], results["models"]["direct"]
    results["drift_ratio_direct_over_conservative"] = (
        direct["abs_drift_ev_per_atom_ps"] / cons["abs_drift_ev_per_atom_ps"]
    )


def combine(paths: list[str], out: str | None) -> dict:
    parts = [json.loads(Path(p).read_text()) for p in paths]
    results = dict(parts[0], models={})
    for part in parts:
        results["models"].update(part["models"])
    add_ratio(results)
    if out:
        Path(out).with_suffix(".json").write_text(json.dumps(results, indent=1))
        Path(out).with_suffix(".md").write_text(report(results))
    print(report(results))
    return results


def report(results: dict) -> str:
    rows = [("EMT (reference)", results["emt"], None)]
    rows += [(k, v, v["val_force_mae"]) for k, v in results["models"].items()]
    lines = [
        "| forces | drift (eV/atom/ps) | E_tot std (eV) | E_kin std (eV) "
        "| val force MAE (eV/A) | MD CPU s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r, mae in rows:
        lines.append(
            f"| {name} | {r['drift_ev_per_atom_ps']:.2e} | {r['etot_std_ev']:.2e} | "
            f"{r['ekin_std_ev']:.2e} | {'-' if mae is None else f'{mae:.3f}'} | {r['cpu_s']:.0f} |"
        )
    lines.append("")
    lines.append(
        f"|drift| direct / conservative: {results['drift_ratio_direct_over_conservative']:.0f}x"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
