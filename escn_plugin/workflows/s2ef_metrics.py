"""S2EF metrics of a ``--mode predict`` output against the LMDB labels, and baselines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from escn_plugin.workflows.data import records as read_records


def s2ef_labels(src: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """``{"<sid>_<fid>": {"energy", "forces" (free atoms), "fixed"}}`` from an S2EF LMDB."""
    labels = {}
    for d in read_records(Path(src)):
        free = d.fixed.numpy() == 0
        labels[f"{int(d.sid)}_{int(d.fid)}"] = {
            "energy": float(d.y),
            "forces": d.force.numpy().astype(np.float64)[free],
        }
    return labels


def s2ef_metrics(predictions: str | os.PathLike, src: str | os.PathLike) -> dict[str, Any]:
    """Energy MAE and force MAE (free atoms, all components, as fairchem's ``forces_mae``)
    of a predictions npz against the labels of the S2EF split ``src``; also the arrays for
    a parity plot."""
    labels = s2ef_labels(src)
    with np.load(predictions) as pred:
        ids = [str(i) for i in pred["ids"]]
        energy = pred["energy"].astype(np.float64).reshape(len(ids))
        forces = np.split(pred["forces"].astype(np.float64), pred["chunk_idx"])
    if sorted(ids) != sorted(labels):
        raise ValueError(f"{predictions}: ids do not match the frames of {src}")
    e_true = np.array([labels[i]["energy"] for i in ids])
    f_true = np.concatenate([labels[i]["forces"] for i in ids])
    f_pred = np.concatenate(forces)
    if f_pred.shape != f_true.shape:
        raise ValueError(f"force shapes differ: {f_pred.shape} vs {f_true.shape}")
    return {
        "n_frames": len(ids),
        "energy_mae": float(np.abs(energy - e_true).mean()),
        "forces_mae": float(np.abs(f_pred - f_true).mean()),
        "energy_pred": energy,
        "energy_true": e_true,
        "forces_pred": f_pred,
        "forces_true": f_true,
    }


def baseline_metrics(src: str | os.PathLike, train_energy_mean: float) -> dict[str, float]:
    """MAE of predicting the training-mean energy and zero forces (free atoms)."""
    labels = s2ef_labels(src).values()
    energies = np.array([v["energy"] for v in labels])
    forces = np.concatenate([v["forces"] for v in labels])
    return {
        "energy_mae": float(np.abs(energies - train_energy_mean).mean()),
        "forces_mae": float(np.abs(forces).mean()),
    }
