"""Benchmark structures: OC20-like PBC slabs with adsorbates (ASE), rotated by a generic
rotation, batched through fairchem's AtomsToGraphs without edges (the models build the
graph on the fly, ``otf_graph=True``), float32."""

from __future__ import annotations

import numpy as np
import torch

# a fixed generic rotation (the tests' GENERIC_ROTATION): keeps edges away from +-y, where the
# reference's Euler-angle Wigner-D is singular
GENERIC_EULER_XYZ = (0.3, 0.7, 1.1)

# slab builders: (metal, adsorbate) pairs used round-robin
SYSTEMS = [("Cu", "CO"), ("Pt", "OH"), ("Cu", "CH3"), ("Pt", "O")]


def slab(index: int = 0, size: tuple[int, int, int] = (4, 4, 4)):
    """An fcc(111) slab with an adsorbate, tags, fixed sub-surface atoms, rattled and rotated.

    ``size=(4, 4, 4)`` gives 64 metal atoms + the adsorbate (65..68 atoms).
    """
    from ase.build import add_adsorbate, fcc111, molecule
    from ase.constraints import FixAtoms
    from scipy.spatial.transform import Rotation

    metal, ads = SYSTEMS[index % len(SYSTEMS)]
    atoms = fcc111(metal, size=size, vacuum=7.0, periodic=True)
    tags = atoms.get_tags()  # ase: layer number from the top, 1 = top layer
    adsorbate = molecule(ads) if len(ads) > 1 else ads
    add_adsorbate(atoms, adsorbate, 1.8, "fcc")
    tags = np.concatenate([np.where(tags <= 2, 1, 0), np.full(len(atoms) - len(tags), 2)])
    atoms.set_tags(tags)
    atoms.set_constraint(FixAtoms(mask=tags == 0))
    atoms.rattle(0.05, seed=index)
    rot = Rotation.from_euler("xyz", GENERIC_EULER_XYZ).as_matrix()
    atoms.set_positions(atoms.get_positions() @ rot.T, apply_constraint=False)
    atoms.set_cell(atoms.get_cell()[:] @ rot.T, scale_atoms=False)
    atoms.wrap()
    return atoms


def make_batch(atoms_list, device: str = "cpu"):
    """PyG batch of float32 systems without edges (``otf_graph=True`` builds them)."""
    from fairchem.core.preprocessing import AtomsToGraphs
    from torch_geometric.data import Batch

    a2g = AtomsToGraphs(r_edges=False, r_fixed=True, r_pbc=True)
    data = []
    for i, atoms in enumerate(atoms_list):
        d = a2g.convert(atoms)
        d.pos = torch.tensor(atoms.get_positions(), dtype=torch.float32)
        d.cell = torch.tensor(atoms.get_cell()[:], dtype=torch.float32).view(1, 3, 3)
        d.tags = torch.tensor(atoms.get_tags(), dtype=torch.long)
        d.sid = i
        data.append(d)
    return Batch.from_data_list(data).to(device)


def slab_batch(num_systems: int = 2, size=(4, 4, 4), device: str = "cpu"):
    """``num_systems`` slabs of :func:`slab` (round-robin metals/adsorbates) in one batch."""
    return make_batch([slab(i, size) for i in range(num_systems)], device)


def count_edges(model, batch) -> int:
    """Edges of the graph ``model`` builds for ``batch``."""
    with torch.no_grad():
        return int(model.generate_graph(batch).edge_index.shape[1])
