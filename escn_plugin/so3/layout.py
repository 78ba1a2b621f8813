"""Coefficient layouts: the one place that knows where each (resolution, l, m) lives.

A node embedding holds one block of real spherical-harmonic coefficients per resolution
(``lmax_list[i]``), each block in **l-major** order (e3nn's order, m = -l..l within l)::

    full l-major, one resolution with L = 2 (K = (L+1)^2 = 9):
        index  0 | 1   2   3 | 4   5   6   7   8
        l      0 | 1   1   1 | 2   2   2   2   2
        m      0 |-1   0  +1 |-2  -1   0  +1  +2

    several resolutions: [ block of res 0 | block of res 1 | ... ], channels C each.

In the edge frame only |m| <= mmax_list[i] is kept, and the SO(2) convolution wants the
coefficients grouped by m (**m-major**): all m = 0 coefficients (every resolution, l
ascending), then the +1 group, the -1 group, the +2 group, the -2 group, ...::

    m-major, L = 2, M = 1 (K_M = 7):
        [ (0,0) (1,0) (2,0) | (1,+1) (2,+1) | (1,-1) (2,-1) ]
          m = 0, size 3       +1, size 2      -1, size 2

This matches the reference eSCN's reduced ordering, so learned weights are interchangeable.
Everything here is plain Python computed once per model; the tensors returned are index
maps, used to build buffers (Wigner-D rows, grid matrices), never dense permutations.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

__all__ = ["Coefficient", "CoefficientLayout"]


@dataclass(frozen=True)
class Coefficient:
    """One real spherical-harmonic coefficient: resolution, degree l and order m."""

    res: int
    l: int
    m: int


class CoefficientLayout:
    """Index maps between the full l-major layout and the truncated m-major layout.

    Args:
        lmax_list: maximum degree per resolution.
        mmax_list: maximum order kept in the edge frame, per resolution (<= lmax).
    """

    def __init__(self, lmax_list: list[int], mmax_list: list[int]) -> None:
        lmax_list, mmax_list = [int(v) for v in lmax_list], [int(v) for v in mmax_list]
        if len(lmax_list) == 0:
            raise ValueError("lmax_list must name at least one resolution")
        if len(lmax_list) != len(mmax_list):
            raise ValueError(
                f"lmax_list {lmax_list} and mmax_list {mmax_list} must have the same length "
                "(one entry per resolution)"
            )
        for lmax, mmax in zip(lmax_list, mmax_list):
            if lmax < 0 or mmax < 0:
                raise ValueError(f"lmax/mmax must be >= 0, got lmax={lmax}, mmax={mmax}")
            if mmax > lmax:
                raise ValueError(f"mmax ({mmax}) must not exceed lmax ({lmax}) in mmax_list")
        self.lmax_list = lmax_list
        self.mmax_list = mmax_list
        self.num_resolutions = len(lmax_list)
        self.lmax = max(lmax_list)
        self.mmax = max(mmax_list)

    # -- full l-major layout -------------------------------------------------------------
    @cached_property
    def full(self) -> list[Coefficient]:
        """Coefficients of the node embedding, in storage order."""
        return [
            Coefficient(i, l, m)
            for i, lmax in enumerate(self.lmax_list)
            for l in range(lmax + 1)
            for m in range(-l, l + 1)
        ]

    @property
    def num_full(self) -> int:
        return len(self.full)

    def res_slice(self, res: int) -> slice:
        """Slice of resolution ``res`` inside the full layout."""
        start = sum((lmax + 1) ** 2 for lmax in self.lmax_list[:res])
        return slice(start, start + (self.lmax_list[res] + 1) ** 2)

    # -- truncated m-major layout --------------------------------------------------------
    @cached_property
    def m_major(self) -> list[Coefficient]:
        """Coefficients kept in the edge frame (|m| <= mmax), grouped by m."""
        out: list[Coefficient] = []
        for m in range(self.mmax + 1):
            for sign in (1, -1) if m > 0 else (1,):
                out += [
                    Coefficient(i, l, sign * m)
                    for i, (lmax, mmax) in enumerate(zip(self.lmax_list, self.mmax_list))
                    if m <= mmax
                    for l in range(m, lmax + 1)
                ]
        return out

    @property
    def num_m_major(self) -> int:
        return len(self.m_major)

    @cached_property
    def m_size(self) -> list[int]:
        """Number of +m coefficients (= number of -m ones) for m = 0..mmax."""
        return [sum(1 for c in self.m_major if c.m == m) for m in range(self.mmax + 1)]

    def m_slices(self, m: int) -> tuple[slice, slice | None]:
        """Slices of the +m and -m groups in the m-major layout (None for -0)."""
        start = self.m_size[0] + 2 * sum(self.m_size[1:m])
        if m == 0:
            return slice(0, self.m_size[0]), None
        n = self.m_size[m]
        return slice(start, start + n), slice(start + n, start + 2 * n)

    # -- index maps ----------------------------------------------------------------------
    def full_index(self, c: Coefficient) -> int:
        """Position of coefficient ``c`` in the full l-major layout."""
        return self.res_slice(c.res).start + c.l * c.l + c.l + c.m

    @cached_property
    def m_major_to_full(self) -> torch.Tensor:
        """``[K_M]`` long: full-layout index of each m-major coefficient (a gather map)."""
        return torch.tensor([self.full_index(c) for c in self.m_major], dtype=torch.long)

    def lm_index(self, coeffs: list[Coefficient]) -> torch.Tensor:
        """Index l^2 + l + m of each coefficient in a single-resolution l-major block."""
        return torch.tensor([c.l * c.l + c.l + c.m for c in coeffs], dtype=torch.long)

    def res_index(self, coeffs: list[Coefficient]) -> torch.Tensor:
        return torch.tensor([c.res for c in coeffs], dtype=torch.long)

    def degree_index(self, coeffs: list[Coefficient]) -> torch.Tensor:
        return torch.tensor([c.l for c in coeffs], dtype=torch.long)

    def __repr__(self) -> str:
        return (
            f"CoefficientLayout(lmax_list={self.lmax_list}, mmax_list={self.mmax_list}, "
            f"K={self.num_full}, K_M={self.num_m_major})"
        )
