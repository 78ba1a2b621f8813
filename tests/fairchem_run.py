"""Helpers to run the stock ``fairchem`` command on the generated OC20-EMT data."""

from __future__ import annotations

import json
import re
from pathlib import Path

from escn_plugin.workflows import fairchem_runner

SMALL_MODEL = dict(
    num_layers=2,
    lmax_list=[2],
    mmax_list=[1],
    sphere_channels=8,
    hidden_channels=8,
    edge_channels=8,
    num_sphere_samples=16,
    cutoff=6.0,
    max_neighbors=12,
    otf_graph=True,
    distance_resolution=0.1,
)


def s2ef_config(data_root: Path, model: dict, max_epochs: int = 4) -> dict:
    """A complete OCPTrainer S2EF config on the generated dataset, normalised from its
    metadata (train-split energy mean/std and force rms)."""
    meta = json.loads((data_root / "metadata.json").read_text())
    train = meta["s2ef"]["train"]
    normalizer = {
        "energy": {"mean": train["energy"]["mean"], "stdev": train["energy"]["std"]},
        "forces": {"mean": 0.0, "stdev": train["force_rms"]},
    }
    key_mapping = {"y": "energy", "force": "forces"}

    def split(name: str) -> dict:
        return {
            "format": "lmdb",
            "src": str(data_root / "s2ef" / name),
            "key_mapping": key_mapping,
            "transforms": {"normalizer": normalizer},
        }

    return {
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
        "evaluation_metrics": {
            "metrics": {"energy": ["mae"], "forces": ["mae"]},
            "primary_metric": "forces_mae",
        },
        "dataset": {"train": split("train"), "val": split("val"), "test": split("test")},
        "model": model,
        "optim": {
            "batch_size": 2,
            "eval_batch_size": 3,
            "num_workers": 0,
            "lr_initial": 0.005,
            "optimizer": "AdamW",
            "optimizer_params": {"amsgrad": True},
            "scheduler": "Null",
            "max_epochs": max_epochs,
            "eval_every": 12,
            "ema_decay": 0.9,
            "clip_grad_norm": 10,
        },
    }


def hydra_model(model: dict) -> dict:
    return {
        "name": "hydra",
        "backbone": {"model": "escn_plugin.eSCNBackbone", **model},
        "heads": {
            "energy": {"module": "escn_plugin.eSCNEnergyHead"},
            "forces": {"module": "escn_plugin.eSCNForceHead"},
        },
        "pass_through_head_outputs": True,
    }


def run_fairchem(config: dict, workdir: Path, mode: str, *extra: str) -> str:
    """Run ``fairchem --mode MODE`` (the installed console script) quietly; returns its log.
    The main job's runner (:func:`escn_plugin.workflows.fairchem_runner.run_fairchem`)."""
    return fairchem_runner.run_fairchem(
        config, workdir, mode, *extra, stream=False, print_every=4, timeout=900
    )


def logged(log: str, key: str) -> list[float]:
    """Every value of ``key: <number>`` in fairchem's log lines, in order."""
    return [float(v) for v in re.findall(rf"\b{key}: ([-+0-9.eE]+)", log)]


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]
