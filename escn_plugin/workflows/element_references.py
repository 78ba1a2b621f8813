"""Linear per-element energy references fit on the train split (fairchem's
``transforms.element_references``): the energy baseline and what eSCN is trained on top of."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from escn_plugin.workflows.data import records as read_records

#: length of the element-reference table (indexed by atomic number)
N_ELEMENTS = 100


def composition(records: Sequence) -> np.ndarray:
    """``[n_records, N_ELEMENTS]`` element counts (float64)."""
    counts = [
        np.bincount(d.atomic_numbers.numpy().astype(int), minlength=N_ELEMENTS) for d in records
    ]
    return np.stack(counts).astype(np.float64)


def fit_element_references(data_root: str | os.PathLike, out_file: str | os.PathLike) -> dict:
    """Fit linear per-element energy references on the S2EF train split (least squares of
    the energy on the element counts) and write them as fairchem reads them (an npz with
    ``coeff`` indexed by atomic number, for ``transforms.element_references``).

    Returns ``{"file", "coeff", "residual_mean", "residual_std", "mae": {split: MAE of the
    references alone as an energy prediction}}``; the residual statistics are the energy
    normalizer (fairchem normalises the de-referenced energy).
    """
    data_root = Path(data_root)
    train = read_records(data_root / "s2ef" / "train")
    x, y = composition(train), np.array([float(d.y) for d in train])
    coeff = np.linalg.lstsq(x, y, rcond=None)[0]
    residual = y - x @ coeff
    mae = {}
    for split in ("train", "val", "test"):
        records = read_records(data_root / "s2ef" / split)
        energies = np.array([float(d.y) for d in records])
        mae[split] = float(np.abs(energies - composition(records) @ coeff).mean())
    out_file = Path(out_file).resolve()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_file, coeff=coeff)
    return {
        "file": out_file,
        "coeff": coeff,
        "residual_mean": float(residual.mean()),
        "residual_std": float(residual.std()),
        "mae": mae,
    }


def element_reference_mae(refs: dict, records: Sequence, key: str = "y") -> float:
    """MAE of the references ``refs["coeff"]`` alone as a prediction of ``record[key]``
    (e.g. ``y_relaxed`` of IS2RE records)."""
    energies = np.array([float(d[key]) for d in records])
    return float(np.abs(energies - composition(records) @ refs["coeff"]).mean())
