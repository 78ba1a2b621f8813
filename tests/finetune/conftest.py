"""Fixtures of the fine-tuning tests: small EMT-labelled structure files and tiny starting
checkpoints built directly in fairchem's trainer format (no training needed)."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT

from tests.helpers.fairchem_run import SMALL_MODEL

#: a tiny eSCN (a few thousand parameters): fast enough to train through the CLI in tests
TINY_MODEL = dict(SMALL_MODEL, cutoff=4.5, max_neighbors=30)
#: normalizers of the starting checkpoint: an adsorption-energy-like data set, nothing
#: like the EMT total energies of the fine-tuning structures
START_NORMALIZERS = {"energy": {"mean": -1.5, "rmsd": 2.0}, "forces": {"mean": 0.0, "rmsd": 0.3}}


def finetune_argv(out, checkpoint, data, *extra: str, epochs: int = 2) -> list[str]:
    """The fine-tune command line the tests share (batches of 4), then ``extra``."""
    return [
        "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
        "--epochs", str(epochs), "--batch-size", "4", *extra,
    ]  # fmt: skip


def emt_structures(n: int, seed: int = 0, slabs: bool = True) -> list:
    """``n`` EMT-labelled structures (energy, forces, stress): strained, rattled fcc cells
    of Cu/Pt/Au (4 atoms) and, every 4th with ``slabs``, 2x2x2 fcc(111) slabs (pbc all
    True, so EMT's stress is defined)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        metal = ("Cu", "Pt", "Au")[i % 3]
        if slabs and i % 4 == 3:
            atoms = fcc111(metal, (2, 2, 2), vacuum=4.0)
            atoms.pbc = True
        else:
            atoms = bulk(metal, "fcc", cubic=True)
            strain = np.eye(3) + 0.02 * rng.normal(size=(3, 3))
            atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        out.append(atoms)
    return out


@pytest.fixture(scope="session")
def extxyz(tmp_path_factory) -> Path:
    """12 EMT structures in one extended-XYZ file."""
    path = tmp_path_factory.mktemp("structures") / "emt.extxyz"
    ase.io.write(path, emt_structures(12))
    return path


def trainer_checkpoint(model: torch.nn.Module, model_config: dict, step: int = 40) -> dict:
    """A checkpoint dict as fairchem's trainer writes it (DDP ``module.`` keys, optimizer
    and scheduler state, normalizers, config naming the legacy trainer)."""
    return {
        "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
        "normalizers": {
            name: {"mean": torch.tensor(v["mean"]), "rmsd": torch.tensor(v["rmsd"])}
            for name, v in START_NORMALIZERS.items()
        },
        "elementrefs": {},
        "config": {
            "trainer": "ocp",
            "model": model_config,
            "task": {},
            "outputs": {
                "energy": {"level": "system"},
                "forces": {
                    "level": "atom",
                    "train_on_free_atoms": True,
                    "eval_on_free_atoms": True,
                },
            },
            "loss_functions": [
                {"energy": {"fn": "mae", "coefficient": 1}},
                {"forces": {"fn": "l2mae", "coefficient": 10}},
            ],
            "evaluation_metrics": {"metrics": {"energy": ["mae"]}, "primary_metric": "forces_mae"},
            "dataset": {"format": "lmdb", "src": "/pretraining/s2ef/train"},
            "optim": {"batch_size": 4, "lr_initial": 1e-3, "max_epochs": 2},
        },
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": None,
        "epoch": 2.0,
        "step": step,
    }


@pytest.fixture(scope="session")
def plugin_checkpoint(tmp_path_factory) -> Path:
    """A plain ``escn_plugin.eSCN`` checkpoint (direct forces), seeded random weights."""
    import escn_plugin

    torch.manual_seed(0)
    model = escn_plugin.eSCN(**TINY_MODEL)
    path = tmp_path_factory.mktemp("start") / "plugin.pt"
    torch.save(trainer_checkpoint(model, {"name": "escn_plugin.eSCN", **TINY_MODEL}), path)
    return path


@pytest.fixture(scope="session")
def reference_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of fairchem's reference ``escn`` (plain, tiny), seeded random weights."""
    from fairchem.core.models.escn.escn import eSCN as ReferenceESCN

    torch.manual_seed(0)
    model = ReferenceESCN(**TINY_MODEL)
    path = tmp_path_factory.mktemp("start") / "reference.pt"
    torch.save(trainer_checkpoint(model, {"name": "escn", **TINY_MODEL}), path)
    return path
