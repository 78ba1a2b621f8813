"""Reading ``--mode run-relaxations`` outputs (relaxed positions, trajectories) and the
trained model's energies at the relaxed structures (fairchem's ``OCPCalculator``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from escn_plugin.workflows.data import records as read_records


def read_relaxed_positions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{sid: [N, 3] positions}`` from fairchem's ``relaxed_positions.npz``."""
    with np.load(path) as npz:
        ids = [str(i) for i in npz["ids"]]
        return dict(zip(ids, np.split(npz["pos"], npz["chunk_idx"])))


def trajectory_last_frames(traj_dir: str | os.PathLike) -> dict[str, Any]:
    """``{sid: last Atoms (energy attached), or None for an empty file}`` from fairchem's
    ``<sid>.traj`` files.

    fairchem 1.10's batched L-BFGS writes a frame only for systems still unconverged
    (``update_mask``): a system that converges before its batch finishes never gets its
    final frame written (with ``save_full_traj: False`` its file then holds only the
    initial frame), and one converged at step 0 gets an empty file.
    """
    from ase.io import Trajectory

    frames = {}
    for path in sorted(Path(traj_dir).glob("*.traj")):
        with Trajectory(path) as traj:
            frames[path.stem] = traj[-1] if len(traj) else None
    return frames


def record_atoms(record, positions: np.ndarray | None = None):
    """The ASE ``Atoms`` of an LMDB record (tags, ``FixAtoms`` on fixed atoms, PBC), at
    ``positions`` if given."""
    from ase import Atoms
    from ase.constraints import FixAtoms

    atoms = Atoms(
        numbers=record.atomic_numbers.numpy(),
        positions=record.pos.numpy() if positions is None else positions,
        cell=record.cell.numpy().reshape(3, 3),
        pbc=True,
        tags=record.tags.numpy(),
    )
    atoms.set_constraint(FixAtoms(mask=record.fixed.numpy() == 1))
    return atoms


def model_energies(
    checkpoint: str | os.PathLike,
    relax_src: str | os.PathLike,
    positions: dict[str, np.ndarray],
) -> dict[str, float]:
    """The checkpoint's energy of each system of ``relax_src`` at ``positions[sid]`` (the
    relaxed structures), through fairchem's ``OCPCalculator``: the IS2RE prediction of a
    relaxation, independent of which frames fairchem wrote to the trajectories.
    ``OCPCalculator`` applies no EMA: pass ``best_checkpoint.pt`` (EMA weights in place)
    for the model that ``--mode run-relaxations`` used."""
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    calc = OCPCalculator(checkpoint_path=str(checkpoint), cpu=True, seed=0)
    energies = {}
    for record in read_records(Path(relax_src)):
        sid = str(int(record.sid))
        atoms = record_atoms(record, positions[sid])
        atoms.calc = calc
        energies[sid] = float(atoms.get_potential_energy())
    return energies


def trajectory_check(
    traj_dir: str | os.PathLike, relaxed_positions: str | os.PathLike, tol: float = 1e-4
) -> dict[str, Any]:
    """Which trajectories end on the relaxed structure in ``relaxed_positions.npz``?

    Returns ``{"energies": {sid: last-frame energy or None}, "stale": [sids whose last
    frame is missing or is not the final structure]}``: the IS2RE-by-relaxation submission
    (``make_submission_file --is2re-relaxations``) reads those last frames.
    """
    frames = trajectory_last_frames(traj_dir)
    positions = read_relaxed_positions(relaxed_positions)
    energies, stale = {}, []
    for sid, pos in positions.items():
        atoms = frames.get(sid)
        if atoms is None:
            energies[sid] = None
            stale.append(sid)
            continue
        energies[sid] = float(atoms.get_potential_energy())
        if np.abs(atoms.get_positions() - pos).max() > tol:
            stale.append(sid)
    return {"energies": energies, "stale": sorted(stale, key=int)}
