"""Element references and normalizers of the fine-tune, fitted on its training split.

fairchem's own fitting functions do the work (``fit_linear_references`` and
``fit_normalizers`` from ``fairchem.core.modules.normalization``: what its scripts
``fit_references.py`` / ``fit_normalizers.py`` wrap), called in this process on the
training LMDB with ``num_workers=0`` (the scripts default to 16 data-loader workers, and
forked workers reading an LMDB opened by the parent crash on this project's machines):

- energy references: least squares of the energy on the element counts (numpy's lstsq);
- normalizers: mean and RMS deviation of the referenced energy; RMS of the forces and
  stresses about 0 (``rmsd_correction=0``: fairchem otherwise carries the energy's n - 1
  over to the forces).

A gradient (conservative) model needs one scale for energy, forces and stress, or its
denormalised forces are not minus the gradient of its denormalised energy: there the
energy and stress scales are set to the force scale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from escn_plugin.finetune.data import Structure

__all__ = ["fit_normalization", "reference_energies"]

#: batch size of the fitting passes (any size gives the same fit: all batches are used)
FIT_BATCH_SIZE = 64


def fit_normalization(
    train_src: str | os.PathLike,
    out_dir: str | os.PathLike,
    stress: bool,
    conservative: bool,
    seed: int = 0,
) -> dict:
    """Fit on the LMDB folder ``train_src``; write ``OUT_DIR/element_references.npz``.

    Returns ``{"element_references": {"file", "coeff" (by atomic number)},
    "normalizer": {target: {"mean", "rmsd"}}}``: the second is what fairchem's
    ``transforms.normalizer`` takes inline.
    """
    from fairchem.core.datasets import LmdbDataset
    from fairchem.core.modules.normalization.element_references import fit_linear_references
    from fairchem.core.modules.normalization.normalizer import fit_normalizers

    dataset = LmdbDataset({"src": str(train_src)})
    refs = fit_linear_references(
        targets=["energy"],
        dataset=dataset,
        batch_size=FIT_BATCH_SIZE,
        num_workers=0,
        log_metrics=False,
        seed=seed,
    )
    targets = ["energy", "forces"] + (["stress"] if stress else [])
    normalizers = fit_normalizers(
        targets=targets,
        dataset=dataset,
        batch_size=FIT_BATCH_SIZE,
        override_values={"forces": {"mean": 0.0}, "stress": {"mean": 0.0}},
        rmsd_correction=0,
        element_references=refs,
        num_workers=0,
        seed=seed,
    )
    values = {
        name: {"mean": float(norm.mean), "rmsd": float(norm.rmsd)}
        for name, norm in normalizers.items()
    }
    if conservative:
        scale = values["forces"]["rmsd"]
        values["energy"]["rmsd"] = scale
        if stress:
            values["stress"]["rmsd"] = scale
    coeff = refs["energy"].element_references.double().numpy()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "element_references.npz"
    np.savez(path, element_references=coeff)
    return {
        "element_references": {"file": str(path.resolve()), "coeff": coeff},
        "normalizer": values,
    }


def reference_energies(coeff: np.ndarray, structures: Sequence[Structure]) -> np.ndarray:
    """The element references' energy of each structure (sum of per-element values)."""
    return np.array([float(coeff[s.atoms.numbers].sum()) for s in structures])
