"""Small PBC slab+adsorbate batches for model tests (ASE only, no files)."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.build import add_adsorbate, fcc100, fcc111, molecule
from ase.constraints import FixAtoms
from fairchem.core.preprocessing import AtomsToGraphs
from scipy.spatial.transform import Rotation
from torch_geometric.data import Batch

# a fixed generic rotation: keeps edges away from +-y, where the reference eSCN's
# Euler-angle Wigner-D is singular (docs/fairchem_notes.md §14)
GENERIC_ROTATION = Rotation.from_euler("xyz", [0.3, 0.7, 1.1]).as_matrix()


def slabs() -> list[Atoms]:
    """Two small periodic slabs with adsorbates, tags and fixed sub-surface atoms."""
    out = []
    for builder, metal, ads, site in (
        (fcc111, "Cu", "O", "fcc"),
        (fcc100, "Pt", molecule("CO"), "hollow"),
    ):
        atoms = builder(metal, size=(2, 2, 3), vacuum=6.0, periodic=True)
        tags = atoms.get_tags()  # ase: layer number from the top, 1 = top layer
        add_adsorbate(atoms, ads, 1.7, site)
        tags = np.concatenate([np.where(tags == 1, 1, 0), np.full(len(atoms) - len(tags), 2)])
        atoms.set_tags(tags)
        atoms.set_constraint(FixAtoms(mask=tags == 0))
        atoms.rattle(0.05, seed=len(out))
        out.append(atoms)
    return out


def rotate_atoms(atoms: Atoms, rot: np.ndarray) -> Atoms:
    atoms = atoms.copy()
    atoms.set_positions(atoms.get_positions() @ rot.T, apply_constraint=False)
    atoms.set_cell(atoms.get_cell()[:] @ rot.T, scale_atoms=False)
    return atoms


def make_batch(
    atoms_list: list[Atoms],
    dtype: torch.dtype = torch.float64,
    edges: bool = True,
    radius: float = 6.0,
    max_neigh: int = 20,
) -> Batch:
    """A PyG batch; with ``edges`` the graph is precomputed (for ``otf_graph: False``),
    which works in float64 unlike fairchem's on-the-fly PBC graph."""
    a2g = AtomsToGraphs(max_neigh=max_neigh, radius=radius, r_edges=edges, r_fixed=True, r_pbc=True)
    data = []
    for i, atoms in enumerate(atoms_list):
        atoms = atoms.copy()
        atoms.wrap()
        d = a2g.convert(atoms)
        d.pos = torch.tensor(atoms.get_positions(), dtype=dtype)
        d.cell = torch.tensor(atoms.get_cell()[:], dtype=dtype).view(1, 3, 3)
        d.tags = torch.tensor(atoms.get_tags(), dtype=torch.long)
        d.sid = i
        if edges:
            d.cell_offsets = d.cell_offsets.to(dtype)
            d.neighbors = torch.tensor([d.edge_index.shape[1]])  # edges per system
        data.append(d)
    return Batch.from_data_list(data)
