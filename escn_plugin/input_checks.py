"""Checks on a batch that turn silent NaNs or deep shape errors into clear messages."""

from __future__ import annotations

import torch

__all__ = ["check_atoms", "check_edges", "check_overlaps"]

MIN_DISTANCE = 1e-4  # Angstrom


def _system_of(data, atom: int) -> int:
    batch = getattr(data, "batch", None)
    return int(batch[atom]) if batch is not None else 0


def check_atoms(data, max_num_elements: int) -> None:
    """Atomic numbers in range, finite positions, at least one atom."""
    pos, numbers = data.pos, data.atomic_numbers
    if pos.shape[0] == 0:
        raise ValueError("empty batch: the input holds no atoms (check the dataset/sampler)")
    if pos.dim() != 2 or pos.shape[1] != 3:
        raise ValueError(f"positions must have shape [num_atoms, 3], got {tuple(pos.shape)}")
    if numbers.shape[0] != pos.shape[0]:
        raise ValueError(
            f"atomic_numbers has {numbers.shape[0]} entries but there are {pos.shape[0]} atoms"
        )
    bad = (numbers < 0) | (numbers >= max_num_elements)
    if bad.any():
        atom = int(bad.nonzero()[0])
        raise ValueError(
            f"atomic number {int(numbers[atom])} of atom {atom} (system "
            f"{_system_of(data, atom)}) is outside [0, max_num_elements={max_num_elements}); "
            "raise max_num_elements in the model config"
        )
    finite = torch.isfinite(pos).all(dim=1)
    if not finite.all():
        atom = int((~finite).nonzero()[0])
        raise ValueError(
            f"position of atom {atom} (system {_system_of(data, atom)}) is not finite: "
            f"{pos[atom].tolist()}"
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
    start = 0
    for system, n in enumerate(counts):
        p = pos[start : start + n].double()  # [n, 3]
        if use_pbc and getattr(data, "cell", None) is not None:
            cell = data.cell[system].detach().double()  # rows are lattice vectors
            frac = torch.linalg.solve(cell.T, p.T).T  # [n, 3] fractional coordinates
            diff = frac[:, None, :] - frac[None, :, :]
            diff = (diff - torch.round(diff)) @ cell  # minimum image, [n, n, 3]
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
