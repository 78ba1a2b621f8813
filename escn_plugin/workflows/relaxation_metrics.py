"""IS2RE and IS2RS metrics of a relaxation against the EMT-relaxed records."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from escn_plugin.workflows.data import records as read_records
from escn_plugin.workflows.relaxations import read_relaxed_positions


def is2rs_metrics(
    pred_pos: Sequence[np.ndarray],
    true_pos: Sequence[np.ndarray],
    cells: Sequence[np.ndarray],
    free: Sequence[np.ndarray],
    pbc: Sequence[bool] = (True, True, True),
) -> dict[str, float]:
    """IS2RS metrics over structures, on free atoms, as fairchem's evaluator defines them.

    Per structure d = mean over free atoms of the minimum-image distance |r_pred - r_true|.
    ``adwt`` is fairchem's ``average_distance_within_threshold``: the fraction of
    (structure, threshold) pairs with d < threshold, thresholds 0.01, 0.011, ... 0.499 A,
    i.e. the OC20 ADwT ("average over thresholds of the fraction of structures whose
    mean atom distance is below the threshold"). ``mean_distance``: mean of d.
    ``positions_mae``: mean absolute Cartesian error with the minimum image (fairchem's
    is2rs ``positions_mae`` omits the minimum image). ``dwt_0.1``: fraction with d < 0.1.
    """
    import torch
    from fairchem.core.modules.evaluator import average_distance_within_threshold, min_diff

    pred = [np.asarray(p, np.float64)[np.asarray(m, bool)] for p, m in zip(pred_pos, free)]
    true = [np.asarray(t, np.float64)[np.asarray(m, bool)] for t, m in zip(true_pos, free)]
    cells = [np.asarray(c, np.float64).reshape(3, 3) for c in cells]
    natoms = torch.tensor([len(p) for p in pred])
    adwt = average_distance_within_threshold(
        {"positions": torch.from_numpy(np.concatenate(pred)), "natoms": natoms},
        {
            "positions": torch.from_numpy(np.concatenate(true)),
            "natoms": natoms,
            "cell": torch.from_numpy(np.stack(cells)),
            "pbc": torch.tensor(list(pbc)),
        },
    )["metric"]
    diffs = [min_diff(p, t, c, list(pbc)) for p, t, c in zip(pred, true, cells)]
    distances = np.array([np.linalg.norm(d, axis=1).mean() for d in diffs])
    return {
        "n_systems": len(pred),
        "adwt": float(adwt),
        "mean_distance": float(distances.mean()),
        "positions_mae": float(np.abs(np.concatenate(diffs)).mean()),
        "dwt_0.1": float((distances < 0.1).mean()),
    }


def relaxation_metrics(
    relaxed_positions: str | os.PathLike,
    relax_src: str | os.PathLike,
    relaxed_energies: dict[str, float],
    train_energy_mean: float | None = None,
) -> dict[str, Any]:
    """IS2RE and IS2RS metrics of a ``run-relaxations`` output against the IS2RE/IS2RS
    records (``y_relaxed``, ``pos_relaxed``) of ``relax_src``.

    IS2RE: ``relaxed_energies[sid]`` (see :func:`model_energies`) vs ``y_relaxed``: MAE,
    and EwT, the fraction within 0.02 eV (fairchem's ``energy_within_threshold``).
    IS2RS: see :func:`is2rs_metrics`. Reference rows: the unrelaxed initial structure as
    the IS2RS prediction, and (if given) the train-mean energy as the IS2RE prediction.
    """
    records = {str(int(d.sid)): d for d in read_records(Path(relax_src))}
    positions = read_relaxed_positions(relaxed_positions)
    missing = set(records) - set(positions)
    if missing:
        raise ValueError(f"{relaxed_positions} lacks systems {sorted(missing)}")
    missing = set(records) - set(relaxed_energies)
    if missing:
        raise ValueError(f"no relaxed energy for systems {sorted(missing)}")
    sids = sorted(records, key=int)
    recs = [records[s] for s in sids]
    free = [d.fixed.numpy() == 0 for d in recs]
    cells = [d.cell.numpy().reshape(3, 3) for d in recs]
    true = [d.pos_relaxed.numpy() for d in recs]

    e_pred = np.array([relaxed_energies[s] for s in sids], dtype=np.float64)
    e_true = np.array([float(d.y_relaxed) for d in recs])
    err = np.abs(e_pred - e_true)
    out: dict[str, Any] = {
        "n_systems": len(sids),
        "sids": sids,
        "is2re_energy_mae": float(err.mean()),
        "is2re_ewt": float((err < 0.02).mean()),
        "is2rs": is2rs_metrics([positions[s] for s in sids], true, cells, free),
        "initial_as_relaxed": is2rs_metrics([d.pos.numpy() for d in recs], true, cells, free),
        "energy_pred": e_pred,
        "energy_true": e_true,
    }
    if train_energy_mean is not None:
        out["is2re_baseline_mae"] = float(np.abs(e_true - train_energy_mean).mean())
    return out
