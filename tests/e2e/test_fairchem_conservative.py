"""Gradient forces (``direct_forces: False``) through the stock ``fairchem`` command:
train (force loss falls, every parameter finite and updated), resume, validate, predict,
run-relaxations, hydra with the gradient head, and an ``OCPCalculator`` whose forces are
minus the gradient of its energy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from escn_plugin.datasets.oc20_emt import generate, read_lmdb
from tests.helpers.fairchem_run import SMALL_MODEL, logged, only, run_fairchem, s2ef_config

CONSERVATIVE = dict(
    SMALL_MODEL,
    max_neighbors=300,
    enforce_max_neighbors_strictly=False,
    direct_forces=False,
    envelope_exponent=5,
    energy_scale=1.0,
)


def conservative_config(data_root, model: dict, max_epochs: int) -> dict:
    """The e2e S2EF config with one normaliser scale for energy and forces (a gradient
    model's denormalised forces must be -d(denormalised energy)/dx)."""
    config = s2ef_config(data_root, model, max_epochs=max_epochs)
    for split in config["dataset"].values():
        norm = split["transforms"]["normalizer"]
        norm["energy"]["stdev"] = norm["forces"]["stdev"]
    config["loss_functions"][0]["energy"]["fn"] = "per_atom_mae"
    return config


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("oc20_emt")
    generate(root, seed=0, size="tiny", verbose=False)
    return root


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """6 epochs of 6 steps. The force error is measured on the training frames after every
    epoch (val = train), since per-batch training metrics of 2 frames are noise. Weighted
    towards forces: at fairchem's default init the gradient of the energy is ~1e-3 of the
    force targets, and with the energy loss in front the force error moves only after
    many more steps (measured: -1 % in 6 epochs at lr 0.005 and energy weight 1)."""
    work = tmp_path_factory.mktemp("train_conservative")
    config = conservative_config(data_root, dict(CONSERVATIVE, name="escn_plugin.eSCN"), 6)
    config["dataset"]["val"]["src"] = config["dataset"]["train"]["src"]
    config["loss_functions"][0]["energy"]["coefficient"] = 0.01
    config["optim"]["eval_every"] = 6
    config["optim"]["lr_initial"] = 0.02
    log = run_fairchem(config, work, "train")
    return config, work, log, only(list(work.glob("checkpoints/*/checkpoint.pt")))


def validation_forces_mae(log: str) -> list[float]:
    """forces_mae of each validation pass (fairchem logs them from base_trainer.py)."""
    lines = [line for line in log.splitlines() if "base_trainer.py" in line]
    return logged("\n".join(lines), "forces_mae")


def test_train_lowers_force_loss(trained):
    config, work, log, checkpoint = trained
    forces_mae = validation_forces_mae(log)
    assert len(forces_mae) == 6, log[-3000:]
    assert forces_mae[-1] < 0.95 * forces_mae[0], forces_mae  # measured: 0.269 -> 0.245
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["config"]["model"]["direct_forces"] is False
    params = state["state_dict"]
    assert not any("force_head" in k for k in params)  # no force head is built
    assert all(torch.isfinite(v).all() for v in params.values() if isinstance(v, torch.Tensor))
    # (every parameter getting a finite gradient through the force loss is checked
    # in-process in test_energy_gradients.py)


def test_validate_and_predict_give_gradient_forces(trained, tmp_path):
    config, _, _, checkpoint = trained
    log = run_fairchem(config, tmp_path, "validate", "--checkpoint", str(checkpoint))
    assert logged(log, "forces_mae") and np.isfinite(logged(log, "forces_mae")[-1])
    run_fairchem(config, tmp_path, "predict", "--checkpoint", str(checkpoint))
    pred = np.load(only(list(tmp_path.glob("results/*/ocp_predictions.npz"))))
    forces = (
        np.concatenate(list(pred["forces"])) if pred["forces"].dtype == object else pred["forces"]
    )
    assert np.isfinite(forces).all() and np.abs(forces).max() > 0


def test_resume_continues(trained, tmp_path):
    config, _, _, checkpoint = trained
    config = copy.deepcopy(config)
    config["optim"]["max_epochs"] = 7
    log = run_fairchem(config, tmp_path, "train", "--checkpoint", str(checkpoint))
    steps = logged(log, "step")
    assert steps and min(steps) > 36 and max(steps) <= 42, steps


def test_run_relaxations_with_gradient_forces(trained, data_root, tmp_path):
    config, _, _, checkpoint = trained
    config = copy.deepcopy(config)
    src = data_root / "is2re" / "train" / "data.lmdb"
    config["dataset"]["relax"] = {
        "use_train_settings": False,
        "format": "lmdb",
        "src": str(src),
        "key_mapping": {"y_relaxed": "energy_relaxed"},
    }
    config["task"] = {
        "relaxation_steps": 3,
        "relaxation_fmax": 1e-4,
        "write_pos": True,
        "relax_opt": {"maxstep": 0.04, "memory": 50, "damping": 1.0, "alpha": 70.0,
                      "traj_dir": str(tmp_path / "traj")},
    }  # fmt: skip
    run_fairchem(config, tmp_path, "run-relaxations", "--checkpoint", str(checkpoint))
    relaxed = np.load(only(list(tmp_path.glob("results/*/relaxed_positions.npz"))))
    records = {int(r.sid): r.pos.numpy() for r in read_lmdb(src)}
    start = np.concatenate([records[int(sid)] for sid in relaxed["ids"]])
    moved = np.abs(relaxed["pos"].reshape(-1, 3) - start).max()
    assert 0 < moved < 1.0, moved


def test_calculator_forces_are_minus_energy_gradient(trained, data_root):
    """OCPCalculator (float32, on-the-fly graph) with the trained checkpoint: forces agree
    with central differences of its energy to float32 accuracy."""
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    _, _, _, checkpoint = trained
    calc = OCPCalculator(checkpoint_path=str(checkpoint), cpu=True, seed=0)
    record = read_lmdb(data_root / "s2ef" / "test" / "data.lmdb")[0]
    from ase import Atoms

    atoms = Atoms(
        numbers=record.atomic_numbers.long().numpy(),
        positions=record.pos.numpy().astype(np.float64),
        cell=record.cell[0].numpy(),
        pbc=True,
    )
    atoms.calc = calc
    forces = atoms.get_forces()
    i = int(np.argmax(np.abs(forces).sum(1)))
    step = 1e-2
    fd = []
    for k in range(3):
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, k] += sign * step
            moved.calc = calc
            e.append(moved.get_potential_energy())
        fd.append(-(e[0] - e[1]) / (2 * step))
    scale = np.abs(forces).max()
    assert np.abs(np.array(fd) - forces[i]).max() <= 2e-2 * scale, (fd, forces[i])


def test_hydra_gradient_head_trains(data_root, tmp_path):
    backbone = {"model": "escn_plugin.eSCNBackbone", **CONSERVATIVE}
    del backbone["energy_scale"]  # a head argument
    model = {
        "name": "hydra",
        "otf_graph": True,
        "pass_through_head_outputs": True,
        "backbone": backbone,
        "heads": {"efs": {"module": "escn_plugin.eSCNEnergyGradientHead", "energy_scale": 1.0}},
    }
    config = conservative_config(data_root, model, max_epochs=2)
    log = run_fairchem(config, tmp_path, "train")
    assert logged(log, "forces_mae") and np.isfinite(logged(log, "loss")).all()
    state = torch.load(only(list(tmp_path.glob("checkpoints/*/checkpoint.pt"))), weights_only=False)
    assert any("output_heads.efs.energy.readout.fc1" in k for k in state["state_dict"])


# -- stress ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stress_trained(data_root, tmp_path_factory):
    """A gradient model with stress trained through the CLI on the EMT stress data."""
    import json

    from escn_plugin.datasets.emt_stress import generate as generate_stress

    root = generate_stress(
        tmp_path_factory.mktemp("emt_stress"), num_train=16, num_val=4, num_test=4, verbose=False
    )
    scale = json.loads((root / "metadata.json").read_text())["train"]["force_rms"]
    mean = json.loads((root / "metadata.json").read_text())["train"]["energy"]["mean"]
    normalizer = {
        "energy": {"mean": mean, "rmsd": scale},
        "forces": {"mean": 0.0, "rmsd": scale},
        "stress": {"mean": 0.0, "rmsd": scale},
    }

    def split(name):
        return {
            "format": "lmdb",
            "src": str(root / name),
            "key_mapping": {"y": "energy", "force": "forces"},
            "transforms": {"normalizer": normalizer},
        }

    config = conservative_config(data_root, dict(CONSERVATIVE, name="escn_plugin.eSCN"), 4)
    config["model"]["regress_stress"] = True
    config["dataset"] = {"train": split("train"), "val": split("val"), "test": split("test")}
    config["outputs"]["stress"] = {"level": "system"}
    config["loss_functions"].append({"stress": {"fn": "mae", "coefficient": 100}})
    config["evaluation_metrics"]["metrics"]["stress"] = ["mae"]
    config["optim"]["batch_size"] = 4
    work = tmp_path_factory.mktemp("train_stress")
    log = run_fairchem(config, work, "train")
    return config, work, log, only(list(work.glob("checkpoints/*/checkpoint.pt")))


def test_stress_trains_and_predicts_through_the_cli(stress_trained, tmp_path):
    config, _, log, checkpoint = stress_trained
    # (16 steps do not teach this tiny model much stress: like the forces, the strain
    # derivative of the energy starts near zero at fairchem's default init)
    stress_mae = logged(log, "stress_mae")
    assert stress_mae and np.isfinite(stress_mae).all(), log[-3000:]
    run_fairchem(config, tmp_path, "predict", "--checkpoint", str(checkpoint))
    pred = np.load(only(list(tmp_path.glob("results/*/ocp_predictions.npz"))))
    assert pred["stress"].shape == (4, 9) and np.isfinite(pred["stress"]).all()
    stress = pred["stress"].reshape(4, 3, 3)
    np.testing.assert_allclose(stress, stress.transpose(0, 2, 1), rtol=1e-5, atol=1e-7)


def test_calculator_stress_drives_a_cell_relaxation(stress_trained):
    """OCPCalculator returns the stress as ASE expects it; FrechetCellFilter + BFGS moves
    the cell and lowers the model's energy (with stress = its strain derivative)."""
    from ase.build import bulk
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    _, _, _, checkpoint = stress_trained
    calc = OCPCalculator(checkpoint_path=str(checkpoint), cpu=True, seed=0)
    atoms = bulk("Cu", "fcc", a=3.75, cubic=True)
    atoms.rattle(0.02, seed=0)
    atoms.calc = calc
    stress = atoms.get_stress(voigt=False)
    assert stress.shape == (3, 3) and np.abs(stress).max() > 0
    # ASE's sign: dE = V tr(S eps) for a small strain eps
    e0, volume, cell = atoms.get_potential_energy(), atoms.get_volume(), atoms.cell[:].copy()
    eps = 2e-3 * np.eye(3)
    strained = atoms.copy()
    strained.set_cell(cell @ (np.eye(3) + eps), scale_atoms=True)
    strained.calc = calc
    de = strained.get_potential_energy() - e0
    expected = volume * np.trace(stress @ eps)
    assert np.sign(de) == np.sign(expected) and abs(de - expected) < 0.3 * abs(expected)
    # the weakly trained model's stresses are small: a tight fmax so that BFGS takes steps
    BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-6, steps=8)
    assert atoms.get_potential_energy() < e0
    assert np.abs(atoms.cell[:] - cell).max() > 1e-6
