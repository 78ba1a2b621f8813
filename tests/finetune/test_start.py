"""The starting checkpoint: plugin and reference checkpoints map onto the fine-tuned model,
heads are kept and rescaled (same physical predictions at step 0) or dropped, and the
written config and step-0 checkpoint are what the fine-tune needs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import yaml

from escn_plugin.finetune import cli, start
from tests.finetune.conftest import START_NORMALIZERS, finetune_argv


def prepare(out, checkpoint, data, *extra):
    args = cli.build_parser().parse_args(
        finetune_argv(out, checkpoint, data, "--prepare-only", *extra)
    )
    return cli.run(args, stream=False), out


@pytest.fixture(scope="module")
def direct(tmp_path_factory, plugin_checkpoint, extxyz):
    return prepare(tmp_path_factory.mktemp("direct"), plugin_checkpoint, extxyz)[1]


def _state(path):
    return {
        k.removeprefix("module."): v
        for k, v in torch.load(path, map_location="cpu", weights_only=False)["state_dict"].items()
    }


def test_plugin_weights_are_mapped_and_heads_rescaled(direct, plugin_checkpoint):
    source = _state(plugin_checkpoint)
    mapped = _state(direct / "start" / "initial_checkpoint.pt")
    backbone = [k for k in source if not k.startswith(("energy_head.", "force_head."))]
    assert backbone and all(
        torch.equal(mapped[f"backbone.{k}"], source[k])
        for k in backbone
        if not k.endswith("_extra_state")
    )
    norm = yaml.safe_load((direct / "config.yml").read_text())["dataset"]["train"]["transforms"][
        "normalizer"
    ]
    e_factor = START_NORMALIZERS["energy"]["rmsd"] / norm["energy"]["rmsd"]
    f_factor = START_NORMALIZERS["forces"]["rmsd"] / norm["forces"]["rmsd"]
    torch.testing.assert_close(
        mapped["output_heads.energy.readout.fc3.weight"],
        source["energy_head.readout.fc3.weight"] * e_factor,
    )
    torch.testing.assert_close(
        mapped["output_heads.forces.readout.fc1.weight"], source["force_head.readout.fc1.weight"]
    )
    torch.testing.assert_close(
        mapped["output_heads.forces.readout.fc3.weight"],
        source["force_head.readout.fc3.weight"] * f_factor,
    )
    assert any(k.startswith("output_heads.stress.") for k in mapped)  # a new stress head


def test_step0_forces_equal_the_starting_checkpoints(direct, plugin_checkpoint, extxyz):
    """Rescaling the force head to the new normalizer keeps the physical forces."""
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    from escn_plugin.finetune.data import read_structures

    atoms = read_structures(extxyz)[0].atoms.copy()
    old = OCPCalculator(checkpoint_path=str(plugin_checkpoint), cpu=True, seed=0)
    new = OCPCalculator(
        checkpoint_path=str(direct / "start" / "initial_checkpoint.pt"), cpu=True, seed=0
    )
    atoms.calc = old
    f_old = atoms.get_forces().copy()
    atoms.calc = new
    np.testing.assert_allclose(atoms.get_forces(), f_old, rtol=1e-4, atol=1e-6)


def test_config_is_a_fresh_finetune(direct):
    config = yaml.safe_load((direct / "config.yml").read_text())
    assert config["trainer"] == "escn_plugin.finetune.trainer.FineTuneTrainer"
    assert config["task"]["initial_weights"] == str(direct / "start" / "initial_checkpoint.pt")
    optim = config["optim"]
    assert optim["scheduler"] == "CosineAnnealingLR" and optim["T_max"] == 2 * 3  # 10 train / 4
    assert optim["load_balancing"] == "atoms" and optim["max_epochs"] == 2
    initial = torch.load(direct / "start" / "initial_checkpoint.pt", weights_only=False)
    assert initial["step"] == 0 and not {"optimizer", "scheduler", "ema"} & set(initial)
    assert initial["config"]["trainer"] == "ocp"


def test_conservative_drops_the_force_head(tmp_path, plugin_checkpoint, extxyz, caplog):
    with caplog.at_level(logging.INFO, logger="escn_plugin.finetune.start"):
        _, out = prepare(tmp_path, plugin_checkpoint, extxyz, "--conservative")
    assert "dropping the direct force head's weights" in caplog.text
    config = yaml.safe_load((out / "config.yml").read_text())
    backbone = config["model"]["backbone"]
    assert backbone["direct_forces"] is False and backbone["regress_stress"] is True
    assert backbone["max_neighbors"] >= 300 and backbone["enforce_max_neighbors_strictly"] is False
    assert backbone["envelope_exponent"] == 5
    assert list(config["model"]["heads"]) == ["energy"]
    norm = config["dataset"]["train"]["transforms"]["normalizer"]
    assert norm["energy"]["rmsd"] == norm["forces"]["rmsd"] == norm["stress"]["rmsd"]
    mapped = _state(out / "start" / "initial_checkpoint.pt")
    assert not any("forces" in k for k in mapped)
    source = _state(plugin_checkpoint)
    factor = START_NORMALIZERS["energy"]["rmsd"] / norm["energy"]["rmsd"]
    torch.testing.assert_close(
        mapped["output_heads.energy.energy.readout.fc3.weight"],
        source["energy_head.readout.fc3.weight"] * factor,
    )
    assert (out / "start" / "start_as_is.pt").is_file()  # the direct "before" model


def test_reference_escn_checkpoint_is_converted(tmp_path, reference_checkpoint, extxyz):
    from escn_plugin.convert import convert_checkpoint

    point = start.load_start(reference_checkpoint)
    assert point.origin.startswith("reference escn")
    converted = convert_checkpoint(
        torch.load(reference_checkpoint, map_location="cpu", weights_only=False)
    )
    expected = {k.removeprefix("module."): v for k, v in converted["state_dict"].items()}
    _, out = prepare(tmp_path, reference_checkpoint, extxyz)
    mapped = _state(out / "start" / "initial_checkpoint.pt")
    for key, value in expected.items():
        if not key.startswith(("energy_head.", "force_head.")):
            assert torch.equal(mapped[f"backbone.{key}"], value), key


def test_foreign_checkpoints_fail_naming_the_file(tmp_path):
    path = tmp_path / "gemnet.pt"
    torch.save({"state_dict": {}, "config": {"model": {"name": "gemnet_oc"}}}, path)
    with pytest.raises(ValueError, match=r"gemnet\.pt: model 'gemnet_oc' is neither"):
        start.load_start(path)
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match=r"other\.pt: not a fairchem checkpoint"):
        start.load_start(tmp_path / "other.pt")


def test_freeze_backbone_and_the_from_scratch_config(tmp_path, plugin_checkpoint, extxyz):
    _, out = prepare(tmp_path, plugin_checkpoint, extxyz, "--freeze-backbone", "--from-scratch")
    config = yaml.safe_load((out / "config.yml").read_text())
    model = start.build_model(config["model"])
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.output_heads.parameters())
    scratch = yaml.safe_load((out / "from_scratch" / "config.yml").read_text())
    assert "initial_weights" not in scratch["task"] and not scratch["model"]["freeze_backbone"]
    assert scratch["optim"] == config["optim"]  # the same budget and schedule
    assert scratch["dataset"] == config["dataset"]
