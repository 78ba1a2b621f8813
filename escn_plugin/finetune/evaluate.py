"""Held-out errors of a checkpoint, through fairchem's ``OCPCalculator`` (the way users run
the fine-tuned model in ASE), and the NVE energy drift of a conservative one.

Errors are over the test structures: energy MAE (eV) and per-atom energy MAE (eV/atom),
force MAE over the components of the free atoms (eV/A; atoms fixed by ``FixAtoms`` are
left out, as fairchem's ``eval_on_free_atoms``), stress MAE over the 9 components
(eV/A^3) where the structures and the model have stresses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from escn_plugin.finetune.data import Structure

__all__ = ["calculator", "errors", "nve_drift", "predict"]


def calculator(checkpoint: str | os.PathLike, device: str = "cpu") -> Any:
    """``OCPCalculator`` of ``checkpoint`` (no edits to the checkpoint)."""
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    return OCPCalculator(checkpoint_path=str(checkpoint), cpu=device == "cpu", seed=0)


def _free(atoms) -> np.ndarray:
    from ase.constraints import FixAtoms

    free = np.ones(len(atoms), dtype=bool)
    for constraint in atoms.constraints:
        if isinstance(constraint, FixAtoms):
            free[constraint.index] = False
    return free


def predict(
    checkpoint: str | os.PathLike, structures: Sequence[Structure], device: str = "cpu"
) -> dict[str, np.ndarray]:
    """Predicted and true energies ``[S]``, forces of free atoms ``[n, 3]`` and, if the
    model has a stress output and every structure a stress label, stresses ``[S, 3, 3]``."""
    calc = calculator(checkpoint, device)
    with_stress = "stress" in calc.implemented_properties and all(
        s.stress is not None for s in structures
    )
    out: dict[str, list] = {k: [] for k in ("energy", "forces", "stress")}
    true: dict[str, list] = {k: [] for k in ("energy", "forces", "stress")}
    natoms = []
    for structure in structures:
        atoms = structure.atoms.copy()
        atoms.calc = calc
        free = _free(atoms)
        out["energy"].append(atoms.get_potential_energy())
        out["forces"].append(np.asarray(calc.results["forces"])[free])
        labels = structure.atoms.calc.results
        true["energy"].append(labels["energy"])
        true["forces"].append(np.asarray(labels["forces"])[free])
        if with_stress:
            out["stress"].append(atoms.get_stress(voigt=False))
            true["stress"].append(structure.stress)
        natoms.append(len(atoms))
    result = {"natoms": np.array(natoms)}
    for key in ("energy", "forces", "stress"):
        if out[key]:
            stack = np.concatenate if key == "forces" else np.array
            result[f"{key}_pred"] = stack(out[key])
            result[f"{key}_true"] = stack(true[key])
    return result


def errors(pred: dict[str, np.ndarray]) -> dict[str, float]:
    """MAEs of :func:`predict`'s arrays (see the module doc)."""
    energy = np.abs(pred["energy_pred"] - pred["energy_true"])
    out = {
        "energy_mae": float(energy.mean()),
        "energy_per_atom_mae": float((energy / pred["natoms"]).mean()),
        "forces_mae": float(np.abs(pred["forces_pred"] - pred["forces_true"]).mean()),
    }
    if "stress_pred" in pred:
        out["stress_mae"] = float(np.abs(pred["stress_pred"] - pred["stress_true"]).mean())
    return out


def nve_drift(
    checkpoint: str | os.PathLike,
    structure: Structure,
    steps: int,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Velocity Verlet (1 fs, from 300 K) from ``structure`` under the checkpoint's
    calculator: the drift of the total energy (eV/atom/ps), as
    :func:`escn_plugin.workflows.md.nve_energy_drift` measures it."""
    from escn_plugin.workflows.md import nve_energy_drift

    atoms = structure.atoms.copy()
    atoms.calc = None
    return nve_energy_drift(atoms, calculator(checkpoint, device), steps=steps, seed=seed)
