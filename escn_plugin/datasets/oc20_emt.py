"""A small OC20-format dataset (S2EF and IS2RE/IS2RS LMDBs) labelled with ASE's EMT.

EMT is evaluated by :class:`~escn_plugin.datasets.vectorized_emt.VectorizedEMT`: ASE's
``EMT`` (its parameters and formulas) without its per-atom Python loops, equal to it to
~1e-13 eV and 5-9x faster per call.

Deterministic for a given ``(seed, size)``: the same inputs give the same records (equal
tensors; the pickled bytes differ because torch pickles storages under their memory address).

Systems
-------
One adsorbate (O, H, C, N, OH or CO; bound through its first atom) on an ontop, bridge or
hollow site of an fcc(111) or fcc(100) slab of Cu, Ag, Au, Ni, Pd, Pt or Al: 3-4 layers,
small orthogonal surface cells (17-38 atoms in all), ``VACUUM`` A of vacuum on each side,
periodic in all three directions as in OC20. The adsorbate starts 0-0.3 A above the
height where EMT is lowest (a 0.2 A scan; EMT is steep below it), nudged off its ideal
site; molecules have EMT's gas-phase bond length and a 5-20 degree tilt. Every system is
turned about z by an angle drawn from a continuous distribution (kept 2 degrees from
multiples of 15, where nearest-neighbour bonds and cell edges point) and shifted in plane
before wrapping, so no edge lies along a special direction (the reference eSCN's Wigner-D
is singular for edges along +-y). Tags as in OC20: 0
sub-surface slab atoms (fixed by ``FixAtoms``, hence ``fixed`` = 1), 1 top-layer slab
atoms, 2 adsorbate atoms.

Labels
------
Each system is relaxed with BFGS under EMT to fmax ``RELAX_FMAX`` eV/A, sub-surface atoms
fixed. From that relaxation:

- S2EF frames: about half are trajectory frames evenly spaced from the initial to the
  relaxed structure (``fid`` = BFGS step, as in OC20), the rest rattled copies of random
  trajectory frames (free atoms only, Gaussian with sigma drawn from ``RATTLE_STD`` A;
  ``fid`` = trajectory length + k). Labels: EMT energy and forces on all atoms.
- IS2RE/IS2RS: the initial structure with ``y_init``, and the relaxed energy ``y_relaxed``
  and positions ``pos_relaxed`` (continuous with ``pos``, not wrapped again).

Generation runs systems in ``workers`` processes (each system's randomness is its own, so
the result does not depend on the number of workers) and prints progress lines.

Energies are OC20-style *adsorption* energies in eV (forces in eV/A): the EMT total energy
minus the EMT energy of the same clean slab (same metal, facet and cell, top layer relaxed
like the system's) minus gas-phase references for the adsorbate's atoms (``GAS_MOLECULES``:
H, O, N from half of H2, O2, N2 and C from CO minus O, each molecule at its EMT bond-length
minimum). ``metadata.json`` lists each system's subtracted ``energy_reference``, so
``y + energy_reference`` is EMT's total energy. Positions and cell are rounded to float32
before labelling, so the float32 ``pos`` and ``cell`` stored in the records are exactly the
geometry EMT saw.

Systems are split into train / val / test by system (a system's S2EF frames and its IS2RE
record share the split and the ``sid``); ``SIZES`` gives the counts.

Layout on disk
--------------
::

    DIR/metadata.json                    seed, size, counts, elements, per-split statistics
    DIR/s2ef/{train,val,test}/data.lmdb  S2EF frames   (src: the directory)
    DIR/is2re/{train,val,test}/data.lmdb IS2RE/IS2RS   (src: the file or its directory)
    .../metadata.npz                     ``natoms`` per record, beside each LMDB

Each LMDB maps ASCII keys ``"0"`` .. ``"n-1"`` to ``pickle.dumps(Data, protocol=-1)`` and
``"length"`` to ``pickle.dumps(n)``, which is what ``fairchem.core.datasets.LmdbDataset``
(``format: lmdb``) reads. Records (``torch_geometric.data.Data``) hold, as the official
OC20 LMDBs: ``pos`` [N, 3] float32, ``cell`` [1, 3, 3] float32, ``atomic_numbers`` [N]
uint8, ``natoms`` int, ``tags`` [N] int64, ``fixed`` [N] int32, ``pbc`` [3] bool, ``sid``
int and

- S2EF: ``y`` float (energy), ``force`` [N, 3] float32, ``fid`` int;
- IS2RE/IS2RS: ``y_init`` float, ``y_relaxed`` float, ``pos_relaxed`` [N, 3] float32.

No edges are stored (eSCN builds its graph on the fly). fairchem configs therefore map the
names, e.g. ``key_mapping: {y: energy, force: forces}`` for S2EF and
``key_mapping: {y_relaxed: energy_relaxed}`` for a ``relax`` dataset.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc100, fcc111
from ase.constraints import FixAtoms
from ase.data import chemical_symbols
from ase.geometry import wrap_positions
from ase.optimize import BFGS
from torch_geometric.data import Data

from escn_plugin.datasets.lmdb_io import read_lmdb, write_lmdb
from escn_plugin.datasets.vectorized_emt import VectorizedEMT

__all__ = [
    "float32_geometry",
    "ADSORBATES",
    "FORMAT_VERSION",
    "METALS",
    "SIZES",
    "SPLITS",
    "SizeSpec",
    "SystemSpec",
    "build_system",
    "clean_slab",
    "clean_slab_energy",
    "energy_reference",
    "gas_references",
    "label_system",
    "design_systems",
    "generate",
    "main",
    "read_lmdb",
    "relax",
    "value_summary",
    "write_lmdb",
]

#: bumped whenever the generated content changes, so old directories are rebuilt
FORMAT_VERSION = 2

METALS = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")
ADSORBATES = ("O", "H", "C", "N", "OH", "CO")
SPLITS = ("train", "val", "test")

#: adsorption sites that ``ase.build`` names on each facet
SITES = {"111": ("ontop", "bridge", "fcc", "hcp"), "100": ("ontop", "bridge", "hollow")}
#: (nx, ny, layers) surface cells; fcc111 ``orthogonal=True`` needs an even ny
SURFACE_CELLS = {
    "111": ((2, 4, 3), (3, 2, 4), (2, 4, 4), (3, 4, 3)),
    "100": ((2, 2, 4), (3, 3, 3), (2, 3, 4), (3, 3, 4)),
}
#: heights (A) of the binding atom above the top layer scanned for the EMT minimum; EMT is
#: steep below it (H 0.6 A below its ontop minimum on Pt costs ~16 eV): starts lie above it
SCAN_HEIGHTS = tuple(np.round(np.arange(0.6, 3.01, 0.2), 2))
HEIGHT_OFFSET = (0.0, 0.3)  # A, range of the start's height above the scanned minimum
BOND_LENGTHS = {"OH": 1.03, "CO": 1.06}  # A, EMT's gas-phase minima; second atom on top
MOLECULE_TILT_DEG = (5.0, 20.0)
SITE_JITTER = 0.15  # A, in-plane sigma of the adsorbate's offset from its site
VACUUM = 8.0  # A on each side of the slab

#: gas-phase reference of each adsorbate element: (molecule, other atom's reference or
#: None); mu_X = (E(molecule) - mu_other) / n_X, molecules at their EMT bond-length minima
GAS_MOLECULES = {"H": ("H2", None), "O": ("O2", None), "N": ("N2", None), "C": ("CO", "O")}

RELAX_FMAX = 0.05  # eV/A
RELAX_MAX_STEPS = 300
RATTLE_STD = (0.05, 0.1)  # A, range of the per-frame Gaussian sigma


@dataclass(frozen=True)
class SizeSpec:
    """How many systems go to each split and how many S2EF frames each system gives."""

    n_train: int
    n_val: int
    n_test: int
    frames_per_system: int

    @property
    def n_systems(self) -> int:
        return self.n_train + self.n_val + self.n_test

    def counts(self) -> dict[str, int]:
        return {"train": self.n_train, "val": self.n_val, "test": self.n_test}


SIZES = {
    # 4 systems, 24 S2EF frames (12/6/6), IS2RE 2/1/1: for the test suite
    "tiny": SizeSpec(n_train=2, n_val=1, n_test=1, frames_per_system=6),
    # 360 systems, 1440 S2EF frames (1152/144/144), IS2RE 288/36/36: for the main job.
    # Many systems with few frames each: a model learns energies across compositions and
    # sites only from many distinct systems
    "demo": SizeSpec(n_train=288, n_val=36, n_test=36, frames_per_system=4),
}


@dataclass(frozen=True)
class SystemSpec:
    """Everything random about one system, drawn up front by :func:`design_systems`."""

    sid: int
    split: str
    metal: str
    facet: str  # "111" or "100"
    surface_cell: tuple[int, int, int]  # (nx, ny, layers)
    adsorbate: str
    site: str
    angle_deg: float  # turn about z
    shift: tuple[float, float]  # in-plane shift, fractions of the cell vectors a, b


def _check_args(seed: int, size: str) -> SizeSpec:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return SIZES[size]


def design_systems(seed: int, size: str) -> list[SystemSpec]:
    """The systems of a dataset, sorted by sid.

    Metals, facets and adsorbates are cycled through seeded permutations, so even the
    ``tiny`` set has four metals, both facets and four adsorbates, and every run of
    2 * lcm(#metals, #adsorbates) = 84 consecutive sids holds each (metal, adsorbate, facet)
    once; the rest is drawn.
    """
    spec = _check_args(seed, size)
    rng = np.random.default_rng((int(seed), 0))
    metals = [str(m) for m in rng.permutation(METALS)]
    adsorbates = [str(a) for a in rng.permutation(ADSORBATES)]
    first_facet = int(rng.integers(2))
    split_of = np.empty(spec.n_systems, dtype=object)
    order = rng.permutation(spec.n_systems)
    bounds = np.cumsum([0, spec.n_train, spec.n_val, spec.n_test])
    for k, split in enumerate(SPLITS):
        split_of[order[bounds[k] : bounds[k + 1]]] = split

    period = math.lcm(len(metals), len(adsorbates))
    systems = []
    for i in range(spec.n_systems):
        facet = ("111", "100")[(i + i // period + first_facet) % 2]
        cells = SURFACE_CELLS[facet]
        systems.append(
            SystemSpec(
                sid=i,
                split=str(split_of[i]),
                metal=metals[i % len(metals)],
                facet=facet,
                surface_cell=cells[int(rng.integers(len(cells)))],
                adsorbate=adsorbates[i % len(adsorbates)],
                site=str(rng.choice(SITES[facet])),
                angle_deg=float(15.0 * rng.integers(24) + rng.uniform(2.0, 13.0)),
                shift=(float(rng.uniform()), float(rng.uniform())),
            )
        )
    return systems


def _adsorbate(name: str, rng: np.random.Generator) -> Atoms:
    """The adsorbate with its binding atom (index 0) at the origin, tilted if a molecule."""
    if name not in BOND_LENGTHS:
        return Atoms(name, positions=[(0.0, 0.0, 0.0)])
    molecule = Atoms(name, positions=[(0.0, 0.0, 0.0), (0.0, 0.0, BOND_LENGTHS[name])])
    phi = rng.uniform(0.0, 2.0 * np.pi)
    axis = (np.cos(phi), np.sin(phi), 0.0)
    molecule.rotate(rng.uniform(*MOLECULE_TILT_DEG), axis, center=(0.0, 0.0, 0.0))
    return molecule


def float32_geometry(atoms: Atoms, wrap: bool = True) -> Atoms:
    """A copy whose cell and positions are float32 values (wrapped into the cell first)."""
    atoms = atoms.copy()
    cell = atoms.cell.array.astype(np.float32).astype(np.float64)
    atoms.set_cell(cell, scale_atoms=False)
    positions = atoms.get_positions()
    if wrap:
        positions = wrap_positions(positions, cell, pbc=True, eps=0)
    atoms.set_positions(positions.astype(np.float32).astype(np.float64), apply_constraint=False)
    return atoms


def _lowest_height(slab: Atoms, n_ads: int) -> float:
    """The height in ``SCAN_HEIGHTS`` where EMT is lowest, moving the last ``n_ads`` atoms
    rigidly along z (they start at ``SCAN_HEIGHTS[0]``)."""
    probe = slab.copy()
    probe.calc = VectorizedEMT()
    start = probe.get_positions()
    energies = []
    for height in SCAN_HEIGHTS:
        positions = start.copy()
        positions[-n_ads:, 2] += height - SCAN_HEIGHTS[0]
        probe.set_positions(positions)
        energies.append(probe.get_potential_energy())
    return float(SCAN_HEIGHTS[int(np.argmin(energies))])


def clean_slab(metal: str, facet: str, surface_cell: tuple[int, int, int]) -> Atoms:
    """The clean fcc(111)/(100) slab: tags 1 (top layer) and 0 (sub-surface, fixed), PBC,
    ``ase.build``'s adsorption-site info kept."""
    nx, ny, layers = surface_cell
    if facet == "111":
        slab = fcc111(metal, size=(nx, ny, layers), vacuum=VACUUM, orthogonal=True)
    elif facet == "100":
        slab = fcc100(metal, size=(nx, ny, layers), vacuum=VACUUM)
    else:
        raise ValueError(f"unknown facet {facet!r}; expected '111' or '100'")
    tags = np.where(slab.get_tags() == 1, 1, 0)  # ase.build tags layers 1 (top), 2, ...
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(mask=tags == 0))
    slab.pbc = True
    return slab


@functools.cache
def clean_slab_energy(metal: str, facet: str, surface_cell: tuple[int, int, int]) -> float:
    """EMT energy (eV) of the clean slab with its top layer relaxed (BFGS, ``RELAX_FMAX``)."""
    slab = clean_slab(metal, facet, tuple(surface_cell))
    slab.calc = VectorizedEMT()
    BFGS(slab, logfile=None).run(fmax=RELAX_FMAX, steps=RELAX_MAX_STEPS)
    return float(slab.get_potential_energy())


def _molecule_energy(formula: str) -> float:
    """EMT energy (eV) of an isolated diatomic molecule at its bond-length minimum."""
    from scipy.optimize import minimize_scalar

    def energy(bond: float) -> float:
        molecule = Atoms(formula, positions=[(0.0, 0.0, 0.0), (0.0, 0.0, bond)])
        molecule.calc = VectorizedEMT()
        return molecule.get_potential_energy()

    return float(minimize_scalar(energy, bounds=(0.6, 2.0), method="bounded").fun)


@functools.cache
def gas_references() -> dict[str, float]:
    """``{element: mu}`` (eV): the gas-phase reference of each adsorbate element (see
    ``GAS_MOLECULES``)."""
    mu: dict[str, float] = {}
    for element, (molecule, other) in GAS_MOLECULES.items():
        other_mu = mu[other] if other is not None else 0.0
        n_element = 2 if other is None else 1
        mu[element] = (_molecule_energy(molecule) - other_mu) / n_element
    return mu


def energy_reference(spec: SystemSpec) -> float:
    """What is subtracted from a system's EMT total energy to make its adsorption energy:
    the relaxed clean slab's energy plus the adsorbate atoms' gas-phase references."""
    mu = gas_references()
    return clean_slab_energy(spec.metal, spec.facet, spec.surface_cell) + sum(
        mu[symbol] for symbol in Atoms(spec.adsorbate).get_chemical_symbols()
    )


def build_system(spec: SystemSpec, rng: np.random.Generator) -> Atoms:
    """The unrelaxed adsorbate+slab of ``spec``: tagged, constrained, turned, wrapped."""
    slab = clean_slab(spec.metal, spec.facet, spec.surface_cell)
    top_layer = slab.get_tags() == 1

    adsorbate = _adsorbate(spec.adsorbate, rng)
    add_adsorbate(slab, adsorbate, SCAN_HEIGHTS[0], position=spec.site, mol_index=0)
    n_ads = len(adsorbate)
    slab.positions[-n_ads:, :2] += rng.normal(0.0, SITE_JITTER, size=2)
    height = _lowest_height(slab, n_ads) + rng.uniform(*HEIGHT_OFFSET)
    slab.positions[-n_ads:, 2] += height - SCAN_HEIGHTS[0]

    tags = np.concatenate([np.where(top_layer, 1, 0), np.full(n_ads, 2)])
    slab.set_tags(tags)
    slab.set_constraint(FixAtoms(mask=tags == 0))
    slab.pbc = True
    slab.info = {}

    slab.rotate(spec.angle_deg, "z", rotate_cell=True)
    slab.positions += np.asarray(spec.shift) @ slab.cell.array[:2]
    return float32_geometry(slab)


def relax(atoms: Atoms) -> tuple[list[np.ndarray], bool]:
    """BFGS under EMT to ``RELAX_FMAX``; positions after each step (0 = start), converged."""
    work = atoms.copy()
    work.calc = VectorizedEMT()
    optimizer = BFGS(work, logfile=None)
    trajectory = []
    converged = False
    for converged in optimizer.irun(fmax=RELAX_FMAX, steps=RELAX_MAX_STEPS):  # noqa: B007
        trajectory.append(work.get_positions())
    return trajectory, bool(converged)


def _with_positions(atoms: Atoms, positions: np.ndarray, wrap: bool = True) -> Atoms:
    """A float32-rounded copy of ``atoms`` at ``positions`` with an EMT calculator."""
    frame = atoms.copy()
    frame.set_positions(positions, apply_constraint=False)
    frame = float32_geometry(frame, wrap=wrap)
    frame.calc = VectorizedEMT()
    return frame


def _s2ef_frames(
    initial: Atoms,
    trajectory: Sequence[np.ndarray],
    n_frames: int,
    rng: np.random.Generator,
) -> list[tuple[int, Atoms]]:
    """(fid, Atoms) pairs: evenly spaced trajectory frames, then rattled copies."""
    n_traj = min(len(trajectory), (n_frames + 1) // 2)
    steps = np.round(np.linspace(0, len(trajectory) - 1, n_traj)).astype(int)
    frames = [(int(step), _with_positions(initial, trajectory[step])) for step in steps]
    free = initial.get_tags() != 0
    for k in range(n_frames - len(frames)):
        base = trajectory[int(rng.integers(len(trajectory)))]
        noise = rng.normal(0.0, rng.uniform(*RATTLE_STD), size=base.shape)
        frames.append((len(trajectory) + k, _with_positions(initial, base + noise * free[:, None])))
    return frames


def _atoms_to_graphs(labels: bool):
    # fairchem imports torch_scatter; keep it out of module import (docs, --help)
    from fairchem.core.preprocessing import AtomsToGraphs

    return AtomsToGraphs(
        max_neigh=50,
        radius=6,
        r_energy=labels,
        r_forces=labels,
        r_distances=False,
        r_edges=False,
        r_fixed=True,
        r_pbc=True,
    )


def _labelled(atoms: Atoms) -> Atoms:
    """``atoms`` with its EMT energy and forces frozen in a SinglePointCalculator (picklable,
    so worker processes can return it)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    energy, forces = atoms.get_potential_energy(), atoms.get_forces(apply_constraint=False)
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def label_system(seed: int, spec: SystemSpec, frames_per_system: int) -> dict[str, Any]:
    """Everything EMT computes for one system (runs in a worker process): its S2EF frames,
    initial and relaxed structures (labelled), and its energy reference."""
    rng = np.random.default_rng((seed, 1, spec.sid))
    initial = build_system(spec, rng)
    trajectory, converged = relax(initial)
    frames = _s2ef_frames(initial, trajectory, frames_per_system, rng)
    return {
        "spec": spec,
        "frames": [(fid, _labelled(atoms)) for fid, atoms in frames],
        "initial": _labelled(_with_positions(initial, initial.get_positions())),
        "relaxed": _labelled(_with_positions(initial, trajectory[-1], wrap=False)),
        "relax_steps": len(trajectory) - 1,
        "relax_converged": converged,
        "energy_reference": energy_reference(spec),
    }


def _s2ef_record(a2g, atoms: Atoms, sid: int, fid: int, reference: float) -> Data:
    data = a2g.convert(atoms)
    # AtomsToGraphs (fairchem 1.10) names them energy / forces; OC20 LMDBs use y / force
    data.y = float(data.energy) - reference
    data.force = data.forces
    del data.energy, data.forces
    data.tags = torch.as_tensor(atoms.get_tags(), dtype=torch.long)
    data.sid = sid
    data.fid = fid
    return data


def _is2re_record(a2g, initial: Atoms, relaxed: Atoms, sid: int, reference: float) -> Data:
    data = a2g.convert(initial)
    data.tags = torch.as_tensor(initial.get_tags(), dtype=torch.long)
    data.sid = sid
    data.y_init = float(initial.get_potential_energy()) - reference
    data.y_relaxed = float(relaxed.get_potential_energy()) - reference
    data.pos_relaxed = torch.as_tensor(relaxed.get_positions(), dtype=torch.float32)
    return data


def _label_all(
    seed: int, systems: Sequence[SystemSpec], frames_per_system: int, workers: int
) -> Iterator[dict[str, Any]]:
    """:func:`label_system` of every system, in order, in ``workers`` processes."""
    from escn_plugin.common.progress import progress

    jobs = [(seed, spec, frames_per_system) for spec in systems]
    if workers <= 1:
        results: Iterator[dict[str, Any]] = (label_system(*job) for job in jobs)
        yield from progress(results, len(jobs), "EMT systems", prefix="[data]")
        return
    import multiprocessing

    # spawn: the parent may hold torch/OpenMP threads, which fork does not survive
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.imap(_label_job, jobs, chunksize=4)
        yield from progress(results, len(jobs), "EMT systems", prefix="[data]")


def _label_job(job: tuple[int, SystemSpec, int]) -> dict[str, Any]:
    return label_system(*job)


def value_summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, std, min and max of ``values`` (metadata statistics of a split)."""
    values = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _layout(root: Path) -> dict[str, Any]:
    return {
        "root": root,
        "metadata": root / "metadata.json",
        "s2ef": {split: root / "s2ef" / split for split in SPLITS},
        "is2re": {split: root / "is2re" / split / "data.lmdb" for split in SPLITS},
    }


def _complete(layout: dict[str, Any]) -> bool:
    files = [d / "data.lmdb" for d in layout["s2ef"].values()] + list(layout["is2re"].values())
    return all(f.is_file() for f in files)


def _reusable(layout: dict[str, Any], seed: int, size: str) -> bool:
    """True if ``root`` already holds this dataset; raises if it holds another one."""
    meta_path = layout["metadata"]
    if not meta_path.is_file():
        return False
    try:
        meta = json.loads(meta_path.read_text())
        found = (meta["seed"], meta["size"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(
            f"{meta_path} is not a metadata file of this generator ({err}); "
            f"delete {layout['root']} or choose another output directory"
        ) from None
    if found != (seed, size):
        raise ValueError(
            f"{layout['root']} holds a dataset generated with seed={found[0]}, "
            f"size={found[1]!r}, not seed={seed}, size={size!r}; delete it or choose "
            "another output directory"
        )
    return meta.get("format_version") == FORMAT_VERSION and _complete(layout)


def generate(
    out_dir: str | os.PathLike,
    seed: int = 0,
    size: str = "tiny",
    verbose: bool = True,
    workers: int = 1,
) -> dict[str, Any]:
    """Generate the dataset into ``out_dir`` (or reuse it if already there), labelling the
    systems in ``workers`` processes (the result does not depend on it).

    Returns ``{"root", "metadata", "s2ef": {split: directory}, "is2re": {split: file},
    "reused": bool}`` with :class:`~pathlib.Path` values; ``s2ef`` directories and
    ``is2re`` files are valid ``src`` entries for fairchem's ``format: lmdb``.
    """
    spec = _check_args(seed, size)
    seed = int(seed)
    layout = _layout(Path(out_dir))
    if _reusable(layout, seed, size):
        if verbose:
            print(f"reusing the {size} OC20-EMT dataset (seed {seed}) in {layout['root']}")
        return {**layout, "reused": True}

    start = time.perf_counter()
    a2g_s2ef, a2g_is2re = _atoms_to_graphs(labels=True), _atoms_to_graphs(labels=False)
    s2ef = {split: [] for split in SPLITS}
    is2re = {split: [] for split in SPLITS}
    systems = []
    designed = design_systems(seed, size)
    if verbose:
        print(
            f"[data] generating the {size} OC20-EMT dataset (seed {seed}): {len(designed)} "
            f"systems in {workers} process(es) -> {layout['root']}",
            flush=True,
        )
    for done in _label_all(seed, designed, spec.frames_per_system, workers):
        system, ref = done["spec"], done["energy_reference"]
        s2ef[system.split] += [
            _s2ef_record(a2g_s2ef, atoms, system.sid, fid, ref) for fid, atoms in done["frames"]
        ]
        is2re[system.split].append(
            _is2re_record(a2g_is2re, done["initial"], done["relaxed"], system.sid, ref)
        )
        systems.append(
            {
                **asdict(system),
                "natoms": len(done["initial"]),
                "relax_steps": done["relax_steps"],
                "relax_converged": done["relax_converged"],
                "energy_reference": ref,
            }
        )

    layout["metadata"].unlink(missing_ok=True)  # a half-written directory is never reused
    for split in SPLITS:
        write_lmdb(layout["s2ef"][split] / "data.lmdb", s2ef[split])
        write_lmdb(layout["is2re"][split], is2re[split])

    root = layout["root"]
    records_all = [d for split in SPLITS for d in is2re[split]]
    metadata = {
        "generator": "escn_plugin.datasets.oc20_emt",
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "size": size,
        "energy": "adsorption energy in eV: EMT total energy - relaxed clean slab - gas-phase "
        "references (H2/2, O2/2, N2/2, CO - O2/2); forces in eV/A",
        "gas_references": gas_references(),
        "elements": sorted(
            {chemical_symbols[z] for d in records_all for z in d.atomic_numbers.tolist()}
        ),
        "relaxation": {"optimizer": "BFGS", "fmax": RELAX_FMAX, "max_steps": RELAX_MAX_STEPS},
        "key_mapping": {
            "s2ef": {"y": "energy", "force": "forces"},
            "is2re": {"y_relaxed": "energy_relaxed"},
        },
        "s2ef": {
            split: {
                "src": str(layout["s2ef"][split].relative_to(root)),
                "n_frames": len(records),
                "n_systems": len({int(d.sid) for d in records}),
                "natoms": value_summary([d.natoms for d in records]),
                "energy": value_summary([d.y for d in records]),
                "force_rms": float(torch.cat([d.force for d in records]).pow(2).mean().sqrt()),
            }
            for split, records in s2ef.items()
        },
        "is2re": {
            split: {
                "src": str(layout["is2re"][split].relative_to(root)),
                "n_systems": len(records),
                "y_init": value_summary([d.y_init for d in records]),
                "y_relaxed": value_summary([d.y_relaxed for d in records]),
                "n_unconverged": sum(
                    not s["relax_converged"] for s in systems if s["split"] == split
                ),
            }
            for split, records in is2re.items()
        },
        "systems": systems,
    }
    tmp = layout["metadata"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metadata, indent=1) + "\n")
    os.replace(tmp, layout["metadata"])
    if verbose:
        counts = "/".join(str(len(s2ef[split])) for split in SPLITS)
        print(
            f"wrote the {size} OC20-EMT dataset (seed {seed}) to {root}: {len(systems)} "
            f"systems, S2EF train/val/test {counts} frames, in "
            f"{time.perf_counter() - start:.1f} s"
        )
    return {**layout, "reused": False}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m escn_plugin.datasets.oc20_emt",
        description="Generate a small OC20-format S2EF + IS2RE/IS2RS dataset labelled with EMT.",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny", help="dataset size")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    args = parser.parse_args(argv)
    try:
        return generate(args.out, seed=args.seed, size=args.size, workers=args.workers)
    except ValueError as err:
        parser.error(str(err))


def console() -> None:
    """The console script (``main`` returns what it wrote for Python callers)."""
    main()


if __name__ == "__main__":
    main()
