"""Reading the user's structures: formats, label checks with errors naming the file and the
structure, the split by structure."""

from __future__ import annotations

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from escn_plugin.finetune import data
from tests.finetune.conftest import emt_structures


def test_reads_extxyz_db_and_trajectory_alike(tmp_path):
    frames = emt_structures(5)
    ase.io.write(tmp_path / "a.extxyz", frames)
    ase.io.write(tmp_path / "a.traj", frames)
    with ase.db.connect(tmp_path / "a.db") as db:
        for atoms in frames:
            db.write(atoms)
    read = {ext: data.read_structures(tmp_path / f"a.{ext}") for ext in ("extxyz", "traj", "db")}
    for structures in read.values():
        assert len(structures) == 5 and data.has_stress(structures)
        for s, ref in zip(structures, frames):
            np.testing.assert_allclose(s.atoms.calc.results["forces"], ref.get_forces(), atol=1e-7)
            assert s.atoms.calc.results["energy"] == pytest.approx(ref.get_potential_energy())
            np.testing.assert_allclose(s.stress, ref.get_stress(voigt=False), atol=1e-9)
    assert read["db"][3].where.endswith("a.db: structure 3")


def test_missing_forces_names_file_and_structure(tmp_path):
    frames = emt_structures(4)
    bad = frames[2].copy()
    bad.calc = SinglePointCalculator(bad, energy=frames[2].get_potential_energy())
    frames[2] = bad
    path = tmp_path / "no_forces.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(ValueError, match=r"no_forces\.extxyz: structure 2 has no forces"):
        data.read_structures(path)


def test_stress_without_cell_names_file_and_structure(tmp_path):
    frames = emt_structures(3, slabs=False)
    molecule = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.3]])
    molecule.calc = SinglePointCalculator(
        molecule, energy=0.5, forces=np.zeros((2, 3)), stress=np.zeros(6)
    )
    path = tmp_path / "stress_no_cell.extxyz"
    ase.io.write(path, [*frames, molecule])
    with pytest.raises(
        ValueError,
        match=r"stress_no_cell\.extxyz: structure 3 has a stress "
        r"label but no periodic cell",
    ):
        data.read_structures(path)


def test_unreadable_and_empty_inputs(tmp_path):
    with pytest.raises(ValueError, match="nope.extxyz: no such file"):
        data.read_structures(tmp_path / "nope.extxyz")
    (tmp_path / "junk.extxyz").write_text("not a structure\n")
    with pytest.raises(ValueError, match="junk.extxyz: ASE cannot read it"):
        data.read_structures(tmp_path / "junk.extxyz")


def test_split_is_by_structure_seeded_and_disjoint(extxyz):
    structures = data.read_structures(extxyz)
    a, b = data.split_structures(structures, 3), data.split_structures(structures, 3)
    c = data.split_structures(structures, 4)
    index = {name: [s.index for s in part] for name, part in a.items()}
    assert index == {name: [s.index for s in part] for name, part in b.items()}
    assert index != {name: [s.index for s in part] for name, part in c.items()}
    every = sorted(i for part in index.values() for i in part)
    assert every == list(range(12)) and len(index["val"]) == len(index["test"]) == 1
    with pytest.raises(ValueError, match="too few to split"):
        data.split_structures(structures[:2], 0)


def test_lmdb_records_hold_the_labels(extxyz, tmp_path):
    from fairchem.core.datasets import LmdbDataset

    structures = data.read_structures(extxyz)[:4]
    folder = data.write_lmdb_split(tmp_path / "train", structures, 10, stress=True)
    dataset = LmdbDataset({"src": str(folder)})
    assert len(dataset) == 4
    record = dataset[1]
    assert record.sid == 11 and record.stress.shape == (1, 3, 3) and (record.tags == 1).all()
    np.testing.assert_allclose(
        record.forces.numpy(), structures[1].atoms.calc.results["forces"], rtol=1e-6, atol=1e-6
    )
    assert float(record.energy) == pytest.approx(structures[1].atoms.calc.results["energy"])
    assert np.load(folder / "metadata.npz")["natoms"].tolist() == [4, 4, 4, 8]
