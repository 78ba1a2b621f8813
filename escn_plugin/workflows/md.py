"""NVE energy drift: how well a calculator's forces conserve its own energy in MD.

ASE's velocity Verlet from velocities drawn at ``temperature_K`` (centre of mass at
rest); E_tot = E_pot + E_kin after every step. Drift = slope of a straight-line fit of
E_tot(t), per atom (eV/atom/ps). Forces that are the gradient of the energy conserve
E_tot to O(dt^2) with no systematic drift; direct (predicted) forces need not, so the
drift measures how far they are from conservative. Constraints on the atoms (e.g.
``FixAtoms`` on sub-surface slab atoms) are kept, as ASE's integrators respect them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def nve_energy_drift(
    atoms: Any,
    calculator: Any,
    steps: int = 200,
    timestep_fs: float = 1.0,
    temperature_K: float = 300.0,
    seed: int = 0,
) -> dict[str, float]:
    """Run ``steps`` velocity-Verlet steps of a copy of ``atoms`` under ``calculator``.

    Returns the drift (eV/atom/ps, signed and absolute), the standard deviation and range
    of E_tot (eV), the std of E_kin (eV, for scale), the final temperature (K) and the
    CPU seconds taken.
    """
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
    from ase.md.verlet import VelocityVerlet

    atoms = atoms.copy()
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(
        atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed)
    )
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep_fs * units.fs)
    e_pot, e_kin = [], []

    def record() -> None:
        e_pot.append(atoms.get_potential_energy())
        e_kin.append(atoms.get_kinetic_energy())

    dyn.attach(record, interval=1)
    start = time.process_time()
    dyn.run(steps)
    cpu = time.process_time() - start
    e_tot = np.array(e_pot) + np.array(e_kin)  # [steps + 1]
    t_ps = np.arange(len(e_tot)) * timestep_fs * 1e-3
    slope = float(np.polyfit(t_ps, e_tot, 1)[0])  # eV/ps
    return {
        "steps": steps,
        "timestep_fs": timestep_fs,
        "temperature_K": temperature_K,
        "natoms": len(atoms),
        "drift_ev_per_atom_ps": slope / len(atoms),
        "abs_drift_ev_per_atom_ps": abs(slope) / len(atoms),
        "etot_std_ev": float(e_tot.std()),
        "etot_range_ev": float(e_tot.max() - e_tot.min()),
        "ekin_std_ev": float(np.std(e_kin)),
        "final_temperature_K": float(atoms.get_temperature()),
        "cpu_s": cpu,
    }


def nve_drift(
    checkpoint: Any,
    record: Any,
    steps: int = 200,
    timestep_fs: float = 1.0,
    temperature_K: float = 300.0,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`nve_energy_drift` of a checkpoint (through fairchem's ``OCPCalculator``) and
    of EMT, the labels' own potential (the floor), from the relaxed structure of an
    IS2RE/IS2RS LMDB ``record`` (its initial structure if it has no ``pos_relaxed``)."""
    from ase.calculators.emt import EMT
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    from escn_plugin.workflows.relaxations import record_atoms

    relaxed = getattr(record, "pos_relaxed", None)
    atoms = record_atoms(record, None if relaxed is None else relaxed.numpy())
    calculator = OCPCalculator(checkpoint_path=str(checkpoint), cpu=True, seed=0)
    settings = {
        "steps": steps,
        "timestep_fs": timestep_fs,
        "temperature_K": temperature_K,
        "seed": seed,
    }
    return {
        "system": f"sid {int(record.sid)}",
        "model": nve_energy_drift(atoms, calculator, **settings),
        "emt": nve_energy_drift(atoms, EMT(), **settings),
    }
