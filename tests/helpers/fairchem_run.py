"""Helpers to run the stock ``fairchem`` command on the generated OC20-EMT data."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

from escn_plugin.workflows import configs, fairchem_runner

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

STRESS_HEAD = {
    "module": "rank2_symmetric_head",
    "output_name": "stress",
    "use_source_target_embedding": True,
}


def s2ef_config(data_root: Path, model: dict, max_epochs: int = 4) -> dict:
    """The main job's OCPTrainer S2EF config (:func:`escn_plugin.workflows.configs.
    s2ef_config`: normalised from the train split's metadata), made small and quick for
    tests: batches of 2, a constant learning rate, validation every 12 steps, a test split."""
    config = configs.s2ef_config(
        data_root, model, epochs=max_epochs, batch_size=2, lr=0.005, energy_coefficient=1
    )
    optim = config["optim"]
    for key in ("T_max", "eta_min"):
        optim.pop(key)
    optim.update(eval_batch_size=3, scheduler="Null", eval_every=12, ema_decay=0.9)
    train = config["dataset"]["train"]
    for name in ("val", "test"):  # each split complete, so tests can change one alone
        split = copy.deepcopy(train)
        split["src"] = str(Path(data_root).resolve() / "s2ef" / name)
        config["dataset"][name] = split
    return config


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


def s2efs_config(root, model: dict, max_epochs: int, stress: bool = True) -> dict:
    """An OCPTrainer S2EF(S) config on the generated data, normalised from its metadata."""
    train = json.loads((root / "metadata.json").read_text())["train"]
    normalizer = {
        "energy": {"mean": train["energy"]["mean"], "rmsd": train["energy"]["std"]},
        "forces": {"mean": 0.0, "rmsd": train["force_rms"]},
        "stress": {"mean": 0.0, "rmsd": train["stress_rms"]},
    }

    def split(name: str) -> dict:
        return {
            "format": "lmdb",
            "src": str(root / name),
            "key_mapping": {"y": "energy", "force": "forces"},
            "transforms": {"normalizer": normalizer},
        }

    outputs = {
        "energy": {"level": "system"},
        "forces": {"level": "atom", "train_on_free_atoms": True, "eval_on_free_atoms": True},
    }
    losses = [
        {"energy": {"fn": "mae", "coefficient": 1}},
        {"forces": {"fn": "l2mae", "coefficient": 10}},
    ]
    metrics = {"energy": ["mae"], "forces": ["mae"]}
    if stress:
        outputs["stress"] = {"level": "system", "irrep_dim": 2}
        losses.append({"stress": {"fn": "mae", "coefficient": 10}})
        metrics["stress"] = ["mae"]
    return {
        "trainer": "ocp",
        "logger": "tensorboard",
        "outputs": outputs,
        "loss_functions": losses,
        "evaluation_metrics": {"metrics": metrics, "primary_metric": "forces_mae"},
        "dataset": {"train": split("train"), "val": split("val"), "test": split("test")},
        "model": model,
        "optim": {
            "batch_size": 2,
            "eval_batch_size": 4,
            "num_workers": 0,
            "lr_initial": 0.005,
            "optimizer": "AdamW",
            "optimizer_params": {"amsgrad": True},
            "scheduler": "Null",
            "max_epochs": max_epochs,
            "eval_every": 4,
            "clip_grad_norm": 10,
        },
    }
