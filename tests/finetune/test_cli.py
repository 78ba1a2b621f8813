"""The command end to end through the stock ``fairchem`` CLI (slow: each trains tiny
models for a few steps): direct with a from-scratch comparison, conservative, a reference
``escn`` start, resuming an interrupted run; the written checkpoints in OCPCalculator and
``fairchem --mode predict``."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from escn_plugin.finetune import cli
from escn_plugin.finetune.data import read_structures
from escn_plugin.workflows import fairchem_runner
from tests.finetune.conftest import finetune_argv

pytestmark = pytest.mark.slow


def finetune(out, checkpoint, data, *extra) -> dict:
    argv = finetune_argv(out, checkpoint, data, "--nve-steps", "20", *extra)
    assert cli.main(argv) == 0
    return json.loads((out / "report.json").read_text())


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def test_direct_finetune_and_from_scratch(tmp_path, plugin_checkpoint, extxyz):
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    out = tmp_path / "ft"
    report = finetune(out, plugin_checkpoint, extxyz, "--from-scratch")
    assert {"references", "start", "finetuned", "from_scratch"} <= set(report["test"])
    assert (out / "report.md").is_file() and (out / "parity.png").is_file()
    best = out / "checkpoints" / "finetune" / "best_checkpoint.pt"
    last = torch.load(out / "checkpoints" / "finetune" / "checkpoint.pt", weights_only=False)
    assert last["step"] == 2 * 3 and last["config"]["trainer"] == "ocp"
    log = (out / "train.log").read_text()
    assert "Loaded the fine-tune's starting weights" in log
    assert "starting weights" not in (out / "from_scratch" / "train.log").read_text()
    steps = fairchem_runner.logged(log, "step")
    assert steps[0] == 1 and max(steps) == 6, steps  # a fresh step count and schedule
    initial = _weights(out / "start" / "initial_checkpoint.pt")
    trained = _weights(best)
    assert any(not torch.equal(v, trained[k]) for k, v in initial.items() if torch.is_tensor(v))

    atoms = read_structures(extxyz)[0].atoms.copy()
    atoms.calc = OCPCalculator(checkpoint_path=str(best), cpu=True, seed=0)
    assert np.isfinite(atoms.get_potential_energy()) and atoms.get_forces().shape == (4, 3)
    assert atoms.get_stress(voigt=False).shape == (3, 3)

    config = yaml.safe_load((out / "config.yml").read_text())
    fairchem_runner.run_fairchem(
        config, tmp_path / "predict", "predict", "--checkpoint", str(best), stream=False
    )
    (npz,) = (tmp_path / "predict").glob("results/*/ocp_predictions.npz")
    pred = np.load(npz)
    assert len(pred["energy"]) == report["data"]["counts"]["test"]
    assert np.isfinite(pred["energy"]).all() and pred["stress"].shape[-1] == 9


def test_conservative_finetune(tmp_path, plugin_checkpoint, extxyz):
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    out = tmp_path / "cons"
    report = finetune(out, plugin_checkpoint, extxyz, "--conservative")
    assert report["settings"]["mode"] == "conservative"
    assert {"start", "step0", "finetuned"} <= set(report["test"])
    assert len(report["nve"]) == 2
    log = (out / "train.log").read_text()
    assert "Loaded the fine-tune's starting weights" in log
    best = out / "checkpoints" / "finetune" / "best_checkpoint.pt"
    saved = torch.load(best, map_location="cpu", weights_only=False)
    assert saved["config"]["model"]["backbone"]["direct_forces"] is False
    calc = OCPCalculator(checkpoint_path=str(best), cpu=True, seed=0)
    atoms = read_structures(extxyz)[1].atoms.copy()
    atoms.calc = calc
    forces = atoms.get_forces()
    i, k, h = int(np.abs(forces).sum(1).argmax()), 0, 1e-3
    energies = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.positions[i, k] += sign * h
        moved.calc = calc
        energies.append(moved.get_potential_energy())
    fd = -(energies[0] - energies[1]) / (2 * h)
    assert abs(fd - forces[i, k]) <= 0.05 * np.abs(forces).max() + 1e-4, (fd, forces[i, k])

    # the stock run-relaxations on the fine-tune's own config and checkpoint, no edits
    config = yaml.safe_load((out / "config.yml").read_text())
    relaxed = fairchem_runner.run_relaxations(
        config, best, out / "data" / "test" / "data.lmdb", tmp_path / "relax", steps=3,
        stream=False,
    )  # fmt: skip
    positions = np.load(relaxed["relaxed_positions"])
    assert len(positions["ids"]) == report["data"]["counts"]["test"]
    assert np.isfinite(np.concatenate(list(positions["pos"]))).all()


def test_reference_escn_start(tmp_path, reference_checkpoint, extxyz):
    report = finetune(tmp_path / "ref", reference_checkpoint, extxyz)
    assert report["start"]["origin"].startswith("reference escn")
    assert np.isfinite(report["test"]["finetuned"]["forces_mae"])


def test_resume_an_interrupted_finetune(tmp_path, plugin_checkpoint, extxyz):
    out = tmp_path / "resume"
    argv = [
        sys.executable, "-m", "escn_plugin.finetune",
        *finetune_argv(out, plugin_checkpoint, extxyz, epochs=8),
    ]  # fmt: skip
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    checkpoint = out / "checkpoints" / "finetune" / "checkpoint.pt"

    def written() -> bool:  # fairchem writes in place: a file may exist half written
        try:
            return checkpoint.exists() and "step" in torch.load(checkpoint, weights_only=False)
        except (EOFError, RuntimeError, pickle.UnpicklingError):
            return False

    deadline = time.time() + 600
    while not written() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    import os

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    step = torch.load(checkpoint, weights_only=False)["step"]
    assert 0 < step < 8 * 3
    assert cli.main(["--out", str(out), "--resume"]) == 0
    log = (out / "train.log").read_text()
    resumed = fairchem_runner.logged(log, "step")
    assert min(resumed) > step and max(resumed) == 24, (step, resumed)
    assert torch.load(checkpoint, weights_only=False)["step"] == 24
    assert (out / "report.json").is_file()
