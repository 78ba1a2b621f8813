"""Edge frames: a rotation per edge that sends the edge direction to +y.

Convention: for an edge vector r (fairchem's ``edge_distance_vec``), ``edge_frame(r)``
returns R with ``R @ (r / |r|) = +y``, orthonormal, det +1. Its rows are (u, r̂, w):
u = unit(r̂ x h), w = u x r̂, where the helper axis h is the coordinate axis least aligned
with r̂ (smallest |r̂_i|).

Why charts. No frame field is continuous on the whole sphere (hairy ball), so the roll of
the frame about r̂ jumps where the choice of h changes. Inside each chart the frame is a
smooth function of r and |r̂ x h| >= sqrt(2/3), so values and gradients are finite for
every direction, including edges exactly along or within 1e-7 of any axis (where the
Euler-angle construction of the reference has gimbal lock). eSCN's outputs are invariant to
the roll (exactly for the SO(2) convolution, up to the S2 grid for the non-linearity), so
the jumps do not show in roll-invariant quantities or in their gradients.

The frame is deterministic. A random roll about the edge axis (the reference's behaviour)
is available by passing the angles explicitly, so tests can fix them.
"""

from __future__ import annotations

import torch

__all__ = ["edge_frame", "roll_about_y"]


def roll_about_y(angle: torch.Tensor) -> torch.Tensor:
    """``[E, 3, 3]`` rotations about +y by ``angle [E]`` (they fix +y)."""
    c, s = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(angle), torch.ones_like(angle)
    return torch.stack(
        [
            torch.stack([c, zero, s], dim=-1),
            torch.stack([zero, one, zero], dim=-1),
            torch.stack([-s, zero, c], dim=-1),
        ],
        dim=-2,
    )


def edge_frame(edge_vec: torch.Tensor, roll: torch.Tensor | None = None) -> torch.Tensor:
    """Rotation ``R [E, 3, 3]`` with ``R @ unit(edge_vec) = +y``.

    Args:
        edge_vec: ``[E, 3]`` edge vectors, non-zero.
        roll: optional ``[E]`` angles; the frame is then rotated about the edge axis by them.
    """
    if edge_vec.dim() != 2 or edge_vec.shape[-1] != 3:
        raise ValueError(f"edge_vec must have shape [E, 3], got {tuple(edge_vec.shape)}")
    b = edge_vec / edge_vec.norm(dim=-1, keepdim=True)  # [E, 3] edge direction
    helper = torch.nn.functional.one_hot(b.detach().abs().argmin(dim=-1), 3).to(b.dtype)
    u = torch.linalg.cross(b, helper)  # |u| >= sqrt(2/3): never degenerate
    u = u / u.norm(dim=-1, keepdim=True)
    w = torch.linalg.cross(u, b)
    rot = torch.stack([u, b, w], dim=-2)  # rows (u, b, w): R b = +y
    if roll is not None:
        rot = roll_about_y(roll.to(rot.dtype)) @ rot
    return rot
