"""S2EFS through the stock ``fairchem`` command: our backbone with fairchem's rank-2 stress
head (``rank2_symmetric_head``) next to our energy/force heads, on generated EMT data with
stress labels. Train (checkpoint), predict (stress in the predictions file), resume; and a
stress head added to a trained energy/forces checkpoint by fine-tuning with
``finetune_config`` (fairchem's pattern: backbone from the checkpoint, new heads)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase import Atoms
from fairchem.core.common.relaxation.ase_utils import OCPCalculator

from escn_plugin.datasets.emt_stress import generate, read_lmdb
from tests.helpers.fairchem_run import (
    SMALL_MODEL,
    STRESS_HEAD,
    hydra_model,
    logged,
    only,
    run_fairchem,
    s2efs_config,
)

NUM_TRAIN, NUM_TEST = 8, 4


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return generate(
        tmp_path_factory.mktemp("emt_stress"),
        seed=0,
        num_train=NUM_TRAIN,
        num_val=4,
        num_test=NUM_TEST,
    )


def s2efs_model() -> dict:
    model = hydra_model(SMALL_MODEL)
    model["heads"]["stress"] = dict(STRESS_HEAD)
    return model


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("s2efs_train")
    config = s2efs_config(data_root, s2efs_model(), max_epochs=3)
    log = run_fairchem(config, work, "train")
    return config, log, only(list(work.glob("checkpoints/*/checkpoint.pt")))


def _atoms(data) -> Atoms:
    return Atoms(
        numbers=data.atomic_numbers.numpy(),
        positions=data.pos.double().numpy(),
        cell=data.cell[0].double().numpy(),
        pbc=True,
    )


def test_train_predict_stress(trained, data_root, tmp_path):
    config, log, checkpoint = trained
    stress_mae = logged(log, "stress_mae")
    assert stress_mae and np.isfinite(stress_mae).all(), log[-3000:]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["step"] == 3 * NUM_TRAIN // 2
    assert any(".output_heads.stress.block." in k for k in state["state_dict"])

    run_fairchem(config, tmp_path, "predict", "--checkpoint", str(checkpoint))
    pred = np.load(only(list(tmp_path.glob("results/*/ocp_predictions.npz"))))
    assert pred["stress"].shape == (NUM_TEST, 9) and np.isfinite(pred["stress"]).all()
    stress = pred["stress"].reshape(-1, 3, 3)
    np.testing.assert_allclose(stress, stress.transpose(0, 2, 1), rtol=1e-5, atol=1e-8)
    assert len(pred["energy"]) == NUM_TEST and pred["forces"].shape[-1] == 3

    # ASE: OCPCalculator exposes the stress output (3x3 -> Voigt), as for the test frame
    atoms = _atoms(read_lmdb(data_root / "test" / "data.lmdb")[0])
    atoms.calc = OCPCalculator(checkpoint_path=str(checkpoint), cpu=True, seed=0)
    np.testing.assert_allclose(
        atoms.get_stress(voigt=False).reshape(9), pred["stress"][0], rtol=1e-4, atol=1e-6
    )


@pytest.mark.slow  # ~30 s: fairchem's resume path is covered for S2EF in test_fairchem_e2e
def test_resume_s2efs(trained, tmp_path):
    config, _, checkpoint = trained
    config = copy.deepcopy(config)
    config["optim"]["max_epochs"] = 4
    log = run_fairchem(config, tmp_path, "train", "--checkpoint", str(checkpoint))
    steps = logged(log, "step")
    assert steps and min(steps) > 3 * NUM_TRAIN // 2 and max(steps) <= 4 * NUM_TRAIN // 2, steps
    assert logged(log, "stress_mae")


def _same(a, b) -> bool:
    """Weights bit for bit; the model's ``_extra_state`` (its arguments, a dict) equal."""
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def test_finetune_adds_stress_head(data_root, tmp_path):
    """Energy/forces hydra checkpoint -> finetune_config with a new stress head; the backbone
    is frozen, so its weights must come out exactly as in the starting checkpoint."""
    ef_config = s2efs_config(data_root, hydra_model(SMALL_MODEL), max_epochs=1, stress=False)
    run_fairchem(ef_config, tmp_path / "ef", "train")
    start = only(list((tmp_path / "ef").glob("checkpoints/*/checkpoint.pt")))
    start_state = torch.load(start, map_location="cpu", weights_only=False)["state_dict"]
    assert not any("stress" in k for k in start_state)

    heads = {**hydra_model(SMALL_MODEL)["heads"], "stress": dict(STRESS_HEAD)}
    model = {
        "name": "hydra",
        "finetune_config": {"starting_checkpoint": str(start)},
        "heads": heads,
        "freeze_backbone": True,
        "otf_graph": True,
        "pass_through_head_outputs": True,
    }
    log = run_fairchem(s2efs_config(data_root, model, max_epochs=1), tmp_path / "ft", "train")
    assert logged(log, "stress_mae"), log[-3000:]
    tuned = only(list((tmp_path / "ft").glob("checkpoints/*/checkpoint.pt")))
    tuned_state = torch.load(tuned, map_location="cpu", weights_only=False)["state_dict"]
    backbone = [k for k in start_state if ".backbone." in k]
    assert backbone and all(_same(tuned_state[k], start_state[k]) for k in backbone)
    assert any(".output_heads.stress." in k for k in tuned_state)


@pytest.mark.slow  # ~50 s: the decomposed variant of docs/workflows.md section 11
def test_decomposed_stress_head(data_root, tmp_path):
    """decompose: True: the head predicts stress_isotropic [B, 1] and stress_anisotropic
    [B, 5]; fairchem's decompose_tensor transform makes those targets from `stress`, and
    its trainer recombines the parts into `stress` [B, 9] for the predictions file."""
    model = hydra_model(SMALL_MODEL)
    model["heads"]["stress"] = {**STRESS_HEAD, "decompose": True}
    config = s2efs_config(data_root, model, max_epochs=1, stress=False)
    parts = {"stress_isotropic": {"irrep_dim": 0}, "stress_anisotropic": {"irrep_dim": 2}}
    for split in config["dataset"].values():
        split["transforms"]["decompose_tensor"] = {
            "tensor": "stress",
            "rank": 2,
            "decomposition": copy.deepcopy(parts),
        }
    config["outputs"]["stress"] = {"level": "system", "decomposition": copy.deepcopy(parts)}
    config["loss_functions"] += [
        {"stress_isotropic": {"fn": "mae", "coefficient": 10}},
        {"stress_anisotropic": {"fn": "mae", "coefficient": 10}},
    ]
    config["evaluation_metrics"]["metrics"].update(
        {"stress": ["mae"], "stress_isotropic": ["mae"], "stress_anisotropic": ["mae"]}
    )
    log = run_fairchem(config, tmp_path, "train")
    assert logged(log, "stress_isotropic_mae") and logged(log, "stress_mae"), log[-3000:]
    checkpoint = only(list(tmp_path.glob("checkpoints/*/checkpoint.pt")))
    run_fairchem(config, tmp_path / "predict", "predict", "--checkpoint", str(checkpoint))
    pred = np.load(only(list((tmp_path / "predict").glob("results/*/ocp_predictions.npz"))))
    stress = pred["stress"].reshape(NUM_TEST, 3, 3)
    np.testing.assert_allclose(stress, stress.transpose(0, 2, 1), rtol=1e-5, atol=1e-8)
