"""Real Wigner-D matrices straight from rotation matrices (no Euler angles).

Convention (e3nn's, used everywhere in this package): real spherical harmonics
``Y^l = e3nn.o3.spherical_harmonics(l, r)``, m = -l..l inside each degree, polar axis +y,
and ``D^l(R)`` is defined by

    Y^l(R r) = D^l(R) Y^l(r)        for every unit vector r.

Method. Fix N = 4 lmax + 4 unit vectors P = [p_1 .. p_N] (a Fibonacci lattice). For each
l, the matrix A_l = Y^l(P) of shape [2l+1, N] has full row rank, so with its right inverse
B_l = A_l^+ (precomputed once, float64):

    D^l(R) = Y^l(R P) B_l .

Y is a polynomial in the rotated points (``normalize=False``), so D is a polynomial in the
entries of R: no angles, no gimbal lock, finite gradients for every rotation, and the same
cost for every edge direction. All l are produced by one spherical-harmonics call and one
contraction; the per-l blocks are separated by a precomputed mask.

:func:`wigner_d` returns the block-diagonal matrix over l = 0..lmax; :class:`WignerD` is the
module that holds the constants as buffers and can also emit any subset of rows (for
example the m-major, |m| <= mmax rows that rotate an embedding into the edge frame).

:class:`WignerRows` is the fast path for eSCN's edge rotations: only the rows |m| <= mmax
of each block are needed, and row m of D^l is ``Y^l_m(R P) B_l``, so only the harmonics
with |m| <= mmax are evaluated (``Y^l_{+-m} ~ Q^m_l(y) Re/Im (z + i x)^m`` with the
associated-Legendre polynomials Q^m_l by their three-term recurrence), and each degree
is contracted with its own B_l: O(L M N) work per rotation instead of e3nn's all-m
harmonics and an all-column contraction.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3

from escn_plugin.common.default_dtype import cached_constant, constants

__all__ = [
    "MAX_LMAX",
    "RandomLayoutRotation",
    "WignerD",
    "WignerRows",
    "fibonacci_sphere",
    "wigner_d",
]

MAX_LMAX = 11


def fibonacci_sphere(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[n, 3]`` near-uniform unit vectors (golden-angle spiral), deterministic."""
    k = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = k * math.pi * (3.0 - math.sqrt(5.0))
    rho = torch.sqrt(1.0 - z * z)
    return torch.stack([rho * torch.cos(phi), rho * torch.sin(phi), z], dim=-1).to(dtype)


def _sampling_points(lmax: int) -> torch.Tensor:
    # 4 lmax + 4 points (the minimum is 2 lmax + 1) keep every A_l well conditioned:
    # condition number <= 5.4 for all l <= 11 (checked in the tests), so D is accurate to
    # a few ulps of the spherical harmonics themselves.
    return fibonacci_sphere(4 * lmax + 4)


@cached_constant
def _right_inverses(lmax: int, num_points: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Points P [N, 3] and the stacked right inverses B [N, K] (block l holds A_l^+);
    N = 4 lmax + 4 unless ``num_points`` is given."""
    points = _sampling_points(lmax) if num_points is None else fibonacci_sphere(num_points)
    sh = o3.spherical_harmonics(list(range(lmax + 1)), points, normalize=False)  # [N, K]
    blocks = [torch.linalg.pinv(sh[:, l * l : (l + 1) ** 2].T) for l in range(lmax + 1)]
    return points, torch.cat(blocks, dim=1)  # [N, 3], [N, K]


class WignerD(torch.nn.Module):
    """Real Wigner-D rows for rotations, with constants precomputed for ``lmax``.

    Args:
        lmax: maximum degree.
        rows: optional ``[R]`` long tensor of l-major indices (l^2 + l + m) of the rows to
            return; default all K = (lmax+1)^2 rows.

    ``forward(rot [..., 3, 3]) -> [..., R, K]`` with entry (r, j) = D^{l_r}_{m_r, m_j}(rot)
    when column j has the same degree as row r, else 0.
    """

    def __init__(self, lmax: int, rows: torch.Tensor | None = None) -> None:
        super().__init__()
        if not 0 <= lmax <= MAX_LMAX:
            raise ValueError(
                f"lmax must be in [0, {MAX_LMAX}] (e3nn's spherical harmonics stop at l = 11), "
                f"got {lmax}"
            )
        self.lmax = lmax
        num_coeff = (lmax + 1) ** 2
        degree = torch.cat([torch.full((2 * l + 1,), l) for l in range(lmax + 1)])
        rows = torch.arange(num_coeff) if rows is None else rows.long()
        points, right_inverse = _right_inverses(lmax)
        self.register_buffer("points", points, persistent=False)  # [N, 3]
        self.register_buffer("right_inverse", right_inverse, persistent=False)  # [N, K]
        self.register_buffer("rows", rows, persistent=False)  # [R]
        same_degree = degree[rows][:, None] == degree[None, :]
        self.register_buffer("mask", same_degree.to(torch.float64), persistent=False)  # [R, K]

    def forward(self, rot: torch.Tensor) -> torch.Tensor:
        dtype = rot.dtype
        rotated = torch.einsum("...ij,nj->...ni", rot, self.points.to(dtype))  # [..., N, 3]
        sh = o3.spherical_harmonics(
            list(range(self.lmax + 1)), rotated, normalize=False
        )  # [..., N, K]
        sh_rows = sh[..., self.rows]  # [..., N, R]
        out = torch.einsum("...nr,nk->...rk", sh_rows, self.right_inverse.to(dtype))
        return out * self.mask.to(dtype)  # [..., R, K]


def _legendre_trig_products(
    x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, rows: list[tuple[int, int]]
) -> list[torch.Tensor]:
    """Unnormalised real harmonics ``Q^{|m|}_l(y) * (Re | 1 | Im)(z + i x)^{|m|}`` for each
    (l, m) in ``rows`` (m > 0: real part, m < 0: imaginary part), on unit vectors.

    ``Q^m_l`` is d^m P_l / dy^m up to a constant (Q^m_m = 1), by the recurrence
    ``(l - m) Q^m_l = (2l - 1) y Q^m_{l-1} - (l + m - 1) Q^m_{l-2}``.
    """
    lmax = max(l for l, _ in rows)
    mmax = max(abs(m) for _, m in rows)
    legendre: dict[tuple[int, int], torch.Tensor] = {}
    for m in range(mmax + 1):
        legendre[(m, m)] = torch.ones_like(y)
        if m + 1 <= lmax:
            legendre[(m + 1, m)] = (2 * m + 1) * y
        for l in range(m + 2, lmax + 1):
            a, b = (2 * l - 1) / (l - m), (l + m - 1) / (l - m)
            legendre[(l, m)] = torch.add(
                y * legendre[(l - 1, m)] * a, legendre[(l - 2, m)], alpha=-b
            )
    real, imag = [torch.ones_like(y)], [torch.zeros_like(y)]
    for _ in range(mmax):  # (z + i x)^m, one complex product per order
        real, imag = real + [real[-1] * z - imag[-1] * x], imag + [imag[-1] * z + real[-1] * x]
    out = []
    for l, m in rows:
        q = legendre[(l, abs(m))]
        out.append(q if m == 0 else q * (real[m] if m > 0 else imag[-m]))
    return out


class WignerRows(torch.nn.Module):
    """Entries ``D^l_{m, m'}(rot)`` with |m| <= mmax only, each degree on its own.

    Args:
        lmax, mmax: maximum degree and order of the rows.
        entries: the (l, m, m') to return, in output order; default every entry with
            |m| <= min(l, mmax), ordered by l, m, m'.

    ``forward(rot [..., 3, 3]) -> [..., len(entries)]``, equal to the matching entries of
    :class:`WignerD` (same polynomial construction, same sampling points).
    """

    def __init__(
        self, lmax: int, mmax: int, entries: list[tuple[int, int, int]] | None = None
    ) -> None:
        super().__init__()
        if not 0 <= mmax <= lmax <= MAX_LMAX:
            raise ValueError(f"need 0 <= mmax <= lmax <= {MAX_LMAX}, got lmax={lmax}, mmax={mmax}")
        self.lmax, self.mmax = lmax, mmax
        # rows (l, m) of the blocks, and each row's harmonic normalised to e3nn's
        self.rows = [
            (l, m) for l in range(lmax + 1) for m in range(-min(l, mmax), min(l, mmax) + 1)
        ]
        if entries is None:
            entries = [(l, m, k) for l, m in self.rows for k in range(-l, l + 1)]
        row_of = {lm: j for j, lm in enumerate(self.rows)}
        width = 2 * lmax + 1
        for l, m, k in entries:
            if (l, m) not in row_of or abs(k) > l:
                raise ValueError(f"entry (l={l}, m={m}, m'={k}) is not in the rows |m| <= {mmax}")
        gather = [row_of[(l, m)] * width + k + l for l, m, k in entries]
        # 2 lmax + 4 points (>= 2l + 1 for every l) at half the cost of 4 lmax + 4; float32
        # rows stay within ~3e-6 (L = 8) / ~1e-5 (L = 11) of float64 (checked in the tests)
        with constants():  # CPU, float64: whatever the caller's device (meta) and dtype
            points, right_inverse = _right_inverses(lmax, 2 * lmax + 4)
            check = fibonacci_sphere(97)
            ours = _legendre_trig_products(check[:, 0], check[:, 1], check[:, 2], self.rows)
            e3nn_sh = o3.spherical_harmonics(list(range(lmax + 1)), check, normalize=False)
            scale = []
            for (l, m), f in zip(self.rows, ours):
                target = e3nn_sh[:, l * l + l + m]
                s = (f * target).sum() / (f * f).sum()
                if (s * f - target).abs().max() > 1e-9 * target.abs().max():
                    raise RuntimeError(f"harmonic (l={l}, m={m}) is not proportional to e3nn's")
                scale.append(s)
            # B_l per row, zero-padded to 2 lmax + 1 columns: [J, N, 2 lmax + 1]
            blocks = torch.zeros(len(self.rows), points.shape[0], width, dtype=torch.float64)
            for j, (l, _) in enumerate(self.rows):  # each row's normalisation folded into B_l
                blocks[j, :, : 2 * l + 1] = scale[j] * right_inverse[:, l * l : (l + 1) ** 2]
        self.register_buffer("points", points, persistent=False)  # [N, 3]
        self.register_buffer("blocks", blocks, persistent=False)  # [J, N, 2L+1]
        self.register_buffer("gather", torch.tensor(gather), persistent=False)  # [entries]

    def forward(self, rot: torch.Tensor) -> torch.Tensor:
        batch = rot.shape[:-2]
        rot = rot.reshape(-1, 3, 3)
        dtype = rot.dtype
        rotated = torch.matmul(rot, self.points.to(dtype).T)  # [E, 3, N]: R p_n
        x, y, z = rotated.unbind(1)  # [E, N] each
        harmonics = torch.stack(_legendre_trig_products(x, y, z, self.rows))  # [J, E, N]
        rows = torch.bmm(harmonics, self.blocks.to(dtype))  # [J, E, 2L+1]: rows of D^l
        rows = rows.transpose(0, 1).flatten(1)  # [E, J (2L+1)]
        return rows.index_select(1, self.gather).view(*batch, self.gather.shape[0])


@cached_constant
def _wigner_module(lmax: int) -> WignerD:
    return WignerD(lmax)


def wigner_d(rot: torch.Tensor, lmax: int) -> torch.Tensor:
    """Block-diagonal real Wigner-D ``[..., K, K]``, K = (lmax+1)^2, with Y(R r) = D(R) Y(r).

    Batched over leading dims, float32 or float64, differentiable everywhere. Computed with
    the process-wide CPU constants (the result goes to ``rot``'s device); modules on the
    training path own a :class:`WignerD` instead, whose buffers follow the model.
    """
    if rot.shape[-2:] != (3, 3):
        raise ValueError(f"rot must have shape [..., 3, 3], got {tuple(rot.shape)}")
    return _wigner_module(lmax)(rot.cpu()).to(rot.device)


def _layout_blocks(wigner: torch.Tensor, lmax_list: list[int]) -> torch.Tensor:
    """``D(R) [(L+1)^2, (L+1)^2]`` (L = max lmax) -> ``[K, K]`` for coefficients of several
    resolutions one after the other (K = sum_i (lmax_i+1)^2): block-diagonal, block i the
    leading ``(lmax_i+1)^2`` block of D(R), so ``D @ x`` rotates every resolution's sphere
    function."""
    return torch.block_diag(*[wigner[: (lmax + 1) ** 2, : (lmax + 1) ** 2] for lmax in lmax_list])


class RandomLayoutRotation(torch.nn.Module):
    """A uniformly random rotation per call and its layout Wigner-D (block-diagonal over the
    resolutions of ``lmax_list``), both made on the device of the module's buffers, i.e. the
    model's (no host-to-device copy; the rotation comes from that device's global
    generator, so a seeded run is reproducible on it).

    ``forward(like [N, K, C]) -> (Q [3, 3] float64, D(Q) [K, K] in like's dtype)``.
    """

    def __init__(self, lmax_list: list[int]) -> None:
        super().__init__()
        self.lmax_list = list(lmax_list)
        self.wigner = WignerD(max(self.lmax_list))  # constants as buffers: move with the model

    def forward(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rot = o3.rand_matrix(dtype=torch.float64, device=self.wigner.points.device)  # [3, 3]
        wigner = _layout_blocks(self.wigner(rot), self.lmax_list)  # [K, K]
        return rot, wigner.to(like.dtype)


def rotate_coefficients(
    wigner: torch.Tensor, x: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    """``D x`` (``D^T x`` with ``inverse``) for ``wigner [K, K]`` (:class:`RandomLayoutRotation`)
    and ``x [N, K, C]``: every node's sphere functions turned by one rotation."""
    return torch.einsum("kj,nkc->njc" if inverse else "jk,nkc->njc", wigner, x)
