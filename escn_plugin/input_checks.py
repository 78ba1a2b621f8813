"""Checks on a batch that turn silent NaNs or deep shape errors into clear messages."""

from __future__ import annotations

import torch

from escn_plugin.graph import periodic_axes

__all__ = ["check_atoms", "check_cells", "check_edges", "check_overlaps"]

MIN_DISTANCE = 1e-4  # Angstrom
#: beyond this distance from the origin float32 resolves positions to worse than 1e-3 A
MAX_FLOAT32_COORDINATE = 1e4  # Angstrom
#: a cell whose volume is below this fraction of the product of its vector lengths
MIN_RELATIVE_VOLUME = 1e-6


def _system_of(data, atom: int) -> int:
    batch = getattr(data, "batch", None)
    return int(batch[atom]) if batch is not None else 0


def check_atoms(data, max_num_elements: int) -> None:
    """Atomic numbers in 1..max_num_elements-1, finite positions (within float32's
    resolution when stored in float32), at least one atom."""
    pos, numbers = data.pos, data.atomic_numbers
    if pos.shape[0] == 0:
        raise ValueError("empty batch: the input holds no atoms (check the dataset/sampler)")
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape [num_atoms, 3], got {tuple(pos.shape)}")
    if numbers.shape[0] != pos.shape[0]:
        raise ValueError(
            f"atomic_numbers has {numbers.shape[0]} entries but there are {pos.shape[0]} atoms"
        )
    bad = (numbers < 1) | (numbers >= max_num_elements)
    if bad.any():
        atom = int(bad.nonzero()[0])
        z = int(numbers[atom])
        fix = (
            "0 and negative numbers are no element: check the structure's numbers"
            if z < 1
            else "raise max_num_elements in the model config"
        )
        raise ValueError(
            f"atomic number {z} of atom {atom} (system {_system_of(data, atom)}) is outside "
            f"1..{max_num_elements - 1} (max_num_elements={max_num_elements}); {fix}"
        )
    finite = torch.isfinite(pos).all(dim=1)
    if not finite.all():
        atom = int((~finite).nonzero()[0])
        raise ValueError(
            f"position of atom {atom} (system {_system_of(data, atom)}) is not finite: "
            f"{pos[atom].tolist()}"
        )
    if pos.dtype in (torch.float32, torch.float16, torch.bfloat16):
        far = pos.abs().amax(dim=1) > MAX_FLOAT32_COORDINATE
        if far.any():
            atom = int(far.nonzero()[0])
            raise ValueError(
                f"atom {atom} (system {_system_of(data, atom)}) is at {pos[atom].tolist()}, "
                f"beyond {MAX_FLOAT32_COORDINATE:g} A where {pos.dtype} positions are "
                "rounded by more than 1e-3 A: wrap the structure into its cell "
                "(ase: atoms.wrap()) or centre it before converting, or pass float64 positions"
            )


def check_cells(data, use_pbc: bool) -> None:
    """Finite cells, and a non-degenerate one (three independent lattice vectors) for
    every system that is periodic along any axis."""
    cell = getattr(data, "cell", None)
    periodic = periodic_axes(data, use_pbc).any(dim=1)  # [B]
    if cell is None:
        if periodic.any():
            raise ValueError("use_pbc is True but the input holds no cell")
        return
    cell = cell.detach().double().view(-1, 3, 3)  # [B, 3, 3]
    finite = torch.isfinite(cell).flatten(1).all(dim=1)  # [B]
    volume = torch.linalg.det(torch.where(finite[:, None, None], cell, 0.0)).abs()  # [B]
    scale = cell.norm(dim=2).prod(dim=1)  # [B]
    bad = periodic & ~(finite & (volume > MIN_RELATIVE_VOLUME * scale) & (scale > 0))
    if bad.any():
        system = int(bad.nonzero()[0])
        lattice = cell[system].tolist()
        if not finite[system]:
            raise ValueError(f"cell of system {system} is not finite: {lattice}")
        raise ValueError(
            f"cell of system {system} is degenerate (volume {float(volume[system]):.3g} "
            f"A^3, lattice vectors {lattice}) but the system is periodic: give three "
            "independent lattice vectors (add vacuum along non-periodic directions), or "
            "mark it non-periodic (pbc False in ASE, use_pbc: False in the model)"
        )


def check_edges(data, edge_index: torch.Tensor, edge_distance: torch.Tensor) -> None:
    """No two atoms (or periodic images) closer than ``MIN_DISTANCE``."""
    if edge_distance.numel() == 0:
        return
    too_close = edge_distance < MIN_DISTANCE
    if too_close.any():
        e = int(too_close.nonzero()[0])
        s, t = int(edge_index[0, e]), int(edge_index[1, e])
        raise ValueError(
            f"atoms {s} and {t} (system {_system_of(data, t)}) are "
            f"{float(edge_distance[e]):.2e} A apart (< {MIN_DISTANCE} A): overlapping atoms "
            "or periodic images; check the structure and its cell"
        )


def check_overlaps(data, use_pbc: bool) -> None:
    """No two atoms of a system closer than ``MIN_DISTANCE``, periodic images included.

    Needed besides :func:`check_edges` because fairchem's on-the-fly PBC graph silently
    drops pairs closer than 0.01 A. Minimum image in fractional coordinates, one system at
    a time (O(n^2) per system: cheap next to the model).
    """
    pos = data.pos.detach()
    counts = data.natoms.tolist() if hasattr(data, "natoms") else [pos.shape[0]]
    periodic = periodic_axes(data, use_pbc)  # [B, 3]
    start = 0
    for system, n in enumerate(counts):
        p = pos[start : start + n].double()  # [n, 3]
        if periodic[system].any():
            cell = data.cell[system].detach().double()  # rows are lattice vectors
            frac = torch.linalg.solve(cell.T, p.T).T  # [n, 3] fractional coordinates
            diff = frac[:, None, :] - frac[None, :, :]
            image = torch.round(diff) * periodic[system]  # minimum image on periodic axes
            diff = (diff - image) @ cell  # [n, n, 3]
        else:
            diff = p[:, None, :] - p[None, :, :]
        dist = diff.norm(dim=-1) + torch.eye(n, dtype=p.dtype) * 1e9
        if n > 1 and dist.min() < MIN_DISTANCE:
            i, j = divmod(int(dist.argmin()), n)
            raise ValueError(
                f"atoms {start + i} and {start + j} (system {system}) are "
                f"{float(dist.min()):.2e} A "
                f"apart (< {MIN_DISTANCE} A, periodic images included): overlapping atoms; "
                "check the structure and its cell"
            )
        start += n
