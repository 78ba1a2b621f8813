"""The EMT stress dataset (S2EFS): fields, labels (ASE's stress sign), determinism, reuse,
and how fairchem reads it (key_mapping, decompose_tensor)."""

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.emt import EMT
from fairchem.core.datasets import LmdbDataset, data_list_collater

from escn_plugin.datasets.emt_stress import SPLITS, generate, main, read_lmdb

COUNTS = dict(num_train=8, num_val=2, num_test=2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("emt_stress") / "data", seed=0, **COUNTS)


def _atoms(data) -> Atoms:
    return Atoms(
        numbers=data.atomic_numbers.numpy(),
        positions=data.pos.double().numpy(),
        cell=data.cell[0].double().numpy(),
        pbc=True,
    )


def test_fields_and_labels_are_emt(root):
    meta = json.loads((root / "metadata.json").read_text())
    kinds = set()
    for split in SPLITS:
        records = read_lmdb(root / split / "data.lmdb")
        assert len(records) == meta[split]["n_frames"] == COUNTS[f"num_{split}"]
        for data in records:
            n = int(data.natoms)
            assert data.pos.shape == (n, 3) and data.pos.dtype == torch.float32
            assert data.cell.shape == (1, 3, 3) and data.force.shape == (n, 3)
            assert data.stress.shape == (1, 3, 3) and data.stress.dtype == torch.float32
            assert (data.fixed == 0).all() and data.pbc.all()
            torch.testing.assert_close(data.stress, data.stress.transpose(1, 2))
            atoms = _atoms(data)
            atoms.calc = EMT()
            assert data.y == pytest.approx(atoms.get_potential_energy(), abs=1e-6)
            stress = torch.as_tensor(atoms.get_stress(voigt=False), dtype=torch.float32)
            torch.testing.assert_close(data.stress[0], stress, rtol=1e-5, atol=1e-7)
            kinds.add("slab" if (data.tags == 1).any() else "bulk")
    assert kinds == {"bulk", "slab"}
    assert meta["train"]["n_slabs"] == 2  # every 4th frame


def test_stress_is_strain_derivative_with_ase_sign(root):
    """sigma_ij = (1/V) dE/d(eps_ij): the label's sign and units, by central differences."""
    data = read_lmdb(root / "train" / "data.lmdb")[0]
    atoms = _atoms(data)
    atoms.calc = EMT()
    cell, h = atoms.cell.array.copy(), 1e-5
    numeric = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            strain = np.zeros((3, 3))
            strain[i, j] = strain[j, i] = h / 2 if i != j else h
            energies = []
            for sign in (1.0, -1.0):
                atoms.set_cell(cell @ (np.eye(3) + sign * strain), scale_atoms=True)
                energies.append(atoms.get_potential_energy())
            atoms.set_cell(cell, scale_atoms=True)
            numeric[i, j] = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
    assert np.abs(numeric).max() > 1e-3  # strained: a non-trivial stress
    np.testing.assert_allclose(data.stress[0].numpy(), numeric, atol=2e-5)


def test_deterministic_prefix_stable_and_reused(root, tmp_path):
    again = generate(tmp_path / "again", seed=0, num_train=2, num_val=1, num_test=1)
    for split in SPLITS:
        first, second = (
            read_lmdb(root / split / "data.lmdb"),
            read_lmdb(again / split / "data.lmdb"),
        )
        for a, b in zip(first, second, strict=False):  # frame i depends on (seed, split, i)
            for key in ("pos", "cell", "force", "stress", "atomic_numbers"):
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
            assert a.y == b.y
    other = read_lmdb(generate(tmp_path / "seed1", seed=1, **COUNTS) / "train" / "data.lmdb")
    assert not torch.equal(other[0].pos, read_lmdb(root / "train" / "data.lmdb")[0].pos)
    assert generate(root, seed=0, **COUNTS, verbose=False) == root  # reused
    cli = ["--out", str(root), "--num-train", "8", "--num-val", "2", "--num-test", "2"]
    assert main(cli) == root
    with pytest.raises(ValueError, match="delete it or choose another"):
        generate(root, seed=2, **COUNTS)
    with pytest.raises(ValueError, match="num_val must be a positive integer"):
        generate(tmp_path / "bad", num_val=0)


def test_fairchem_reads_and_decomposes_stress(root):
    """What an S2EFS config sees: [B, 9] stress, and fairchem's decompose_tensor transform
    gives stress_isotropic [B, 1] = tr/sqrt(3) and stress_anisotropic [B, 5]."""
    dataset = LmdbDataset(
        {
            "src": str(root / "train"),
            "key_mapping": {"y": "energy", "force": "forces"},
            "transforms": {
                "decompose_tensor": {
                    "tensor": "stress",
                    "rank": 2,
                    "decomposition": {
                        "stress_isotropic": {"irrep_dim": 0},
                        "stress_anisotropic": {"irrep_dim": 2},
                    },
                }
            },
        }
    )
    batch = data_list_collater([dataset[i] for i in range(3)])
    stress = batch.stress.reshape(3, 9)
    assert batch.energy.shape == (3,) and batch.forces.shape[1] == 3
    assert batch.stress_isotropic.shape == (3, 1) and batch.stress_anisotropic.shape == (3, 5)
    trace = stress[:, [0, 4, 8]].sum(1, keepdim=True)
    torch.testing.assert_close(batch.stress_isotropic, trace / 3**0.5)
    # the l = 2 part has the traceless symmetric tensor's norm
    traceless = stress - trace / 3 * torch.eye(3).reshape(1, 9)
    torch.testing.assert_close(batch.stress_anisotropic.norm(dim=1), traceless.norm(dim=1))
