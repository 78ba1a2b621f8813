"""Leaderboard submission files with fairchem's ``make_submission_file``, and a check
that one loads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from escn_plugin.common.progress import log as _log

#: OC20 S2EF test splits; make_submission_file wants one predictions file for each
OC20_SPLITS = ("id", "ood_ads", "ood_cat", "ood_both")
SUBMISSION_FIELDS = ("ids", "energy", "forces", "chunk_idx")


def make_submission(
    predictions: dict[str, str | os.PathLike] | str | os.PathLike,
    out_path: str | os.PathLike,
    dataset: str = "OC20",
    is2re_relaxations: bool = False,
    stream: bool = True,
) -> Path:
    """Run ``python -m fairchem.core.scripts.make_submission_file``.

    ``predictions`` maps split names (OC20: id, ood_ads, ood_cat, ood_both; OC22: id, ood)
    to result files (S2EF/IS2RE ``*_predictions.npz``, IS2RS ``relaxed_positions.npz``) or,
    with ``is2re_relaxations``, trajectory directories. A single path is used for every
    split (a stand-in where only one test split exists).
    """
    splits = {"OC20": OC20_SPLITS, "OC22": ("id", "ood")}[dataset]
    if not isinstance(predictions, dict):
        predictions = dict.fromkeys(splits, predictions)
    out_path = Path(out_path).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fairchem.core.scripts.make_submission_file"]
    cmd += ["--dataset", dataset, "--out-path", str(out_path)]
    for split in splits:
        cmd += [f"--{split.replace('_', '-')}", str(Path(predictions[split]).resolve())]
    if is2re_relaxations:
        cmd.append("--is2re-relaxations")
    if stream:
        _log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    if stream:
        _log(proc.stdout.strip())
    return out_path if out_path.suffix == ".npz" else out_path.with_name(out_path.name + ".npz")


def check_submission(
    path: str | os.PathLike,
    splits: Sequence[str] = OC20_SPLITS,
    fields: Sequence[str] = SUBMISSION_FIELDS,
) -> dict[str, tuple]:
    """Load a submission file; check it has ``<split>_<field>`` for every split and field
    and that the splits agree in size. Returns ``{key: shape}``."""
    with np.load(path, allow_pickle=False) as sub:
        shapes = {key: sub[key].shape for key in sub.files}
    expected = {f"{s}_{f}" for s in splits for f in fields}
    missing = expected - set(shapes)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}; has {sorted(shapes)}")
    for field in fields:
        if len({shapes[f"{s}_{field}"] for s in splits}) != 1:
            raise ValueError(f"{path}: splits disagree in the shape of {field}")
    return shapes
