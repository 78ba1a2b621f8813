"""Checks on a batch that turn silent NaNs or deep shape errors into clear messages."""

from __future__ import annotations

import torch

__all__ = ["check_atoms", "check_edges"]

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
