"""A checkpoint written by fairchem's trainer for the reference eSCN, converted by
``python -m escn_plugin.convert``, predicts what the reference predicts (float64, same
frames), with EMA weights mapped too; converting twice or a foreign checkpoint fails."""

from __future__ import annotations

import copy
import subprocess
import sys

import fairchem.core.models.escn.escn  # noqa: F401  (registers the reference "escn")
import numpy as np
import pytest
import torch
from fairchem.core.common.registry import registry

import escn_plugin
from escn_plugin.cli.convert import convert_checkpoint
from escn_plugin.datasets.oc20_emt import generate
from escn_plugin.so3 import edge_frame
from tests.helpers.fairchem_run import SMALL_MODEL, only, run_fairchem, s2ef_config
from tests.helpers.structures import GENERIC_ROTATION, make_batch, rotate_atoms, slabs


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("oc20_emt_ref")
    generate(root, seed=0, size="tiny")
    work = tmp_path_factory.mktemp("ref_train")
    config = s2ef_config(root, dict(SMALL_MODEL, name="escn"), max_epochs=2)
    run_fairchem(config, work, "train")
    checkpoint = only(list(work.glob("checkpoints/*/checkpoint.pt")))
    converted = work / "converted.pt"
    cmd = [sys.executable, "-m", "escn_plugin.convert", str(checkpoint), str(converted)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return config, checkpoint, converted


def _strip(state_dict: dict) -> dict:
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _model_args(config: dict) -> dict:
    args = {k: v for k, v in config["model"].items() if k != "name"}
    return dict(args, otf_graph=False)  # float64 needs the precomputed graph


def _compare(ref, ours, monkeypatch):
    monkeypatch.setattr(
        type(ref), "_init_edge_rot_mat", lambda self, d, i, vec: edge_frame(vec).detach()
    )
    batch = make_batch([rotate_atoms(a, GENERIC_ROTATION) for a in slabs()], radius=6.0)
    out_ref, out = ref.double().eval()(copy.deepcopy(batch)), ours.double().eval()(batch)
    torch.testing.assert_close(out["energy"], out_ref["energy"], rtol=1e-6, atol=0)
    scale = out_ref["forces"].abs().max().item()
    torch.testing.assert_close(out["forces"], out_ref["forces"], rtol=1e-6, atol=1e-8 * scale)


def test_trainer_checkpoint_converts_and_predicts_the_same(
    reference_run, float64_default, monkeypatch
):
    config, checkpoint, converted = reference_run
    ref_ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    new_ckpt = torch.load(converted, map_location="cpu", weights_only=False)
    assert new_ckpt["config"]["model"]["name"] == "escn_plugin.eSCN"
    assert "optimizer" not in new_ckpt and new_ckpt["step"] == ref_ckpt["step"]
    assert new_ckpt["normalizers"].keys() == ref_ckpt["normalizers"].keys()

    ref = registry.get_model_class("escn")(**_model_args(config))
    # the checkpoint stores the reference's constant sphere points and harmonics rounded to
    # float32; keep the float64 ones the constructor just computed (ours computes them too)
    constants = ("sphere_points", "sphharm_weights.0")
    weights = {k: v for k, v in _strip(ref_ckpt["state_dict"]).items() if k not in constants}
    assert ref.load_state_dict(weights, strict=False).missing_keys == list(constants)
    ours = escn_plugin.eSCN(**_model_args(new_ckpt["config"]))
    ours.load_state_dict(_strip(new_ckpt["state_dict"]))
    _compare(ref, ours, monkeypatch)

    # EMA: the converted shadow parameters, in our parameter order, equal the reference's
    ref_params = [p for p in ref.parameters() if p.requires_grad]
    for p, shadow in zip(ref_params, ref_ckpt["ema"]["shadow_params"], strict=True):
        p.data.copy_(shadow)
    our_params = [p for p in ours.parameters() if p.requires_grad]
    for p, shadow in zip(our_params, new_ckpt["ema"]["shadow_params"], strict=True):
        assert p.shape == shadow.shape
        p.data.copy_(shadow)
    assert not torch.equal(ref_params[0], _strip(ref_ckpt["state_dict"])["sphere_embedding.weight"])
    _compare(ref, ours, monkeypatch)


def test_converted_checkpoint_runs_in_fairchem_predict(reference_run, tmp_path):
    config, _, converted = reference_run
    config = copy.deepcopy(config)
    config["model"]["name"] = "escn_plugin.eSCN"
    run_fairchem(config, tmp_path, "predict", "--checkpoint", str(converted))
    pred = np.load(only(list(tmp_path.glob("results/*/ocp_predictions.npz"))))
    assert np.isfinite(pred["energy"]).all() and len(pred["energy"]) == 6


def test_converting_twice_or_foreign_checkpoints_fails(reference_run, tmp_path):
    _, _, converted = reference_run
    cmd = [sys.executable, "-m", "escn_plugin.convert", str(converted), str(tmp_path / "x.pt")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode != 0 and "already converted" in proc.stderr
    state = torch.load(converted, map_location="cpu", weights_only=False)
    state.pop("escn_plugin_converted_from")
    with pytest.raises(ValueError, match="converted already"):
        convert_checkpoint(state)
    with pytest.raises(ValueError, match="not part of a reference eSCN checkpoint"):
        convert_checkpoint({"state_dict": {"module.gemnet.weight": torch.zeros(1)}})
    missing = tmp_path / "nope.pt"
    proc = subprocess.run(
        [sys.executable, "-m", "escn_plugin.convert", str(missing), str(tmp_path / "y.pt")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "nope.pt: no such file" in proc.stderr
