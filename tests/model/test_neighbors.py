"""The cell-list neighbour list against fairchem's O(N^2) ``radius_graph_pbc``, edge for
edge, and against a brute-force numpy reference where fairchem cannot go (float64, zero
cells, mixed periodicity in one batch)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from fairchem.core.common.utils import radius_graph_pbc
from scipy.spatial.transform import Rotation

from escn_plugin.common.default_dtype import default_dtype
from escn_plugin.model import neighbors
from escn_plugin.model.neighbors import close_pairs, neighbor_list

ROTATION = Rotation.from_euler("xyz", [0.3, 0.7, 1.1]).as_matrix()


# --- structures ---------------------------------------------------------------------------


def _slab(periodic_z: bool = False, seed: int = 0) -> Atoms:
    atoms = fcc111("Pt", size=(3, 3, 4), vacuum=6.0, periodic=periodic_z)
    atoms.pbc = [True, True, periodic_z]
    atoms.rattle(0.05, seed=seed)
    atoms.wrap()
    return atoms


def _rotated_slab() -> Atoms:
    atoms = _slab(periodic_z=True, seed=1)
    atoms.set_positions(atoms.positions @ ROTATION.T)
    atoms.set_cell(atoms.cell[:] @ ROTATION.T, scale_atoms=False)
    atoms.wrap()
    return atoms


def _small_cell(rattle: bool = True) -> Atoms:
    """Two atoms in a cell shorter than the 6 A cutoff: images up to 3 cells away."""
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    if rattle:
        atoms.rattle(0.05, seed=2)
    atoms.wrap()
    return atoms


def _triclinic() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
    lattice = atoms.cell[:] + np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.5, 1.0, 0.0]])
    atoms.set_cell(lattice, scale_atoms=True)
    atoms.rattle(0.05, seed=3)
    atoms.wrap()
    return atoms


def _molecule(zero_cell: bool = True) -> Atoms:
    atoms = molecule("C6H6")
    atoms.rattle(0.01, seed=4)
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3)) if zero_cell else np.eye(3) * 30.0
    return atoms


def _perfect_fcc() -> Atoms:
    atoms = bulk("Pt", "fcc", a=3.92) * (2, 2, 2)
    atoms.wrap()
    return atoms


def _rotated_slab_ttf() -> Atoms:
    """Periodic along a1, a2 only, with the slab normal off the z axis."""
    atoms = _slab(seed=7)
    atoms.set_positions(atoms.positions @ ROTATION.T)
    atoms.set_cell(atoms.cell[:] @ ROTATION.T, scale_atoms=False)
    atoms.wrap()
    return atoms


CASES = {
    "slab_TTF": _slab,
    "slab_TTF_rotated": _rotated_slab_ttf,
    "slab_TTT_rotated": _rotated_slab,
    "small_cell": _small_cell,
    "triclinic": _triclinic,
    "molecule_zero_cell": _molecule,
}
CUTOFF = 6.0


# --- helpers ------------------------------------------------------------------------------


def _inputs(atoms_list: list[Atoms], dtype=torch.float64):
    pos = torch.tensor(np.concatenate([a.positions for a in atoms_list]), dtype=dtype)
    cell = torch.tensor(np.stack([a.cell[:] for a in atoms_list]), dtype=dtype)
    natoms = torch.tensor([len(a) for a in atoms_list])
    pbc = torch.tensor(np.stack([a.pbc for a in atoms_list]))
    return pos, cell, natoms, pbc


def _ours(atoms: Atoms, cutoff=CUTOFF, k=1000, strict=True, dtype=torch.float64):
    pos, cell, natoms, pbc = _inputs([atoms], dtype)
    return neighbor_list(pos, cell, natoms, pbc, cutoff, k, strict)


def _fairchem(atoms: Atoms, cutoff=CUTOFF, k=1000, strict=True):
    """fairchem's radius_graph_pbc called directly, as fairchem's models do (float32)."""
    data = SimpleNamespace(
        pos=torch.tensor(atoms.positions, dtype=torch.float32),
        cell=torch.tensor(atoms.cell[:], dtype=torch.float32).view(1, 3, 3),
        natoms=torch.tensor([len(atoms)]),
    )
    with torch.no_grad(), default_dtype(torch.float32):
        return radius_graph_pbc(data, cutoff, k, strict, pbc=atoms.pbc.tolist())


def _rows(result) -> list[tuple[int, ...]]:
    """``(source, target, n1, n2, n3)`` per edge, in order."""
    edge_index, offsets, _ = result
    return [tuple(r) for r in torch.cat([edge_index.T, offsets.round().long()], 1).tolist()]


def _brute_force(atoms: Atoms, cutoff: float, k: int, strict: bool) -> list[tuple[int, ...]]:
    """Every image pair within the cutoff (numpy, all offsets up to the needed range), then
    fairchem's cap per target, written out the slow way; sorted rows."""
    pos, lattice, n = atoms.positions, atoms.cell[:], len(atoms)
    reach = []
    for axis in range(3):
        if atoms.pbc[axis]:
            others = np.cross(lattice[(axis + 1) % 3], lattice[(axis + 2) % 3])
            spacing = abs(np.linalg.det(lattice)) / np.linalg.norm(others)
            reach.append(int(np.ceil(cutoff / spacing)))
        else:
            reach.append(0)
    per_target: dict[int, list] = {i: [] for i in range(n)}
    for shift in itertools.product(*(range(-r, r + 1) for r in reach)):
        vec = pos[None, :, :] - pos[:, None, :] + np.array(shift) @ lattice  # [i, j, 3]
        dist2 = (vec**2).sum(-1)
        for i, j in zip(*np.nonzero(dist2 <= cutoff**2)):
            if i != j or any(shift):
                per_target[int(i)].append((dist2[i, j], int(j), *shift))
    rows = []
    for i, found in per_target.items():
        found.sort()
        if 0 < k < len(found) and strict:  # k nearest, near-ties by (source, offset)
            kth = found[k - 1][0]
            tol = neighbors.TIE_TOLERANCE
            nearer = [f for f in found if f[0] < kth - tol]
            tied = sorted((f for f in found if abs(f[0] - kth) <= tol), key=lambda f: f[1:])
            found = nearer + tied[: k - len(nearer)]
        elif 0 < k < len(found):  # fairchem: after the (k+1)-th, on squared distances
            found = [f for f in found if f[0] <= found[k][0] + 0.01]
        rows += [(j, i, *shift) for _, j, *shift in found]
    return sorted(rows, key=lambda r: (r[1], r[0], *r[2:]))


# --- against fairchem ---------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_all_edges_match_fairchem(case):
    atoms = CASES[case]()
    ours, theirs = _rows(_ours(atoms)), _rows(_fairchem(atoms))
    assert ours == theirs  # same edges, same order
    assert len(ours) > 10 * len(atoms)
    offsets = np.array([r[2:] for r in ours])
    assert (offsets[:, ~atoms.pbc] == 0).all()
    if atoms.pbc.any():
        assert (offsets != 0).any()  # the test sees images
    if case == "small_cell":
        assert np.abs(offsets).max() >= 2  # images several cells away


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_capped_edges_match_fairchem(case, strict):
    atoms = CASES[case]()
    k = 5 if case == "molecule_zero_cell" else 12
    ours = _ours(atoms, k=k, strict=strict)
    assert _rows(ours) == _rows(_fairchem(atoms, k=k, strict=strict))
    assert ours[0].shape[1] < _ours(atoms)[0].shape[1]  # the cap removed edges
    per_target = torch.bincount(ours[0][1], minlength=len(atoms))
    if strict:
        assert int(per_target.max()) == k
    assert ours[2].tolist() == [ours[0].shape[1]]


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("k", [0, 5, 12, 1000])
@pytest.mark.parametrize("case", [*CASES, "perfect_fcc"])
def test_matches_brute_force(case, k, strict):
    atoms = _perfect_fcc() if case == "perfect_fcc" else CASES[case]()
    assert _rows(_ours(atoms, k=k, strict=strict)) == _brute_force(atoms, CUTOFF, k, strict)


def test_exact_ties_in_perfect_fcc():
    """12 first-shell neighbours at one distance, 6 second-shell: strict keeps exactly k,
    not strict keeps every tied one (and, with k = 12, fairchem's (k+1)-th shell too)."""
    atoms = _perfect_fcc()
    n = len(atoms)

    def per_atom(k, strict):
        edge_index = _ours(atoms, k=k, strict=strict)[0]
        return torch.bincount(edge_index[1], minlength=n).tolist()

    assert per_atom(8, True) == [8] * n
    assert per_atom(8, False) == [12] * n
    assert per_atom(12, True) == [12] * n
    assert per_atom(12, False) == [18] * n
    for k in (8, 12):
        assert _rows(_ours(atoms, k=k, strict=False)) == _rows(_fairchem(atoms, k=k, strict=False))
    # strict ties go to the smaller (source, offset): the first 8 of the 12 tied rows
    tied = [r for r in _rows(_ours(atoms, k=12)) if r[1] == 0]
    assert [r for r in _rows(_ours(atoms, k=8)) if r[1] == 0] == tied[:8]


def test_float64_positions():
    atoms = _rotated_slab()
    ours64, ours32 = _ours(atoms, k=12), _ours(atoms, k=12, dtype=torch.float32)
    assert _rows(ours64) == _rows(_fairchem(atoms, k=12)) == _rows(ours32)
    # the offsets reproduce every edge vector within the cutoff
    pos, cell, _, _ = _inputs([atoms])
    (source, target), offsets, _ = ours64
    vec = pos[source] - pos[target] + offsets.double() @ cell[0]
    length = vec.norm(dim=1)
    assert bool((length <= CUTOFF).all()) and bool((length > 0.5).all())


def test_mixed_periodicity_batch():
    """One call for systems with different periodic axes (and an empty one) equals one
    call per system, each equal to fairchem's."""
    systems = [_slab(), _molecule(), _small_cell(), _triclinic()]
    empty = Atoms(cell=np.eye(3) * 5.0, pbc=True)
    batch = [systems[0], systems[1], empty, systems[2], systems[3]]
    pos, cell, natoms, pbc = _inputs(batch)
    assert len({tuple(p) for p in pbc.tolist()}) == 3
    edge_index, offsets, per_system = neighbor_list(pos, cell, natoms, pbc, CUTOFF, 12)
    assert per_system.dtype == torch.long and edge_index.dtype == torch.long
    assert offsets.dtype == torch.float32
    assert per_system[2] == 0
    start, first_atom = 0, 0
    for atoms, count in zip(batch, per_system.tolist()):
        rows = _rows((edge_index[:, start : start + count], offsets[start : start + count], 0))
        shifted = [(s - first_atom, t - first_atom, *o) for s, t, *o in rows]
        if len(atoms):
            assert shifted == _rows(_fairchem(atoms, k=12))
        start += count
        first_atom += len(atoms)
    assert start == edge_index.shape[1]
    # fairchem's wrapper: one radius_graph_pbc call per run of systems sharing their axes
    theirs = neighbor_list(pos, cell, natoms, pbc, CUTOFF, 12, method="fairchem")
    assert _rows(theirs) == _rows((edge_index, offsets, 0))
    assert theirs[2].tolist() == per_system.tolist()


def test_pbc_as_three_flags_and_empty_inputs():
    atoms = _slab()
    pos, cell, natoms, _ = _inputs([atoms, atoms])
    a = neighbor_list(pos, cell, natoms, [True, True, False], CUTOFF, 12)
    b = neighbor_list(pos, cell, natoms, torch.tensor([[True, True, False]] * 2), CUTOFF, 12)
    assert _rows(a) == _rows(b) and a[2].tolist() == b[2].tolist()
    assert a[2][0] == a[2][1] > 0
    edge_index, offsets, per_system = neighbor_list(
        torch.zeros(0, 3), torch.zeros(0, 3, 3), torch.zeros(0, dtype=torch.long), [True] * 3, 6, 20
    )
    assert edge_index.shape == (2, 0) and offsets.shape == (0, 3) and per_system.shape == (0,)
    single = neighbor_list(
        torch.zeros(1, 3), torch.zeros(1, 3, 3), torch.tensor([1]), [False] * 3, 6.0, 20
    )
    assert single[0].shape == (2, 0) and single[2].tolist() == [0]


def test_bad_arguments_are_rejected():
    pos, cell, natoms, pbc = _inputs([_slab()])
    with pytest.raises(ValueError, match="method"):
        neighbor_list(pos, cell, natoms, pbc, CUTOFF, 12, method="ase")
    with pytest.raises(ValueError, match="pbc"):
        neighbor_list(pos, cell, natoms, [True, True], CUTOFF, 12)
    with pytest.raises(ValueError, match="natoms"):
        neighbor_list(pos, cell, natoms + 1, pbc, CUTOFF, 12)
    with pytest.raises(ValueError, match="lattice vectors"):
        neighbor_list(pos, torch.zeros_like(cell), natoms, [True] * 3, CUTOFF, 12)


def _thin_boxes() -> list[tuple[Atoms, float]]:
    """Boxes where vesin 0.6 would rescale its cells down to 0 along the thin axis."""
    rng = np.random.default_rng(0)
    wide = Atoms("H40", positions=rng.random((40, 3)) * [3.0, 4.0, 4.0], pbc=True)
    wide.cell = np.diag([3.0, 1000.0, 1000.0])
    thin = Atoms("H40", positions=rng.random((40, 3)) * [0.01, 5.0, 5.0], pbc=True)
    thin.cell = np.diag([0.01, 5.0, 5.0])
    return [(wide, 1.0), (thin, 0.015)]


def test_thin_cells_neither_crash_nor_blow_up():
    """vesin 0.6 divides by zero (SIGFPE) when it rescales the cells of a thin box: run in
    a subprocess so that a regression fails this test instead of killing the session."""
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys, torch
        spec = importlib.util.spec_from_file_location("nb", {neighbors.__file__!r})
        nb = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(nb)
        for pos, cell, cutoff in json.load(sys.stdin):
            pos, cell = torch.tensor(pos), torch.tensor(cell).view(1, 3, 3)
            natoms = torch.tensor([pos.shape[0]])
            e, o, _ = nb.neighbor_list(pos, cell, natoms, [True] * 3, cutoff, 20)
            close = nb.close_pairs(pos, cell, natoms, [True] * 3)[0]
            rows = torch.cat([e.T, o.long()], 1).tolist()
            print(json.dumps([rows, close.shape[1]]))
        """
    )
    boxes = _thin_boxes()
    stdin = json.dumps([(a.positions.tolist(), a.cell[:].tolist(), c) for a, c in boxes])
    proc = subprocess.run(
        [sys.executable, "-c", script], input=stdin, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"rc {proc.returncode}: {proc.stderr[-2000:]}"
    for (atoms, cutoff), line in zip(boxes, proc.stdout.strip().splitlines()):
        rows, close = json.loads(line)
        assert [tuple(r) for r in rows] == _brute_force(atoms, cutoff, 20, True)
        assert len(rows) > 0 and close == 0
    # planes 1e-6 A apart: 1e6 images in reach of a 1 A search, refused
    tiny = Atoms("H", positions=[[0.0, 0.0, 0.0]], cell=np.diag([1e-6, 5.0, 5.0]), pbc=True)
    with pytest.raises(ValueError, match="too thin"):
        neighbor_list(*_inputs([tiny]), 1.0, 20)


# --- search strategy and determinism ------------------------------------------------------


def test_deterministic_and_independent_of_the_search_order(monkeypatch):
    atoms = _perfect_fcc()  # exact ties: the strict cap must not depend on the order
    first = _rows(_ours(atoms, k=8))
    assert first == _rows(_ours(atoms, k=8))
    search = neighbors._search
    generator = torch.Generator().manual_seed(0)
    seen = []

    def shuffled(*args, **kwargs):
        out = search(*args, **kwargs)
        perm = torch.randperm(out[0].shape[0], generator=generator)
        seen.append(bool((perm != torch.arange(perm.shape[0])).any()))
        return tuple(x[perm] for x in out)

    monkeypatch.setattr(neighbors, "_search", shuffled)
    for strict in (True, False):
        assert _rows(_ours(atoms, k=8, strict=strict)) == _brute_force(atoms, CUTOFF, 8, strict)
    assert _rows(_ours(atoms, k=8)) == first
    assert seen and all(seen)


def test_adaptive_radius_equals_a_search_at_the_cutoff(monkeypatch):
    """At 12 A and 20 neighbours the first search uses a smaller radius; forcing more
    passes (a tiny first radius) or one pass at the cutoff gives the same edges."""
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=5)
    atoms.wrap()
    slab = _slab(seed=6)
    radii = []
    search = neighbors._search

    def spy(pos, cell, periodic, radius, full_list=True):
        radii.append(radius)
        return search(pos, cell, periodic, radius, full_list)

    monkeypatch.setattr(neighbors, "_search", spy)
    for system in (atoms, slab):
        for strict in (True, False):
            radii.clear()
            adaptive = _rows(_ours(system, cutoff=12.0, k=20, strict=strict))
            assert radii[0] < 12.0
            first_radius = neighbors._first_radius
            monkeypatch.setattr(neighbors, "_first_radius", lambda *a: 1.0)
            radii.clear()
            many_passes = _rows(_ours(system, cutoff=12.0, k=20, strict=strict))
            assert len(radii) >= 3
            monkeypatch.setattr(neighbors, "_first_radius", lambda *a: 12.0)
            one_pass = _rows(_ours(system, cutoff=12.0, k=20, strict=strict))
            monkeypatch.setattr(neighbors, "_first_radius", first_radius)
            assert adaptive == many_passes == one_pass
            assert len(adaptive) >= 20 * len(system)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inputs_give_cuda_outputs():
    pos, cell, natoms, pbc = _inputs([_slab()])
    cpu = neighbor_list(pos, cell, natoms, pbc, CUTOFF, 12)
    gpu = neighbor_list(pos.cuda(), cell.cuda(), natoms.cuda(), pbc.cuda(), CUTOFF, 12)
    assert all(t.is_cuda for t in gpu)
    assert _rows(tuple(t.cpu() for t in gpu)) == _rows(cpu)


# --- close pairs --------------------------------------------------------------------------


def test_close_pairs_across_a_periodic_boundary():
    atoms = _slab()
    lattice = atoms.cell[:]
    # atom 1 just inside the far face along a1, atom 0 just inside the near one: 5e-5 A
    # apart through the boundary, a full cell length apart inside the cell
    atoms.positions[0] = [1e-5, 0.0, 10.0]
    atoms.positions[1] = lattice[0] + [-4e-5, 0.0, 10.0]
    atoms.wrap()
    assert np.linalg.norm(atoms.positions[0] - atoms.positions[1]) > 5.0
    pos, cell, natoms, pbc = _inputs([_slab(), atoms])
    edge_index, offsets, distance = close_pairs(pos, cell, natoms, pbc, radius=1e-4)
    n = len(atoms)
    assert sorted(edge_index[:, 0].tolist()) == [n, n + 1]
    assert abs(offsets[0]).sum() == 1 and offsets.dtype == torch.float32
    assert distance.tolist() == pytest.approx([5e-5], abs=1e-9)
    vec = pos[edge_index[0, 0]] - pos[edge_index[1, 0]] + offsets[0].double() @ cell[1]
    assert float(vec.norm()) == pytest.approx(float(distance[0]), abs=1e-12)
    # not periodic along a1: no overlap
    assert close_pairs(pos, cell, natoms, [False, True, False])[0].shape == (2, 0)


def test_close_pairs_none_in_a_normal_structure_and_own_image_in_a_tiny_cell():
    pos, cell, natoms, pbc = _inputs([_slab(), _molecule(), _small_cell()])
    assert close_pairs(pos, cell, natoms, pbc)[0].shape == (2, 0)
    tiny = Atoms("H", positions=[[0.0, 0.0, 0.0]], cell=np.diag([6e-5, 5.0, 5.0]), pbc=True)
    edge_index, offsets, distance = close_pairs(*_inputs([tiny]))
    assert edge_index.tolist() == [[0], [0]]
    assert abs(offsets).tolist() == [[1.0, 0.0, 0.0]]
    assert distance.tolist() == pytest.approx([6e-5])


@pytest.mark.slow
def test_large_slab_matches_fairchem():
    atoms = fcc111("Pt", size=(12, 12, 6), vacuum=7.0, periodic=True)
    atoms.rattle(0.05, seed=7)
    atoms.wrap()
    for strict in (True, False):
        assert _rows(_ours(atoms, k=20, strict=strict)) == _rows(
            _fairchem(atoms, k=20, strict=strict)
        )
