"""The fine-tune's fairchem config (``DIR/config.yml``): plain OCPTrainer settings that the
stock ``fairchem --mode train`` runs, a person can read and edit, and ``--submit`` sends.

Choices, each against a trap users report with fairchem 1.10:

- ``trainer``: :class:`~escn_plugin.finetune.trainer.FineTuneTrainer` (OCPTrainer + the
  starting weights from ``task.initial_weights``, weights only). Its checkpoints record
  ``trainer: ocp``; the legacy ``trainer: forces`` would record ``s2ef``, which
  ``OCPCalculator`` cannot resolve.
- ``optim.load_balancing: atoms`` with the ``metadata.npz`` that
  :mod:`~escn_plugin.finetune.data` writes beside each split (balancing without it raises
  ``UnsupportedDatasetError``).
- element references and normalizers fitted on this training split, inline
  (:mod:`~escn_plugin.finetune.normalization`), never the starting checkpoint's.
- a fresh AdamW and a cosine schedule over this run's steps; EMA; the loss and metrics of
  the targets the data has (energy, forces, stress).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = [
    "ENERGY_COEFFICIENT",
    "FORCE_COEFFICIENT",
    "STRESS_COEFFICIENT",
    "TRAINER",
    "eval_every_epochs",
    "finetune_config",
    "steps_per_epoch",
]

TRAINER = "escn_plugin.finetune.trainer.FineTuneTrainer"
#: loss = ENERGY * energy error + FORCE * force L2 error (+ STRESS * stress error), all in
#: normalised units (OC20's S2EF weighting of forces over energies)
ENERGY_COEFFICIENT = 2.0
FORCE_COEFFICIENT = 10.0
STRESS_COEFFICIENT = 10.0
#: validation passes per run (at most; every epoch for short runs)
EVALUATIONS = 10
EMA_DECAY = 0.99
#: learning rate at the end of the cosine, as a fraction of ``lr``
LR_END_FRACTION = 0.04


def steps_per_epoch(n_train: int, batch_size: int, ranks: int = 1) -> int:
    """Optimizer steps per epoch for ``n_train`` structures (fairchem's sampler pads the
    last batch)."""
    return -(-n_train // (batch_size * ranks))


def eval_every_epochs(epochs: int) -> int:
    """The largest divisor of ``epochs`` giving at least ``min(epochs, EVALUATIONS)``
    validation passes, so that the last epoch is always validated."""
    wanted = min(epochs, EVALUATIONS)
    return max(d for d in range(1, epochs + 1) if epochs % d == 0 and epochs // d >= wanted)


def finetune_config(
    *,
    data: dict[str, str | os.PathLike],
    model: dict[str, Any],
    normalization: dict[str, Any],
    stress: bool,
    conservative: bool,
    epochs: int,
    n_train: int,
    batch_size: int,
    lr: float,
    seed: int,
    initial_weights: str | os.PathLike | None,
    ranks: int = 1,
) -> dict[str, Any]:
    """The whole config; ``data``: ``{split: LMDB folder}``, ``normalization``: from
    :func:`~escn_plugin.finetune.normalization.fit_normalization`. ``initial_weights``
    None trains the same model from fresh weights (the ``--from-scratch`` comparison)."""
    per_epoch = steps_per_epoch(n_train, batch_size, ranks)
    steps = epochs * per_epoch
    normalizer = {name: dict(values) for name, values in normalization["normalizer"].items()}
    refs_file = normalization["element_references"]["file"]
    outputs: dict[str, Any] = {
        "energy": {"level": "system", "prediction_dtype": "float32"},
        "forces": {
            "level": "atom",
            "train_on_free_atoms": True,
            "eval_on_free_atoms": True,
            "prediction_dtype": "float32",
        },
    }
    # gradient models: per-atom energy errors (energies and forces share one scale there,
    # so a large cell's energy would otherwise outweigh its forces)
    energy_loss = "per_atom_mae" if conservative else "mae"
    losses: list[dict[str, Any]] = [
        {"energy": {"fn": energy_loss, "coefficient": ENERGY_COEFFICIENT}},
        {"forces": {"fn": "l2mae", "coefficient": FORCE_COEFFICIENT}},
    ]
    metrics: dict[str, list[str]] = {
        "energy": ["mae", "per_atom_mae"],
        "forces": ["mae", "cosine_similarity"],
    }
    if stress:
        outputs["stress"] = {"level": "system", "prediction_dtype": "float32"}
        if not conservative:
            outputs["stress"]["irrep_dim"] = 2  # fairchem's rank-2 head
        losses.append({"stress": {"fn": "mae", "coefficient": STRESS_COEFFICIENT}})
        metrics["stress"] = ["mae"]
    else:
        normalizer.pop("stress", None)
    task: dict[str, Any] = {}
    if initial_weights is not None:
        task["initial_weights"] = str(Path(initial_weights).resolve())
    return {
        "trainer": TRAINER,
        "logger": "tensorboard",
        "seed": seed,
        "task": task,
        "outputs": outputs,
        "loss_functions": losses,
        "evaluation_metrics": {"metrics": metrics, "primary_metric": "forces_mae"},
        "dataset": {
            "train": {
                "format": "lmdb",
                "src": str(Path(data["train"]).resolve()),
                "transforms": {
                    "element_references": {"energy": {"file": refs_file}},
                    "normalizer": normalizer,
                },
            },
            # the rest from train (fairchem's use_train_settings)
            "val": {"src": str(Path(data["val"]).resolve())},
            "test": {"src": str(Path(data["test"]).resolve())},
        },
        "model": model,
        "optim": {
            "batch_size": batch_size,
            "eval_batch_size": batch_size,
            "num_workers": 0,
            "load_balancing": "atoms",
            "lr_initial": lr,
            "optimizer": "AdamW",
            "optimizer_params": {"amsgrad": True, "weight_decay": 0.0},
            "scheduler": "CosineAnnealingLR",
            "T_max": steps,
            "eta_min": lr * LR_END_FRACTION,
            "max_epochs": epochs,
            "eval_every": eval_every_epochs(epochs) * per_epoch,
            "ema_decay": EMA_DECAY,
            "clip_grad_norm": 10,
        },
    }


def epochs_for(max_steps: int, n_train: int, batch_size: int, ranks: int = 1) -> int:
    """Whole epochs covering ``max_steps`` (fairchem 1.10 stops at epoch ends only)."""
    return max(1, math.ceil(max_steps / steps_per_epoch(n_train, batch_size, ranks)))
