"""Inputs that used to crash or give silently wrong answers (issue 9): batches without
edges, non-periodic systems with the on-the-fly graph, float64 end to end, far-out
coordinates, atomic number 0, degenerate cells, and config values of the wrong type."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.build import molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from fairchem.core.preprocessing import AtomsToGraphs
from torch_geometric.data import Batch

import escn_plugin
from escn_plugin.model.inputs import wrap_positions
from tests.helpers.fairchem_run import SMALL_MODEL
from tests.helpers.structures import slabs

TINY = dict(SMALL_MODEL, cutoff=5.0)  # the CLI tests' tiny model, shorter cutoff


def tiny(dtype=torch.float32, **kwargs) -> escn_plugin.eSCN:
    torch.manual_seed(0)
    return escn_plugin.eSCN(**{**TINY, **kwargs}).to(dtype).eval()


def batch_of(atoms_list: list[Atoms], dtype=torch.float32) -> Batch:
    """As OCPCalculator builds it (AtomsToGraphs, no edges, ``pbc`` stored), with
    positions and cell taken from the Atoms in ``dtype``."""
    a2g = AtomsToGraphs(r_edges=False, r_pbc=True)
    data = []
    for atoms in atoms_list:
        d = a2g.convert(atoms)
        d.pos = torch.tensor(atoms.get_positions(), dtype=dtype)
        d.cell = torch.tensor(atoms.get_cell()[:], dtype=dtype).view(1, 3, 3)
        data.append(d)
    return Batch.from_data_list(data)


def lone(symbol="Cu", periodic=True) -> Atoms:
    cell = [20.0, 20.0, 20.0] if periodic else None
    return Atoms(symbol, positions=[[5.0, 6.0, 7.0]], cell=cell, pbc=periodic)


# --------------------------------------------------------------------------------------
# batches without edges
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("periodic", [True, False])
def test_batch_without_edges_gives_isolated_atom_energies(periodic):
    m = tiny(use_pbc=periodic, readout_grid=[8, 9])
    alone = m(batch_of([lone("Cu", periodic)]))  # crashed: reshape of 0 elements
    two = m(batch_of([lone("Cu", periodic), lone("O", periodic)]))
    # the same atom in a batch that has edges elsewhere: messages to it are zero too
    mixed = m(batch_of([lone("Cu", periodic), slabs()[0]]))
    assert m.generate_graph(batch_of([lone("Cu", periodic)])).edge_index.shape == (2, 0)
    torch.testing.assert_close(alone["energy"][0], mixed["energy"][0], rtol=1e-6, atol=0)
    torch.testing.assert_close(two["energy"][0], alone["energy"][0], rtol=1e-6, atol=0)
    assert two["energy"][1] != two["energy"][0]  # O's isolated energy is its own
    assert alone["forces"].abs().max() < 1e-7 and two["forces"].abs().max() < 1e-7


def test_hydra_batch_without_edges():
    from fairchem.core.models.base import HydraModel

    torch.manual_seed(0)
    hydra = HydraModel(
        backbone={"model": "escn_plugin.eSCNBackbone", **TINY},
        heads={
            "energy": {"module": "escn_plugin.eSCNEnergyHead"},
            "forces": {"module": "escn_plugin.eSCNForceHead"},
        },
        pass_through_head_outputs=True,
    ).eval()
    out = hydra(batch_of([lone("Cu"), lone("Ni")]))
    assert out["energy"].shape == (2,) and torch.isfinite(out["energy"]).all()
    assert out["forces"].shape == (2, 3) and out["forces"].abs().max() < 1e-5


# --------------------------------------------------------------------------------------
# non-periodic systems, on-the-fly graph
# --------------------------------------------------------------------------------------


def brute_force_edges(pos: np.ndarray, cutoff: float, max_neighbors: int) -> set:
    """(source, target) pairs: each target's max_neighbors nearest within cutoff."""
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    edges = set()
    for i in range(len(pos)):
        others = [j for j in np.argsort(dist[i], kind="stable") if j != i and dist[i, j] <= cutoff]
        edges.update((int(j), i) for j in others[:max_neighbors])
    return edges


def test_non_periodic_graph_is_the_nearest_neighbours():
    mol = molecule("CH3CH2OH")  # no cell, pbc False: what OCPCalculator gives
    for max_neighbors in (12, 4):
        m = tiny(use_pbc=False, max_neighbors=max_neighbors, cutoff=2.5)
        graph = m.generate_graph(batch_of([mol, mol], torch.float64))
        edges = {tuple(e) for e in graph.edge_index.T.tolist()}
        expected = brute_force_edges(mol.get_positions(), 2.5, max_neighbors)
        n = len(mol)
        assert edges == expected | {(j + n, i + n) for j, i in expected}
        assert graph.neighbors.tolist() == [len(expected)] * 2
        source, target = graph.edge_index
        pos = torch.tensor(np.concatenate([mol.get_positions()] * 2))
        torch.testing.assert_close(graph.edge_distance_vec, pos[source] - pos[target])


def test_molecule_in_a_big_box_equals_molecule_without_pbc():
    mol = molecule("CH3CH2OH")
    boxed = mol.copy()
    boxed.set_cell([30.0, 30.0, 30.0])
    boxed.center()
    boxed.pbc = True
    out = tiny(use_pbc=False)(batch_of([mol], torch.float64))  # raised ImportError
    ref = tiny(use_pbc=True)(batch_of([boxed], torch.float64))
    torch.testing.assert_close(out["energy"], ref["energy"], rtol=1e-5, atol=0)
    torch.testing.assert_close(out["forces"], ref["forces"], rtol=1e-4, atol=1e-7)


# --------------------------------------------------------------------------------------
# float64 and far-out coordinates
# --------------------------------------------------------------------------------------


def test_float64_graph_is_exact_and_matches_float32():
    atoms = slabs()
    m64 = tiny(torch.float64)
    batch = batch_of(atoms, torch.float64)
    graph = m64.generate_graph(batch)  # raised: dtype mismatch in radius_graph_pbc
    assert graph.edge_distance_vec.dtype == torch.float64
    # every edge vector is a periodic-image vector of ASE's neighbour list, exactly
    start = 0
    for a in atoms:
        i, j, vec = ase_neighbor_list("ijD", a, TINY["cutoff"])
        ase_vecs = {(int(s), int(t), *np.round(v, 9)) for s, t, v in zip(j, i, vec)}
        n = len(a)
        mask = (graph.edge_index[1] >= start) & (graph.edge_index[1] < start + n)
        for (s, t), v in zip(graph.edge_index[:, mask].T.tolist(), graph.edge_distance_vec[mask]):
            assert (s - start, t - start, *np.round(v.numpy(), 9)) in ase_vecs
        start += n
    out64 = m64(batch)
    out32 = tiny(torch.float32)(batch_of(atoms, torch.float32))
    assert out64["energy"].dtype == torch.float64
    torch.testing.assert_close(out64["energy"].float(), out32["energy"], rtol=1e-4, atol=1e-6)


def _on_grid(atoms: Atoms) -> Atoms:
    """Positions and cell rounded to multiples of 2^-20 A, so that moving an atom by up to
    ~1e6 A of whole lattice vectors is exact in float64 (the moved copy is then exactly
    the same structure, and any difference in outputs is the model's)."""
    atoms = atoms.copy()
    atoms.set_cell(np.round(atoms.get_cell()[:] * 2**20) / 2**20, scale_atoms=False)
    atoms.set_positions(np.round(atoms.get_positions() * 2**20) / 2**20, apply_constraint=False)
    return atoms


def _moved_by_lattice_vectors(atoms: Atoms, seed: int, scale: int) -> Atoms:
    """Every atom moved by a random lattice vector n @ cell, |n| up to ``scale``, along
    the periodic axes."""
    moved = atoms.copy()
    rng = np.random.default_rng(seed)
    n = rng.integers(-scale, scale + 1, size=(len(atoms), 3)) * atoms.pbc
    moved.set_positions(atoms.positions + n @ atoms.cell[:], apply_constraint=False)
    return moved


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_far_out_periodic_atoms_are_wrapped(dtype):
    atoms = [_on_grid(a) for a in slabs()]
    far = [_moved_by_lattice_vectors(a, seed, 150_000) for seed, a in enumerate(atoms)]
    assert np.abs(far[0].positions).max() > 3e5
    # all neighbours within the cutoff: with max_neighbors truncation, ties between
    # equidistant periodic images are broken by rounding (any translation can flip them)
    m = tiny(dtype, max_neighbors=200)
    # positions in float64 (a float32 array cannot hold them to 1e-3 A), model in dtype
    out = m(batch_of(atoms, torch.float64))
    out_far = m(batch_of(far, torch.float64))
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(out_far["energy"], out["energy"], rtol=tol, atol=0)
    scale = float(out["forces"].abs().max())
    torch.testing.assert_close(out_far["forces"], out["forces"], rtol=0, atol=tol * scale)


def test_far_out_float32_positions_are_refused():
    far = _moved_by_lattice_vectors(slabs()[0], 0, 150_000)
    with pytest.raises(ValueError, match="atom 0 .*beyond 10000 A .*atoms.wrap()"):
        tiny()(batch_of([far], torch.float32))


def test_wrap_keeps_non_periodic_axes_and_gradients():
    cell = torch.tensor([[[3.0, 0.0, 0.0], [1.0, 4.0, 0.0], [0.0, 0.0, 5.0]]], dtype=torch.float64)
    pos = torch.tensor([[7.5, -9.0, 12.0], [0.5, 0.5, -6.0]], dtype=torch.float64)
    pos.requires_grad_(True)
    periodic = torch.tensor([[True, True, False]])
    wrapped = wrap_positions(pos, cell, torch.zeros(2, dtype=torch.long), periodic)
    frac = torch.linalg.solve(cell[0].T, wrapped.detach().T).T
    assert ((frac[:, :2] >= 0) & (frac[:, :2] < 1)).all()
    expected_z = torch.tensor([12.0 / 5.0, -6.0 / 5.0], dtype=torch.float64)
    torch.testing.assert_close(frac[:, 2], expected_z)
    (grad,) = torch.autograd.grad(wrapped.sum(), pos)
    torch.testing.assert_close(grad, torch.ones_like(pos))  # the shift is constant


# --------------------------------------------------------------------------------------
# atomic number 0, degenerate cells
# --------------------------------------------------------------------------------------


def test_atomic_number_zero_names_the_atom():
    batch = batch_of([slabs()[0], slabs()[1]])
    n0 = int(batch.natoms[0])
    batch.atomic_numbers[n0 + 2] = 0
    with pytest.raises(ValueError, match=f"atomic number 0 of atom {n0 + 2} \\(system 1\\)"):
        tiny()(batch)


def test_degenerate_cell_names_the_system():
    batch = batch_of(slabs())  # (AtomsToGraphs itself cannot wrap into a flat cell)
    batch.cell[1, 2] = batch.cell[1, 0] + batch.cell[1, 1]  # zero volume
    with pytest.raises(ValueError, match="cell of system 1 is degenerate"):
        tiny()(batch)
    batch = batch_of(slabs())
    batch.cell[0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="cell of system 0 is not finite"):
        tiny()(batch)
    # a molecule without a cell, marked non-periodic, is fine with a use_pbc model
    out = tiny(use_pbc=True)(batch_of([molecule("H2O")]))
    assert torch.isfinite(out["energy"]).all()


# --------------------------------------------------------------------------------------
# config values
# --------------------------------------------------------------------------------------


def test_int_lmax_list_is_a_one_element_list_also_from_yaml():
    config = yaml.safe_load("lmax_list: 2\nmmax_list: 1\n")
    from fairchem.core.common.registry import registry

    a = registry.get_model_class("escn_plugin.eSCN")(**{**TINY, **config})
    assert a.lmax_list == [2] and a.mmax_list == [1]
    torch.manual_seed(0)
    a = escn_plugin.eSCN(**{**TINY, **config})
    b = tiny()
    a.eval()
    batch = batch_of(slabs()[:1])
    torch.testing.assert_close(a(batch)["energy"], b(batch)["energy"], rtol=0, atol=0)


@pytest.mark.parametrize(
    "key,value",
    [
        ("num_layers", "3"),
        ("sphere_channels", 8.5),
        ("max_neighbors", True),
        ("cutoff", "6"),
        ("cutoff", float("nan")),
        ("distance_resolution", 0),
        ("use_pbc", "False"),
        ("otf_graph", "yes"),
        ("lmax_list", [2.0]),
        ("lmax_list", "6"),
        ("mmax_list", [-1]),
        ("activation_checkpoint", "true"),
    ],
)
def test_bad_config_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"^{key} must be .*got {re.escape(repr(value))}$"):
        escn_plugin.eSCN(**{**TINY, key: value})


# --------------------------------------------------------------------------------------
# through OCPCalculator (the on-the-fly graph, float32, what ASE users run)
# --------------------------------------------------------------------------------------


def _fairchem_config(model: dict) -> dict:
    """The smallest complete config OCPCalculator rebuilds a trainer and model from."""
    return {
        "trainer": "ocp",
        "model": model,
        "outputs": {
            "energy": {"level": "system"},
            "forces": {"level": "atom", "train_on_free_atoms": True, "eval_on_free_atoms": True},
        },
        "loss_functions": [
            {"energy": {"fn": "mae", "coefficient": 1}},
            {"forces": {"fn": "l2mae", "coefficient": 10}},
        ],
        "evaluation_metrics": {"metrics": {"energy": ["mae"]}, "primary_metric": "energy_mae"},
        "optim": {"batch_size": 1, "eval_batch_size": 1, "max_epochs": 1, "lr_initial": 1e-3},
        "dataset": {"src": "unused"},
        "task": {},
    }


@pytest.fixture(scope="module")
def molecule_checkpoint(tmp_path_factory):
    """An (untrained) eSCN with ``use_pbc: False`` saved as a fairchem checkpoint; the
    model config spells ``lmax_list`` and ``mmax_list`` as ints, as a YAML user might."""
    model = tiny(use_pbc=False)
    config = _fairchem_config(
        {"name": "escn_plugin.eSCN", **TINY, "use_pbc": False, "lmax_list": 2, "mmax_list": 1}
    )
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    torch.save({"config": config, "state_dict": model.state_dict(), "normalizers": {}}, path)
    return path, model


def test_ocp_calculator_on_a_molecule_and_an_isolated_atom(molecule_checkpoint):
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    path, model = molecule_checkpoint
    calc = OCPCalculator(checkpoint_path=str(path), cpu=True, seed=0)
    mol = molecule("CH3CH2OH")  # no cell, not periodic
    mol.calc = calc
    energy, forces = mol.get_potential_energy(), mol.get_forces()  # raised ImportError
    direct = model(batch_of([mol]))
    assert energy == pytest.approx(float(direct["energy"][0]), rel=1e-5)
    np.testing.assert_allclose(forces, direct["forces"].detach().numpy(), rtol=1e-4, atol=1e-7)

    atom = Atoms("O", positions=[[0.0, 0.0, 0.0]])
    atom.calc = calc
    energy = atom.get_potential_energy()  # raised: reshape of 0 elements
    assert energy == pytest.approx(float(model(batch_of([atom]))["energy"][0]), rel=1e-5)
    assert np.abs(atom.get_forces()).max() < 1e-5


def test_int_lmax_list_through_fairchem_yaml_config(molecule_checkpoint, tmp_path):
    """fairchem's YAML loader (the CLI's ``load_config``) and trainer model build."""
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    path, model = molecule_checkpoint
    config = torch.load(path, weights_only=False)["config"]
    config["dataset"] = {"train": {"src": "unused"}}  # as a training config has it
    text = yaml.safe_dump(config)
    assert "lmax_list: 2\n" in text
    (tmp_path / "config.yml").write_text(text)
    yml = str(tmp_path / "config.yml")
    calc = OCPCalculator(config_yml=yml, checkpoint_path=str(path), cpu=True)
    assert calc.trainer._unwrapped_model.lmax_list == [2]
    mol = molecule("H2O")
    mol.calc = calc
    assert mol.get_potential_energy() == pytest.approx(
        float(model(batch_of([mol]))["energy"][0]), rel=1e-5
    )
