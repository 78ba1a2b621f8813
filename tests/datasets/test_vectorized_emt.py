"""VectorizedEMT against ASE's EMT: energies, per-atom energies, forces and stress on the
structures the datasets label (slabs with adsorbates, bulk, molecules, isolated atoms),
and its cached neighbour pairs against a fresh search while atoms move."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc100, fcc111, molecule
from ase.calculators.emt import EMT

from escn_plugin.datasets import oc20_emt
from escn_plugin.datasets.vectorized_emt import SKIN, VectorizedEMT, neighbor_pairs


def _structures() -> dict[str, Atoms]:
    rng = np.random.default_rng(0)
    out = {
        f"oc20_emt sid {spec.sid}": oc20_emt.build_system(spec, rng)
        for spec in oc20_emt.design_systems(0, "demo")[:4]
    }
    cu = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    cu.rattle(0.08, seed=1)
    out["bulk Cu, rattled"] = cu
    alloy = bulk("Pt", "fcc", a=3.9, cubic=True)
    alloy.symbols[[1, 2]] = "Ni"
    alloy.set_cell(alloy.cell.array @ [[1.0, 0.03, 0.0], [0.0, 1.0, 0.02], [0.01, 0.0, 1.0]])
    out["bulk PtNi, sheared"] = alloy
    primitive = bulk("Al", "fcc", a=4.0)  # one atom, skew cell, far outside it
    primitive.positions[0] += [7.3, -9.1, 3.3]
    out["bulk Al, primitive, unwrapped"] = primitive
    slab = fcc100("Au", size=(2, 2, 3), vacuum=6.0)
    slab.pbc = (True, True, False)
    out["Au(100), 2D periodic"] = slab
    out["Ag(111)"] = fcc111("Ag", size=(2, 2, 3), vacuum=5.0, periodic=True)
    out["CO molecule"] = molecule("CO")
    out["Cu pair beyond the cutoff"] = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 20]])
    return out


STRUCTURES = _structures()


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_matches_ase_emt(name):
    atoms = STRUCTURES[name]
    ref, new = atoms.copy(), atoms.copy()
    ref.calc, new.calc = EMT(), VectorizedEMT()
    assert new.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(
        new.get_potential_energies(), ref.get_potential_energies(), atol=1e-10
    )
    np.testing.assert_allclose(new.get_forces(), ref.get_forces(), atol=1e-10)
    if atoms.cell.rank == 3:
        np.testing.assert_allclose(new.get_stress(), ref.get_stress(), atol=1e-12)


def test_forces_are_the_energy_gradient():
    atoms = STRUCTURES["bulk PtNi, sheared"].copy()
    atoms.calc = VectorizedEMT()
    forces = atoms.get_forces()
    h = 1e-5
    for a, k in [(0, 0), (1, 2), (3, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.calc, minus.calc = VectorizedEMT(), VectorizedEMT()
        plus.positions[a, k] += h
        minus.positions[a, k] -= h
        numeric = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * h)
        assert forces[a, k] == pytest.approx(numeric, abs=1e-7)


def test_cached_pairs_follow_moving_atoms():
    """Moves below and above SKIN / 2 (cache reused, then rebuilt) give ASE's answer."""
    atoms = STRUCTURES["oc20_emt sid 0"].copy()
    atoms.calc = VectorizedEMT()
    ref = atoms.copy()
    ref.calc = EMT()
    rng = np.random.default_rng(3)
    for _ in range(6):
        move = rng.normal(0.0, 0.2 * SKIN, size=(len(atoms), 3))
        atoms.positions += move
        ref.positions += move
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-10)
        assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)


def test_new_numbers_reinitialise():
    atoms = STRUCTURES["bulk Cu, rattled"].copy()
    atoms.calc = VectorizedEMT()
    atoms.get_potential_energy()
    atoms.symbols[0] = "Au"
    ref = atoms.copy()
    ref.calc = EMT()
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-10)


def test_neighbor_pairs_brute_force():
    """Every pair within the cutoff over a generous block of images, and no other."""
    atoms = STRUCTURES["bulk PtNi, sheared"]
    cutoff = 6.2
    i, j, shift = neighbor_pairs(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    found = {(a, b, tuple(s)) for a, b, s in zip(i.tolist(), j.tolist(), shift.tolist())}
    expected = set()
    r = range(-4, 5)
    for a in range(len(atoms)):
        for b in range(len(atoms)):
            for s in [(x, y, z) for x in r for y in r for z in r]:
                d = atoms.positions[b] + np.array(s) @ atoms.cell.array - atoms.positions[a]
                if (a != b or any(s)) and np.linalg.norm(d) < cutoff:
                    expected.add((a, b, s))
    assert found == expected
