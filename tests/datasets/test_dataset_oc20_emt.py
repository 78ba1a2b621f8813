"""The EMT-labelled OC20-format dataset: layout, fields, labels, determinism, reuse."""

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT
from ase.neighborlist import neighbor_list
from fairchem.core.datasets import LmdbDataset, data_list_collater

from escn_plugin.datasets import SIZES, generate
from escn_plugin.datasets.oc20_emt import (
    RELAX_FMAX,
    SPLITS,
    SizeSpec,
    clean_slab,
    clean_slab_energy,
    design_systems,
    gas_references,
    main,
    read_lmdb,
)

TINY = SIZES["tiny"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("oc20_emt") / "tiny", seed=0, size="tiny")


def _references(paths):
    """``{sid: energy reference}``: EMT total energy = label + reference."""
    meta = json.loads(paths["metadata"].read_text())
    return {s["sid"]: s["energy_reference"] for s in meta["systems"]}


def _s2ef_records(paths, split):
    return read_lmdb(paths["s2ef"][split] / "data.lmdb")


def _atoms(data, positions=None):
    positions = data.pos if positions is None else positions
    return Atoms(
        numbers=data.atomic_numbers.numpy(),
        positions=positions.double().numpy(),
        cell=data.cell[0].double().numpy(),
        pbc=True,
    )


def test_layout_and_lengths(tiny):
    assert not tiny["reused"]
    meta = json.loads(tiny["metadata"].read_text())
    assert (meta["seed"], meta["size"]) == (0, "tiny")
    for split, n_systems in TINY.counts().items():
        s2ef = LmdbDataset({"src": str(tiny["s2ef"][split])})
        is2re = LmdbDataset({"src": str(tiny["is2re"][split])})
        assert len(s2ef) == n_systems * TINY.frames_per_system == meta["s2ef"][split]["n_frames"]
        assert len(is2re) == n_systems == meta["is2re"][split]["n_systems"]
        # metadata.npz beside each LMDB gives fairchem's load balancer natoms per record
        assert s2ef.get_metadata("natoms", 0) == s2ef[0].natoms
    found = {
        symbol
        for split in SPLITS
        for d in read_lmdb(tiny["is2re"][split])
        for symbol in _atoms(d).get_chemical_symbols()
    }
    assert meta["elements"] == sorted(found)


def test_s2ef_record_fields(tiny):
    seen_sids = {}
    for split in SPLITS:
        records = _s2ef_records(tiny, split)
        assert len({(d.sid, d.fid) for d in records}) == len(records)
        for d in records:
            n = d.natoms
            assert isinstance(n, int) and 15 <= n <= 40
            assert d.pos.shape == (n, 3) and d.pos.dtype == torch.float32
            assert d.cell.shape == (1, 3, 3) and d.cell.dtype == torch.float32
            assert d.atomic_numbers.shape == (n,)
            assert d.force.shape == (n, 3) and d.force.dtype == torch.float32
            assert isinstance(d.y, float) and isinstance(d.sid, int) and isinstance(d.fid, int)
            assert set(d.tags.tolist()) == {0, 1, 2}
            torch.testing.assert_close(d.fixed.long(), (d.tags == 0).long(), rtol=0, atol=0)
            assert d.pbc.tolist() == [True, True, True]
            assert "energy" not in d and "forces" not in d  # key_mapping would refuse both
            assert seen_sids.setdefault(d.sid, split) == split  # split by system, not frame


def test_s2ef_labels_are_emt_of_the_stored_structure(tiny):
    reference = _references(tiny)
    for split in SPLITS:
        for d in _s2ef_records(tiny, split):
            atoms = _atoms(d)
            atoms.calc = EMT()
            assert atoms.get_potential_energy() == pytest.approx(d.y + reference[d.sid], abs=1e-8)
            forces = torch.from_numpy(atoms.get_forces()).float()
            torch.testing.assert_close(forces, d.force, rtol=1e-5, atol=1e-5)
            assert d.force.abs().max() > 1e-3  # labels are not trivially zero


def test_is2re_records_relaxed_under_emt(tiny):
    reference = _references(tiny)
    for split in SPLITS:
        for d in read_lmdb(tiny["is2re"][split]):
            assert {"y_init", "y_relaxed", "pos_relaxed", "sid"} <= set(d.keys())
            assert d.pos_relaxed.shape == d.pos.shape and d.pos_relaxed.dtype == torch.float32
            fixed = d.fixed.bool()
            torch.testing.assert_close(d.pos_relaxed[fixed], d.pos[fixed], rtol=0, atol=1e-6)
            assert not torch.allclose(d.pos_relaxed[~fixed], d.pos[~fixed], atol=1e-3)

            initial = _atoms(d)
            initial.calc = EMT()
            e_ref = reference[d.sid]
            assert initial.get_potential_energy() == pytest.approx(d.y_init + e_ref, abs=1e-8)
            relaxed = _atoms(d, d.pos_relaxed)
            relaxed.calc = EMT()
            assert relaxed.get_potential_energy() == pytest.approx(d.y_relaxed + e_ref, abs=1e-8)
            assert d.y_relaxed < d.y_init
            free_fmax = np.linalg.norm(relaxed.get_forces()[~fixed.numpy()], axis=1).max()
            assert free_fmax < RELAX_FMAX + 1e-3


def test_energies_are_adsorption_energies(tiny):
    """reference = relaxed clean slab (same metal, facet, cell) + gas-phase references."""
    mu = gas_references()
    # H2, O2, N2 at their EMT minima: 2 mu_X is the lowest energy over bond lengths
    for element in ("H", "O", "N"):
        for bond in (0.9, 1.0, 1.1, 1.2, 1.3):
            dimer = Atoms(element * 2, positions=[(0, 0, 0), (0, 0, bond)])
            dimer.calc = EMT()
            assert dimer.get_potential_energy() >= 2 * mu[element] - 1e-6
    meta = json.loads(tiny["metadata"].read_text())
    assert meta["gas_references"] == pytest.approx(mu)
    for system in meta["systems"]:
        slab = clean_slab(system["metal"], system["facet"], tuple(system["surface_cell"]))
        slab.calc = EMT()
        e_slab = clean_slab_energy(system["metal"], system["facet"], tuple(system["surface_cell"]))
        assert e_slab <= slab.get_potential_energy() + 1e-9  # the top layer relaxed
        gas = sum(mu[s] for s in Atoms(system["adsorbate"]).get_chemical_symbols())
        assert system["energy_reference"] == pytest.approx(e_slab + gas, abs=1e-10)


def test_designs_cover_every_metal_adsorbate_facet():
    """84 consecutive sids hold each (metal, adsorbate, facet) once (many systems, few
    frames each is what lets a model learn across compositions)."""
    SIZES["cover"] = SizeSpec(n_train=84, n_val=0, n_test=0, frames_per_system=1)
    try:
        systems = design_systems(3, "cover")
    finally:
        del SIZES["cover"]
    combos = {(s.metal, s.adsorbate, s.facet) for s in systems}
    assert len(combos) == 84


def test_fairchem_reads_with_key_mapping(tiny):
    dataset = LmdbDataset(
        {"src": str(tiny["s2ef"]["train"]), "key_mapping": {"y": "energy", "force": "forces"}}
    )
    items = [dataset[i] for i in range(3)]
    batch = data_list_collater(items, otf_graph=True)
    assert batch.energy.shape == (3,)
    assert batch.forces.shape == (sum(d.natoms for d in items), 3)
    assert batch.sid.shape == batch.fid.shape == (3,)

    relax = LmdbDataset(
        {"src": str(tiny["is2re"]["val"]), "key_mapping": {"y_relaxed": "energy_relaxed"}}
    )
    assert isinstance(relax[0].energy_relaxed, float) and relax[0].pos_relaxed is not None


def test_structures_are_generic(tiny):
    # no edge within eSCN's 12 A cutoff lies along +-y (the reference's singular direction)
    for split in SPLITS:
        for d in read_lmdb(tiny["is2re"][split]):
            vectors = neighbor_list("D", _atoms(d), 12.0)
            cos_y = np.abs(vectors[:, 1]) / np.linalg.norm(vectors, axis=1)
            assert np.degrees(np.arccos(min(1.0, cos_y.max()))) > 0.05
            assert np.abs(d.cell[0, :2, :2].numpy()).min() > 1e-2  # cell turned about z


def _assert_same_records(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert sorted(a.keys()) == sorted(b.keys())
        for key in a.keys():
            if torch.is_tensor(a[key]):
                assert a[key].dtype == b[key].dtype
                assert torch.equal(a[key], b[key]), key
            else:
                assert a[key] == b[key], key


def test_deterministic(tiny, tmp_path):
    """The same records again, also when two worker processes label the systems."""
    again = generate(tmp_path / "again", seed=0, size="tiny", verbose=False, workers=2)
    assert again["metadata"].read_text() == tiny["metadata"].read_text()
    for split in SPLITS:
        _assert_same_records(_s2ef_records(tiny, split), _s2ef_records(again, split))
        _assert_same_records(read_lmdb(tiny["is2re"][split]), read_lmdb(again["is2re"][split]))


def test_rerun_reuses(tiny, capsys):
    lmdb_file = tiny["s2ef"]["train"] / "data.lmdb"
    stamp = lmdb_file.stat().st_mtime_ns
    paths = generate(tiny["root"], seed=0, size="tiny")
    assert paths["reused"] and "reusing" in capsys.readouterr().out
    main(["--out", str(tiny["root"]), "--size", "tiny"])
    assert "reusing" in capsys.readouterr().out
    assert lmdb_file.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="seed=0"):
        generate(tiny["root"], seed=1, size="tiny")
    with pytest.raises(ValueError, match="unknown size"):
        generate(tiny["root"], seed=0, size="huge")
