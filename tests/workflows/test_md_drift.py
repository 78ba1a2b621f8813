"""NVE energy drift (``escn_plugin.workflows.md``): small for forces that are the gradient
of the energy, large for forces that are not, and finite through a trained checkpoint."""

from __future__ import annotations

import math

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

from escn_plugin.workflows.md import nve_energy_drift


class ScaledForcesEMT(EMT):
    """EMT energies with forces scaled by 1.3: not the gradient of the energy."""

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.results["forces"] = 1.3 * self.results["forces"]


def cell():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))  # 32 atoms
    atoms.rattle(0.05, seed=1)
    return atoms


def test_drift_separates_gradient_forces_from_other_forces():
    settings = dict(steps=60, timestep_fs=2.0, temperature_K=600.0, seed=0)
    exact = nve_energy_drift(cell(), EMT(), **settings)
    scaled = nve_energy_drift(cell(), ScaledForcesEMT(), **settings)
    for result in (exact, scaled):
        assert result["natoms"] == 32 and result["steps"] == 60
        assert all(math.isfinite(v) for v in result.values())
    # EMT conserves E_pot + E_kin to O(dt^2): fluctuations far below the kinetic ones
    assert exact["etot_std_ev"] < 0.05 * exact["ekin_std_ev"]
    assert exact["abs_drift_ev_per_atom_ps"] < 1e-2
    # non-gradient forces do work the energy does not account for
    assert scaled["etot_std_ev"] > 10 * exact["etot_std_ev"]
    assert scaled["abs_drift_ev_per_atom_ps"] == abs(scaled["drift_ev_per_atom_ps"])


def test_same_seed_same_trajectory():
    a = nve_energy_drift(cell(), EMT(), steps=10, seed=3)
    b = nve_energy_drift(cell(), EMT(), steps=10, seed=3)
    c = nve_energy_drift(cell(), EMT(), steps=10, seed=4)
    assert np.isclose(a["drift_ev_per_atom_ps"], b["drift_ev_per_atom_ps"], rtol=0, atol=0)
    assert a["final_temperature_K"] != c["final_temperature_K"]
