"""The user's structures: read them with ASE, check their labels, split them, write them.

Any file ``ase.io.read(path, index=":")`` reads works (extended XYZ, ASE databases and
trajectories, VASP ``OUTCAR`` / ``vasprun.xml``, ...). Every structure needs an energy
and forces (ASE's calculator results: in extended XYZ an ``energy=`` key in the comment
line and a ``forces`` column); a stress is optional but needs a 3D-periodic cell. Errors
name the file and the structure's index in it (0-based, as ``ase.io.read`` counts).

The splits are written once as fairchem LMDBs (``format: lmdb``): one pass over 200
structures costs 0.13 CPU s through fairchem's loader, against 0.5-0.65 s with its
``ase_db`` dataset (an SQLite read and AtomsToGraphs per structure) and 32 s with
``ase_read_multi`` (which re-reads the whole file for every structure it returns);
``benchmarks/finetune_data_formats.py``::

    DIR/data/{train,val,test}/data.lmdb     records as fairchem's AtomsToGraphs makes them:
                                            pos, cell, atomic_numbers, natoms, tags, fixed,
                                            pbc, energy, forces (, stress [1, 3, 3]), sid, fid
    DIR/data/{train,val,test}/metadata.npz  natoms per record (fairchem's load balancing)
    DIR/data/index.json                     split, sid -> source file and index

Tags are all 1 when a structure has none (what fairchem's ASE datasets do).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

__all__ = [
    "SPLITS",
    "Structure",
    "data_summary",
    "has_stress",
    "read_structures",
    "split_structures",
    "write_lmdb_split",
    "write_splits",
]

SPLITS = ("train", "val", "test")
#: LMDB map size: an upper bound; the file grows only as written (sparse on Linux)
_MAP_SIZE = 1 << 34


@dataclass
class Structure:
    """One labelled structure: ``atoms`` carries its energy, forces (and stress) as a
    ``SinglePointCalculator``; ``source`` and ``index`` say where it was read from."""

    atoms: Atoms
    source: str
    index: int

    @property
    def where(self) -> str:
        return f"{self.source}: structure {self.index}"

    @property
    def stress(self) -> np.ndarray | None:
        return self.atoms.calc.results.get("stress")


def _label_hint(atoms: Atoms) -> str:
    return (
        f"(found info keys {sorted(atoms.info)}, per-atom arrays {sorted(atoms.arrays)}, "
        f"calculator results {sorted(getattr(atoms.calc, 'results', {}) or {})}; extended "
        "XYZ needs energy=... in the comment line and a forces column)"
    )


def _labelled(atoms: Atoms, source: str, index: int) -> Structure:
    """``atoms`` with its labels checked and carried by a fresh SinglePointCalculator."""
    where = f"{source}: structure {index}"
    results = dict(getattr(atoms.calc, "results", None) or {})
    energy = results.get("energy", results.get("free_energy"))
    if energy is None:
        raise ValueError(
            f"{where} has no energy; fine-tuning needs an energy and forces for every "
            f"structure {_label_hint(atoms)}"
        )
    forces = results.get("forces")
    if forces is None:
        raise ValueError(
            f"{where} has no forces; fine-tuning needs an energy and forces for every "
            f"structure {_label_hint(atoms)}"
        )
    forces = np.asarray(forces, dtype=np.float64)
    if forces.shape != (len(atoms), 3):
        raise ValueError(f"{where}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)")
    labels = {"energy": float(np.asarray(energy).reshape(())), "forces": forces}
    stress = results.get("stress")
    if stress is not None:
        volume = abs(float(np.linalg.det(atoms.cell[:]))) if atoms.cell.rank == 3 else 0.0
        if not atoms.pbc.all() or volume < 1e-6:
            raise ValueError(
                f"{where} has a stress label but no periodic cell (pbc {atoms.pbc.tolist()}, "
                f"cell volume {volume:.3g} A^3): a stress needs a 3D-periodic cell; give the "
                "structure its cell and pbc=True, or remove its stress"
            )
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (6,):  # Voigt: xx yy zz yz xz xy
            xx, yy, zz, yz, xz, xy = stress
            stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
        if stress.shape != (3, 3):
            raise ValueError(f"{where}: stress has shape {stress.shape}, expected (6,) or (3, 3)")
        labels["stress"] = stress
    for name, value in labels.items():
        if not np.isfinite(value).all():
            raise ValueError(f"{where}: its {name} is not finite")
    out = Atoms(
        numbers=atoms.numbers,
        positions=atoms.positions,
        cell=atoms.cell,
        pbc=atoms.pbc,
        tags=atoms.get_tags(),
        constraint=[c.copy() for c in atoms.constraints],
    )
    out.calc = SinglePointCalculator(out, **labels)
    return Structure(out, source, index)


def read_structures(path: str | os.PathLike) -> list[Structure]:
    """Every structure in ``path`` (any format ``ase.io.read`` reads), labels checked."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        frames = ase.io.read(path, index=":")
    except Exception as err:  # ASE raises many kinds for unreadable files
        raise ValueError(
            f"{path}: ASE cannot read it ({type(err).__name__}: {err}); give a file in a "
            "format ase.io.read knows (extxyz, ASE db or trajectory, OUTCAR, vasprun.xml)"
        ) from err
    if isinstance(frames, Atoms):
        frames = [frames]
    if not frames:
        raise ValueError(f"{path}: holds no structure")
    return [_labelled(atoms, str(path), i) for i, atoms in enumerate(frames)]


def has_stress(structures: Sequence[Structure]) -> bool:
    """True if every structure has a stress label (all of them are then 3D-periodic)."""
    return all(s.stress is not None for s in structures)


def split_structures(
    structures: Sequence[Structure],
    seed: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> dict[str, list[Structure]]:
    """Shuffle by structure with ``seed`` and cut into train / val / test (at least one
    structure in each of val and test)."""
    n = len(structures)
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError("val and test fractions must be in (0, 1) and sum to less than 1")
    n_val = max(1, round(val_fraction * n))
    n_test = max(1, round(test_fraction * n))
    if n - n_val - n_test < 1:
        raise ValueError(
            f"{n} structures are too few to split into train, val and test; give at least 3 "
            "(a fine-tune wants tens), or separate --train/--val/--test files"
        )
    order = np.random.default_rng(seed).permutation(n)
    test = [structures[i] for i in order[:n_test]]
    val = [structures[i] for i in order[n_test : n_test + n_val]]
    train = [structures[i] for i in order[n_test + n_val :]]
    return {"train": train, "val": val, "test": test}


def _record(structure: Structure, sid: int, a2g):
    import torch

    data = a2g.convert(structure.atoms)
    if not (data.tags != 0).any():
        data.tags = torch.ones_like(data.tags)
    data.sid = sid
    data.fid = 0
    if structure.stress is None and hasattr(data, "stress"):
        del data.stress
    elif hasattr(data, "stress"):
        data.stress = data.stress.reshape(1, 3, 3)  # system-level: collates to [B, 3, 3]
    return data


def write_lmdb_split(
    folder: str | os.PathLike, structures: Sequence[Structure], first_sid: int, stress: bool
) -> Path:
    """Write ``structures`` as ``FOLDER/data.lmdb`` (+ ``metadata.npz``); sids from
    ``first_sid``. Returns the folder (fairchem's ``src``)."""
    import lmdb
    from fairchem.core.preprocessing import AtomsToGraphs

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("data.lmdb*"):
        old.unlink()
    a2g = AtomsToGraphs(
        r_energy=True, r_forces=True, r_stress=stress, r_fixed=True, r_pbc=True, r_edges=False
    )
    env = lmdb.open(str(folder / "data.lmdb"), map_size=_MAP_SIZE, subdir=False, meminit=False)
    with env.begin(write=True) as txn:
        for i, structure in enumerate(structures):
            record = _record(structure, first_sid + i, a2g)
            txn.put(str(i).encode("ascii"), pickle.dumps(record, protocol=-1))
        txn.put(b"length", pickle.dumps(len(structures), protocol=-1))
    env.sync()
    env.close()
    natoms = np.array([len(s.atoms) for s in structures], dtype=np.int64)
    np.savez(folder / "metadata.npz", natoms=natoms)
    return folder


def write_splits(
    out_dir: str | os.PathLike, splits: dict[str, Sequence[Structure]], stress: bool
) -> dict[str, Path]:
    """Write every split (sids run over all splits) and ``index.json``; returns
    ``{split: folder}``."""
    out_dir = Path(out_dir)
    folders, index, sid = {}, {}, 0
    for name in SPLITS:
        folders[name] = write_lmdb_split(out_dir / name, splits[name], sid, stress)
        index[name] = [
            {"sid": sid + i, "source": s.source, "index": s.index}
            for i, s in enumerate(splits[name])
        ]
        sid += len(splits[name])
    (out_dir / "index.json").write_text(json.dumps(index, indent=1))
    return folders


def data_summary(splits: dict[str, Sequence[Structure]]) -> dict:
    """Counts, elements, atoms per structure and which labels the splits have."""
    everything = [s for name in SPLITS for s in splits[name]]
    natoms = np.array([len(s.atoms) for s in everything])
    elements = sorted({str(sym) for s in everything for sym in s.atoms.get_chemical_symbols()})
    return {
        "counts": {name: len(splits[name]) for name in SPLITS},
        "elements": elements,
        "natoms": {
            "min": int(natoms.min()),
            "max": int(natoms.max()),
            "mean": float(natoms.mean()),
        },
        "stress": has_stress(everything),
        "periodic": bool(all(s.atoms.pbc.all() for s in everything)),
        "any_periodic": bool(any(s.atoms.pbc.any() for s in everything)),
        "sources": sorted({s.source for s in everything}),
    }
