"""A small S2EF-format dataset with stress labels (S2EFS), labelled with ASE's EMT.

EMT is evaluated by :class:`~escn_plugin.datasets.vectorized_emt.VectorizedEMT` (ASE's
``EMT`` without its Python loops; equal to it to ~1e-13).

Deterministic for a given ``(seed, num_train, num_val, num_test)``: the same inputs give the
same records (equal tensors). Frame ``i`` of a split depends only on ``(seed, split, i)``,
so a larger split extends a smaller one.

Systems
-------
Bulk fcc cells and fcc slabs of the EMT metals Cu, Ag, Au, Ni, Pd, Pt and Al (metals
cycled through a seeded permutation, so any 7 consecutive frames of a split hold all 7):

- bulk (3 of every 4 frames): the 4-atom cubic cell (repeated to 8 atoms along one axis)
  or the 1-atom primitive cell repeated 2x2x2, at the ASE lattice constant, deformed by
  ``cell -> cell (1 + e)`` with a symmetric strain ``e``: a volumetric part drawn from
  ``VOLUMETRIC_STRAIN`` plus a shear/normal part with entries of sigma ``STRAIN_STD``;
- slab (every 4th frame): fcc(111) (orthogonal cell) or fcc(100), 2x2 surface cell, 3
  layers, ``VACUUM`` A of vacuum on each side, strained in plane only (2x2 ``e``).

Atoms are then rattled (Gaussian, sigma drawn from ``RATTLE_STD`` A) and the whole system
(cell and positions) is turned by a uniformly random rotation, so no edge or cell vector
lies along a special direction. Positions and cell are rounded to float32 before
labelling (the stored geometry is exactly what EMT saw). No atom is fixed; tags are 1 for
a slab's top layer and 0 otherwise.

Labels
------
EMT total energy ``y`` (eV, measured from the bulk metal, so a few eV at most), forces
``force`` (eV/A) and ``stress`` (eV/A^3): ``atoms.get_stress(voigt=False)``, ASE's sign
convention (positive = tensile, i.e. the cell wants to shrink; ``stress = (1/V) dE/de``),
symmetric. For slabs ``V`` is the whole cell's volume, vacuum included, as ASE defines it.

Records and layout
------------------
Each LMDB is written with :func:`escn_plugin.datasets.lmdb_io.write_lmdb` (fairchem's
``format: lmdb``) and holds the OC20 S2EF record fields (``pos`` [N, 3] float32, ``cell``
[1, 3, 3] float32, ``atomic_numbers`` [N] uint8, ``natoms``, ``tags`` [N] int64, ``fixed``
[N] int32, ``pbc`` [3] bool, ``sid``, ``fid`` = 0, ``y``, ``force`` [N, 3] float32) plus
``stress`` [1, 3, 3] float32 (``sid`` runs over all splits; ``metadata.json`` lists each
frame's metal and kind)::

    DIR/metadata.json                  seed, counts, per-split statistics
    DIR/{train,val,test}/data.lmdb     (src: the directory) + metadata.npz

fairchem configs map ``key_mapping: {y: energy, force: forces}``; ``stress`` keeps its
name. A system-level ``stress`` of shape [1, 3, 3] collates to [B, 3, 3], which fairchem's
trainer reshapes to [B, 9]: what a head with ``outputs: {stress: {level: system,
irrep_dim: 2}}`` (fairchem's ``rank2_symmetric_head``, ``decompose: False``) is trained
against. For ``decompose: True`` heads, fairchem computes ``stress_isotropic`` [B, 1] and
``stress_anisotropic`` [B, 5] from ``stress`` with its ``decompose_tensor`` data transform
(``transforms: {decompose_tensor: {tensor: stress, rank: 2, decomposition:
{stress_isotropic: {irrep_dim: 0}, stress_anisotropic: {irrep_dim: 2}}}}``); the records
therefore store only ``stress``.

Generate with ``python -m escn_plugin.datasets.emt_stress --out DIR`` or :func:`generate`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, fcc100, fcc111
from ase.data import chemical_symbols
from torch_geometric.data import Data

from escn_plugin.datasets.lmdb_io import read_lmdb, write_lmdb
from escn_plugin.datasets.oc20_emt import METALS, SPLITS, float32_geometry, value_summary
from escn_plugin.datasets.vectorized_emt import VectorizedEMT

__all__ = [
    "FORMAT_VERSION",
    "METALS",
    "SPLITS",
    "build_frame",
    "generate",
    "main",
    "read_lmdb",
]

#: bumped whenever the generated content changes, so old directories are rebuilt
FORMAT_VERSION = 1

SLAB_EVERY = 4  # every 4th frame of a split is a slab, the rest bulk cells
VOLUMETRIC_STRAIN = (-0.03, 0.03)  # range of the isotropic strain
STRAIN_STD = 0.02  # sigma of each independent entry of the symmetric strain
RATTLE_STD = (0.02, 0.08)  # A, range of the per-frame Gaussian sigma
VACUUM = 6.0  # A on each side of a slab


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random proper rotation ``[3, 3]`` (QR of a Gaussian matrix)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _symmetric_strain(rng: np.random.Generator, dims: int) -> np.ndarray:
    """``[3, 3]`` symmetric strain acting on the first ``dims`` axes only."""
    e = np.zeros((3, 3))
    g = rng.normal(0.0, STRAIN_STD, size=(dims, dims))
    e[:dims, :dims] = 0.5 * (g + g.T) + rng.uniform(*VOLUMETRIC_STRAIN) * np.eye(dims)
    return e


def build_frame(metal: str, kind: str, rng: np.random.Generator) -> Atoms:
    """One strained, rattled, rotated bulk cell or slab of ``metal`` with an EMT calculator."""
    if kind == "bulk":
        if rng.integers(2):
            atoms = bulk(metal, "fcc", cubic=True).repeat((1, 1, 2))
        else:
            atoms = bulk(metal, "fcc").repeat((2, 2, 2))
        atoms.set_tags(0)
        dims = 3
    elif kind == "slab":
        if rng.integers(2):
            atoms = fcc111(metal, size=(2, 2, 3), vacuum=VACUUM, orthogonal=True)
        else:
            atoms = fcc100(metal, size=(2, 2, 3), vacuum=VACUUM)
        atoms.set_tags(np.where(atoms.get_tags() == 1, 1, 0))  # ase.build: 1 = top layer
        dims = 2
    else:
        raise ValueError(f"unknown frame kind {kind!r}; expected 'bulk' or 'slab'")
    atoms.pbc = True
    atoms.set_cell(atoms.cell.array @ (np.eye(3) + _symmetric_strain(rng, dims)), scale_atoms=True)
    atoms.positions += rng.normal(0.0, rng.uniform(*RATTLE_STD), size=atoms.positions.shape)
    rotation = _random_rotation(rng)  # row vectors: x -> x R^T
    atoms.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    atoms.positions = atoms.positions @ rotation.T
    atoms = float32_geometry(atoms)
    atoms.calc = VectorizedEMT()
    return atoms


def _record(a2g, atoms: Atoms, sid: int) -> Data:
    data = a2g.convert(atoms)
    # AtomsToGraphs (fairchem 1.10) names them energy / forces; OC20 LMDBs use y / force
    data.y = float(data.energy)
    data.force = data.forces
    data.stress = data.stress.reshape(1, 3, 3)  # [1, 3, 3] like ``cell``: collates to [B, 3, 3]
    del data.energy, data.forces
    data.tags = torch.as_tensor(atoms.get_tags(), dtype=torch.long)
    data.sid = sid
    data.fid = 0
    return data


def _frames(seed: int, split: str, count: int) -> list[tuple[str, str, np.random.Generator]]:
    """(metal, kind, rng) of each frame of a split; frame i depends on (seed, split, i)."""
    split_index = SPLITS.index(split)
    metals = [str(m) for m in np.random.default_rng((seed, 0, split_index)).permutation(METALS)]
    frames = []
    for i in range(count):
        kind = "slab" if i % SLAB_EVERY == SLAB_EVERY - 1 else "bulk"
        frames.append(
            (metals[i % len(metals)], kind, np.random.default_rng((seed, 1, split_index, i)))
        )
    return frames


def _split_stats(records: Sequence[Data]) -> dict:
    stress = torch.cat([d.stress.reshape(1, 9) for d in records]).double()  # [n, 9]
    return {
        "src": None,  # filled in by generate
        "n_frames": len(records),
        "n_slabs": sum(bool((d.tags == 1).any()) for d in records),
        "natoms": value_summary([d.natoms for d in records]),
        "energy": value_summary([d.y for d in records]),
        "force_rms": float(torch.cat([d.force for d in records]).pow(2).mean().sqrt()),
        "stress_rms": float(stress.pow(2).mean().sqrt()),
        "stress_mean": stress.mean(0).tolist(),
        "pressure": value_summary((-stress[:, [0, 4, 8]].mean(1)).tolist()),
    }


def generate(
    out_dir: str | os.PathLike,
    seed: int = 0,
    num_train: int = 32,
    num_val: int = 8,
    num_test: int = 8,
    verbose: bool = True,
) -> Path:
    """Write train/val/test S2EFS LMDBs into ``out_dir`` (reused if already there).

    ``num_*``: frames per split (each >= 1). Returns ``out_dir``; the splits are the
    directories ``out_dir/{train,val,test}`` (fairchem ``format: lmdb``, ``src``) and
    ``out_dir/metadata.json`` holds the per-split label statistics (energy mean/std,
    force rms, stress rms) for normalizers. Raises ValueError if ``out_dir`` holds a
    dataset generated with other arguments.
    """
    counts = {"train": num_train, "val": num_val, "test": num_test}
    for split, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"num_{split} must be a positive integer, got {count!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    seed, counts = int(seed), {k: int(v) for k, v in counts.items()}
    root = Path(out_dir)
    meta_path = root / "metadata.json"
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            found = (meta["generator"], meta["seed"], meta["counts"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(
                f"{meta_path} is not a metadata file of this generator ({err}); "
                f"delete {root} or choose another output directory"
            ) from None
        if found != (__name__, seed, counts):
            raise ValueError(
                f"{root} holds a dataset generated with {found}, not seed={seed}, "
                f"counts={counts}; delete it or choose another output directory"
            )
        complete = all((root / s / "data.lmdb").is_file() for s in SPLITS)
        if meta.get("format_version") == FORMAT_VERSION and complete:
            if verbose:
                print(f"reusing the EMT stress dataset (seed {seed}) in {root}")
            return root

    # fairchem imports torch_scatter; keep it out of module import (docs, --help)
    from fairchem.core.preprocessing import AtomsToGraphs

    a2g = AtomsToGraphs(
        r_energy=True,
        r_forces=True,
        r_stress=True,
        r_distances=False,
        r_edges=False,
        r_fixed=True,
        r_pbc=True,
    )
    start = time.perf_counter()
    records, frames = {}, []
    for split in SPLITS:
        records[split] = []
        for metal, kind, rng in _frames(seed, split, counts[split]):
            atoms = build_frame(metal, kind, rng)
            records[split].append(_record(a2g, atoms, len(frames)))
            frames.append(
                {
                    "sid": len(frames),
                    "split": split,
                    "metal": metal,
                    "kind": kind,
                    "natoms": len(atoms),
                }
            )

    meta_path.unlink(missing_ok=True)  # a half-written directory is never reused
    stats = {}
    for split in SPLITS:
        write_lmdb(root / split / "data.lmdb", records[split])
        stats[split] = {**_split_stats(records[split]), "src": split}
    all_records = [d for split in SPLITS for d in records[split]]
    metadata = {
        "generator": __name__,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "counts": counts,
        "units": {"energy": "eV (EMT total)", "forces": "eV/A", "stress": "eV/A^3 (ASE sign)"},
        "elements": sorted(
            {chemical_symbols[z] for d in all_records for z in d.atomic_numbers.tolist()}
        ),
        "key_mapping": {"y": "energy", "force": "forces"},
        **stats,
        "frames": frames,
    }
    tmp = meta_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=1) + "\n")
    os.replace(tmp, meta_path)
    if verbose:
        print(
            f"wrote the EMT stress dataset (seed {seed}) to {root}: train/val/test "
            f"{num_train}/{num_val}/{num_test} frames in {time.perf_counter() - start:.1f} s"
        )
    return root


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m escn_plugin.datasets.emt_stress",
        description="Generate small S2EFS LMDBs (energy, forces, stress) labelled with EMT.",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--num-train", type=int, default=32)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--num-test", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        return generate(args.out, args.seed, args.num_train, args.num_val, args.num_test)
    except ValueError as err:
        parser.error(str(err))


def console() -> None:
    """The console script (``main`` returns what it wrote for Python callers)."""
    main()


if __name__ == "__main__":
    main()
