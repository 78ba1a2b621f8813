"""End to end through the stock ``fairchem`` command on a generated OC20-format LMDB:
train (loss falls, checkpoint written), resume, validate, predict; hydra names; and a
checkpoint written by fairchem's trainer for the *reference* eSCN, converted to ours."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from escn_plugin.datasets.oc20_emt import generate
from tests.helpers.fairchem_run import (
    SMALL_MODEL,
    hydra_model,
    logged,
    only,
    run_fairchem,
    s2ef_config,
)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("oc20_emt")
    generate(root, seed=0, size="tiny")
    return root


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("train")
    config = s2ef_config(data_root, dict(SMALL_MODEL, name="escn_plugin.eSCN"), max_epochs=6)
    log = run_fairchem(config, work, "train")
    checkpoint = only(list(work.glob("checkpoints/*/checkpoint.pt")))
    return config, work, log, checkpoint


def test_train_loss_falls_and_checkpoint_is_written(trained):
    config, work, log, checkpoint = trained
    losses = logged(log, "loss")
    assert len(losses) >= 6, log[-3000:]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["step"] == 36 and state["config"]["model"]["name"] == "escn_plugin.eSCN"
    assert any(k.endswith("layers.0.message.so2_source.m0_in.weight") for k in state["state_dict"])
    assert only(list(work.glob("results/*/ocp_predictions.npz"))).stat().st_size > 0


def test_validate_and_predict_with_checkpoint(trained, tmp_path):
    config, _, _, checkpoint = trained
    log = run_fairchem(config, tmp_path, "validate", "--checkpoint", str(checkpoint))
    energy_mae, forces_mae = logged(log, "energy_mae"), logged(log, "forces_mae")
    assert energy_mae and forces_mae and np.isfinite(energy_mae[-1] + forces_mae[-1])

    run_fairchem(config, tmp_path, "predict", "--checkpoint", str(checkpoint))
    pred = np.load(only(list(tmp_path.glob("results/*/ocp_predictions.npz"))))
    assert len(pred["ids"]) == 6 and len(pred["energy"]) == 6  # the 6 test frames
    assert np.isfinite(pred["forces"]).all() and pred["forces"].shape[-1] == 3


def test_resume_continues_from_saved_step(trained, tmp_path):
    config, _, _, checkpoint = trained
    config = copy.deepcopy(config)
    config["optim"]["max_epochs"] = 7
    log = run_fairchem(config, tmp_path, "train", "--checkpoint", str(checkpoint))
    steps = logged(log, "step")
    assert steps and min(steps) > 36 and max(steps) <= 42, steps


def test_hydra_names_train(data_root, tmp_path):
    config = s2ef_config(data_root, hydra_model(SMALL_MODEL), max_epochs=2)
    log = run_fairchem(config, tmp_path, "train")
    assert logged(log, "loss") and np.isfinite(logged(log, "loss")).all()
    state = torch.load(only(list(tmp_path.glob("checkpoints/*/checkpoint.pt"))), weights_only=False)
    assert any("output_heads.forces.readout.fc1" in k for k in state["state_dict"])
