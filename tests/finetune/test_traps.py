"""The traps of fine-tuning with fairchem 1.10, each with a check that fails on the naive
setup: load balancing without metadata, checkpoints naming the trainer ``s2ef``, and
normalizers / element references of the starting checkpoint instead of the new data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from escn_plugin.finetune import cli
from escn_plugin.finetune.data import read_structures
from tests.finetune.conftest import finetune_argv


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, plugin_checkpoint, extxyz):
    out = tmp_path_factory.mktemp("prepared")
    args = cli.build_parser().parse_args(
        finetune_argv(out, plugin_checkpoint, extxyz, "--prepare-only")
    )
    cli.run(args, stream=False)
    return out, yaml.safe_load((out / "config.yml").read_text())


def test_load_balancing_has_its_metadata(prepared, tmp_path):
    """``load_balancing: atoms`` raises UnsupportedDatasetError without ``metadata.npz``."""
    import shutil

    from fairchem.core.common.data_parallel import BalancedBatchSampler, UnsupportedDatasetError
    from fairchem.core.datasets import LmdbDataset

    out, config = prepared
    assert config["optim"]["load_balancing"] == "atoms"
    for split in ("train", "val", "test"):
        dataset = LmdbDataset({"src": config["dataset"][split]["src"]})
        BalancedBatchSampler(
            dataset, batch_size=4, num_replicas=1, rank=0, seed=0, mode="atoms", on_error="raise"
        )
    naive = tmp_path / "train"
    shutil.copytree(config["dataset"]["train"]["src"], naive)
    (naive / "metadata.npz").unlink()
    with pytest.raises(UnsupportedDatasetError):
        BalancedBatchSampler(
            LmdbDataset({"src": str(naive)}),
            batch_size=4,
            num_replicas=1,
            rank=0,
            seed=0,
            mode="atoms",
            on_error="raise",
        )


def test_checkpoint_loads_in_ocpcalculator_not_as_s2ef(prepared, tmp_path, extxyz):
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    out, _ = prepared
    path = out / "start" / "initial_checkpoint.pt"
    atoms = read_structures(extxyz)[0].atoms.copy()
    atoms.calc = OCPCalculator(checkpoint_path=str(path), cpu=True, seed=0)
    assert np.isfinite(atoms.get_potential_energy())
    assert atoms.get_forces().shape == (4, 3) and atoms.get_stress(voigt=False).shape == (3, 3)
    naive = torch.load(path, map_location="cpu", weights_only=False)
    naive["config"]["trainer"] = "s2ef"  # what fairchem records for `trainer: forces`
    torch.save(naive, tmp_path / "s2ef.pt")
    with pytest.raises(RuntimeError):
        OCPCalculator(checkpoint_path=str(tmp_path / "s2ef.pt"), cpu=True, seed=0)


def _train_records(config):
    from fairchem.core.datasets import LmdbDataset

    return list(LmdbDataset({"src": config["dataset"]["train"]["src"]}))


def test_normalizers_and_references_are_the_new_datas(prepared):
    out, config = prepared
    records = _train_records(config)
    energy = np.array([float(r.energy) for r in records])
    counts = np.stack([np.bincount(r.atomic_numbers.long(), minlength=119) for r in records])
    present = counts.sum(0) > 0
    coeff = np.linalg.lstsq(counts[:, present].astype(float), energy, rcond=None)[0]
    residual = energy - counts[:, present] @ coeff
    forces = np.concatenate([r.forces.numpy() for r in records])
    transforms = config["dataset"]["train"]["transforms"]
    refs = np.load(transforms["element_references"]["energy"]["file"])["element_references"]
    np.testing.assert_allclose(refs[present], coeff, rtol=1e-4, atol=1e-5)
    norm = transforms["normalizer"]
    assert norm["energy"]["mean"] == pytest.approx(residual.mean(), abs=1e-5)
    assert norm["energy"]["rmsd"] == pytest.approx(residual.std(), rel=1e-4)
    assert norm["forces"]["rmsd"] == pytest.approx(np.sqrt((forces**2).sum(1).mean()), rel=1e-4)


def test_starting_normalizers_would_be_wrong_for_the_new_data(tmp_path, plugin_checkpoint, extxyz):
    """A start whose energy head outputs 0 (normalised): with its own normalizers (an
    adsorption-energy scale, no references) it predicts -1.5 eV for every structure; with
    the fitted ones exactly the element references plus the residual mean."""
    from escn_plugin.finetune.evaluate import errors, predict
    from escn_plugin.finetune.normalization import reference_energies

    state = torch.load(plugin_checkpoint, map_location="cpu", weights_only=False)
    state["state_dict"]["module.energy_head.readout.fc3.weight"].zero_()
    start = tmp_path / "flat_energy.pt"
    torch.save(state, start)
    out = tmp_path / "out"
    args = cli.build_parser().parse_args(
        [
            "--checkpoint",
            str(start),
            "--data",
            str(extxyz),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--test-fraction",
            "0.3",
            "--prepare-only",
        ]
    )
    cli.run(args, stream=False)
    test = cli._test_structures(out)
    true = np.array([s.atoms.calc.results["energy"] for s in test])
    config = yaml.safe_load((out / "config.yml").read_text())
    norm = config["dataset"]["train"]["transforms"]["normalizer"]["energy"]
    refs_file = config["dataset"]["train"]["transforms"]["element_references"]["energy"]["file"]
    expected = reference_energies(np.load(refs_file)["element_references"], test) + norm["mean"]
    ours = predict(out / "start" / "initial_checkpoint.pt", test)
    np.testing.assert_allclose(ours["energy_pred"], expected, rtol=1e-5, atol=1e-5)
    naive = errors(predict(start, test))["energy_mae"]
    assert naive == pytest.approx(np.abs(true + 1.5).mean(), rel=1e-5)
    assert errors(ours)["energy_mae"] < 0.7 * naive
