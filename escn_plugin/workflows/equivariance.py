"""The trained model's rotation error: energies and forces of structures and of randomly
rotated copies, through fairchem's ``OCPCalculator`` (float32, as the model runs)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from escn_plugin.workflows.relaxations import record_atoms


def rotation_error(
    checkpoint: str | os.PathLike,
    records: Sequence,
    n_rotations: int = 2,
    seed: int = 0,
    calculator: Any = None,
) -> dict[str, Any]:
    """How far the checkpoint is from rotation equivariance on ``records`` (LMDB records).

    For each structure x and random rotation R (positions and cell rotated together):
    force error = max_i |F(Rx)_i - R F(x)_i| / max_i |F(x)_i| (all atoms, all components),
    energy error = |E(Rx) - E(x)| (eV). Returns the largest and the median of each over
    all (structure, rotation) pairs and the largest force, ``max_force`` (eV/A).
    ``calculator``: an ``OCPCalculator`` to reuse (else one is made from ``checkpoint``).
    """
    from scipy.spatial.transform import Rotation

    if calculator is None:
        from fairchem.core.common.relaxation.ase_utils import OCPCalculator

        calculator = OCPCalculator(checkpoint_path=str(checkpoint), cpu=True, seed=0)
    rng = np.random.default_rng(seed)

    def energy_forces(atoms) -> tuple[float, np.ndarray]:
        atoms.calc = calculator
        return atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)

    force_errors, energy_errors, max_forces = [], [], []
    for record in records:
        atoms = record_atoms(record)
        energy, forces = energy_forces(atoms)
        scale = np.abs(forces).max()
        for _ in range(n_rotations):
            rot = Rotation.random(random_state=rng).as_matrix()  # [3, 3]
            turned = atoms.copy()
            turned.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
            turned.set_positions(atoms.get_positions() @ rot.T, apply_constraint=False)
            energy_rot, forces_rot = energy_forces(turned)
            force_errors.append(np.abs(forces_rot - forces @ rot.T).max() / scale)
            energy_errors.append(abs(energy_rot - energy))
        max_forces.append(scale)
    return {
        "n_structures": len(max_forces),
        "n_rotations": n_rotations,
        "force_error_max": float(np.max(force_errors)),
        "force_error_median": float(np.median(force_errors)),
        "energy_error_max": float(np.max(energy_errors)),
        "energy_error_median": float(np.median(energy_errors)),
        "max_force": float(np.max(max_forces)),
    }
