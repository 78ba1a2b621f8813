"""Which dataset format should ``python -m escn_plugin.finetune`` train from?

The same EMT-labelled structures (bulk cells and slabs of Cu/Pt/Au alloys) through the three
ways fairchem 1.10 reads a user's structures:

- ``ase_read_multi``: fairchem's dataset over the extended-XYZ file itself;
- ``ase_db``: fairchem's dataset over an ASE (SQLite) database of them;
- ``lmdb``: an LMDB written once by :func:`escn_plugin.finetune.data.write_lmdb_split`.

Measured per format: one epoch of fairchem's DataLoader (its collater, batches of 8, the
trainer's ``num_workers: 0``) twice, CPU time; and one epoch of the stock
``fairchem --mode train`` with a tiny model (wall time of the epoch, from its log lines),
so the data cost is seen next to the model's.

    python benchmarks/finetune_data_formats.py --n 200 \
        --out benchmarks/results/finetune_data_formats
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TINY = dict(
    name="escn_plugin.eSCN",
    num_layers=1,
    lmax_list=[2],
    mmax_list=[1],
    sphere_channels=8,
    hidden_channels=8,
    edge_channels=8,
    num_sphere_samples=16,
    cutoff=4.5,
    max_neighbors=50,
    otf_graph=True,
    distance_resolution=0.1,
)


def structures(n: int, seed: int = 0) -> list:
    """``n`` EMT-labelled structures: rattled, strained fcc cells and slabs of Cu/Pt/Au."""
    from ase.build import bulk, fcc111
    from ase.calculators.emt import EMT
    from ase.data import atomic_numbers

    rng = np.random.default_rng(seed)
    metals = ("Cu", "Pt", "Au")
    out = []
    for i in range(n):
        host = metals[i % 3]
        if i % 4 == 3:
            atoms = fcc111(host, (2, 2, 3), vacuum=6.0)
        else:
            atoms = bulk(host, "fcc", a=3.9, cubic=True).repeat((2, 1, 1))
            strain = np.eye(3) + 0.02 * rng.normal(size=(3, 3))
            atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
        swap = rng.random(len(atoms)) < 0.3
        atoms.numbers[swap] = [atomic_numbers[m] for m in rng.choice(metals, swap.sum())]
        atoms.pbc = True
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_forces()
        out.append(atoms)
    return out


def write_formats(root: Path, frames: list) -> dict[str, dict]:
    """The three dataset configs (each with fairchem's a2g settings for training)."""
    import ase.db
    import ase.io

    from escn_plugin.finetune.data import Structure, _labelled, write_lmdb_split

    root.mkdir(parents=True, exist_ok=True)
    (root / "xyz").mkdir(exist_ok=True)
    ase.io.write(root / "xyz" / "train.extxyz", frames)
    db_path = root / "train.db"
    if db_path.exists():
        db_path.unlink()
    with ase.db.connect(db_path) as db:
        for atoms in frames:
            db.write(atoms)
    labelled: list[Structure] = [_labelled(a, "mem", i) for i, a in enumerate(frames)]
    lmdb_dir = write_lmdb_split(root / "lmdb", labelled, 0, stress=False)
    a2g = {"r_energy": True, "r_forces": True}
    return {
        "ase_read_multi": {
            "format": "ase_read_multi",
            "src": str(root / "xyz"),
            "pattern": "*.extxyz",
            "a2g_args": a2g,
        },
        "ase_db": {"format": "ase_db", "src": str(db_path), "a2g_args": a2g},
        "lmdb": {"format": "lmdb", "src": str(lmdb_dir)},
    }


def loader_epochs(config: dict, epochs: int = 2, batch_size: int = 8) -> list[float]:
    """CPU seconds of each pass over the dataset through fairchem's collater."""
    from fairchem.core.common.data_parallel import data_list_collater
    from fairchem.core.common.registry import registry
    from torch.utils.data import DataLoader

    start = time.process_time()
    dataset = registry.get_dataset_class(config["format"])(dict(config))
    setup = time.process_time() - start
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        collate_fn=partial(data_list_collater, otf_graph=True),
        num_workers=0,
    )
    times = []
    for _ in range(epochs):
        start = time.process_time()
        for _batch in loader:
            pass
        times.append(time.process_time() - start)
    return [setup, *times]


def train_epoch_seconds(config: dict, work: Path, n: int, cpu: bool = True) -> float:
    """Wall seconds of the second epoch of ``fairchem --mode train`` (tiny model), from the
    timestamps of its first and last step lines of that epoch."""
    from escn_plugin.workflows import fairchem_runner

    batch = 8
    per_epoch = -(-n // batch)
    cfg = {
        "trainer": "ocp",
        "logger": "tensorboard",
        "outputs": {
            "energy": {"level": "system"},
            "forces": {"level": "atom", "train_on_free_atoms": True, "eval_on_free_atoms": True},
        },
        "loss_functions": [
            {"energy": {"fn": "mae", "coefficient": 1}},
            {"forces": {"fn": "l2mae", "coefficient": 10}},
        ],
        "evaluation_metrics": {"metrics": {"energy": ["mae"]}, "primary_metric": "energy_mae"},
        "dataset": {"train": {**config, "key_mapping": None}},
        "model": TINY,
        "optim": {
            "batch_size": batch,
            "num_workers": 0,
            "lr_initial": 1e-3,
            "scheduler": "Null",
            "max_epochs": 2,
            "eval_every": 10 * per_epoch,
            "checkpoint_every": -1,
        },
    }
    cfg["dataset"]["train"].pop("key_mapping")
    log = fairchem_runner.run_fairchem(cfg, work, "train", stream=False, print_every=1, cpu=cpu)
    stamps = []
    for line in log.splitlines():
        step = re.search(r"step: ([0-9.eE+]+)", line)
        when = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", line)
        if step and when:
            stamps.append(
                (
                    float(step.group(1)),
                    time.mktime(time.strptime(when.group(1), "%Y-%m-%d %H:%M:%S")),
                )
            )
    first = [t for s, t in stamps if s == per_epoch]
    last = [t for s, t in stamps if s == 2 * per_epoch]
    return float(last[0] - first[0]) if first and last else float("nan")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="training")
    parser.add_argument("--n", type=int, default=200, help="structures")
    parser.add_argument("--work", default="/tmp/escn_finetune_formats")
    parser.add_argument("--no-train", action="store_true", help="data loading only")
    parser.add_argument("--out", help="write OUT.json and OUT.md")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    frames = structures(args.n)
    configs = write_formats(work, frames)
    natoms = [len(a) for a in frames]
    results = {"n_structures": args.n, "atoms_per_structure": [min(natoms), max(natoms)]}
    rows = {}
    for name, config in configs.items():
        setup, *epochs = loader_epochs(config)
        row = {"setup_cpu_s": setup, "loader_epoch_cpu_s": epochs}
        if not args.no_train:
            cpu = args.device == "cpu"
            run = work / f"train_{name}"
            row["train_epoch_wall_s"] = train_epoch_seconds(config, run, args.n, cpu)
        rows[name] = row
        print(name, json.dumps(row), flush=True)
    results["formats"] = rows
    lines = [
        f"{args.n} EMT structures ({min(natoms)}-{max(natoms)} atoms), batches of 8, "
        "num_workers 0, 1 thread",
        "",
        "| format | dataset setup (CPU s) | loader epoch 1 / 2 (CPU s) | train epoch (wall s) |",
        "|---|---|---|---|",
    ]
    for name, row in rows.items():
        ep = " / ".join(f"{t:.2f}" for t in row["loader_epoch_cpu_s"])
        train = row.get("train_epoch_wall_s", float("nan"))
        lines.append(f"| {name} | {row['setup_cpu_s']:.2f} | {ep} | {train:.1f} |")
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
        Path(args.out).with_suffix(".md").write_text(report)
    return results


if __name__ == "__main__":
    main()
