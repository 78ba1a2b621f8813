"""Edge rotations: from edge vectors to the matrix that moves node coefficients into the
edge frame, with the l -> m reordering and the |m| <= mmax truncation folded in.

For every edge, ``forward`` returns ``W [E, K_M, K]`` (K: full l-major layout of all
resolutions, K_M: m-major truncated layout; see :mod:`escn_plugin.so3.layout`) with

    W[e, r, k] = D^{l}_{m_r, m_k}(R_e)   if coefficient r and k share resolution and l, else 0,

where R_e = ``edge_frame(edge_vec_e)``. Rotating in is ``W @ x`` ([E, K_M, C]); rotating
back is ``W^T @ y`` ([E, K, C]) since D is orthogonal. No permutation matrix, no per-l
loop at run time.

Backends (``rotation_backend`` in the model config):

* ``"polynomial"`` (default): :class:`~escn_plugin.so3.wigner.WignerD` evaluated only on the
  needed rows; exact, gimbal-lock free, differentiable for every edge direction.
* ``"euler"``: e3nn's Euler-angle Wigner-D (``D_from_matrix``) on the same frames, for
  comparison; like the reference it is ill-conditioned for edges along +-y.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from escn_plugin.backends import ROTATION_BACKENDS
from escn_plugin.so3.edge_frame import edge_frame
from escn_plugin.so3.layout import CoefficientLayout
from escn_plugin.so3.s2_grid import float64_default
from escn_plugin.so3.wigner import WignerD

__all__ = ["EdgeRotation", "EulerEdgeRotation"]


class _RotationBase(nn.Module):
    def __init__(self, layout: CoefficientLayout) -> None:
        super().__init__()
        self.layout = layout
        self.single_resolution = layout.num_resolutions == 1
        rows = layout.m_major
        cols = layout.full
        # columns of the full layout, as l-major indices of a single lmax block
        self.register_buffer("col_lm", layout.lm_index(cols), persistent=False)  # [K]
        same_res = layout.res_index(rows)[:, None] == layout.res_index(cols)[None, :]
        self.register_buffer("res_mask", same_res.to(torch.float64), persistent=False)

    def _to_full_columns(self, w: torch.Tensor) -> torch.Tensor:
        """[E, K_M, (lmax+1)^2] single-block columns -> [E, K_M, K] multi-resolution."""
        if self.single_resolution:
            return w
        return w[..., self.col_lm] * self.res_mask.to(w.dtype)

    def frames(self, edge_vec: torch.Tensor, roll: torch.Tensor | None = None) -> torch.Tensor:
        return edge_frame(edge_vec, roll)


@ROTATION_BACKENDS.register("polynomial")
class EdgeRotation(_RotationBase):
    """Default backend: Wigner-D rows from sampled spherical harmonics (no angles)."""

    def __init__(self, layout: CoefficientLayout) -> None:
        super().__init__(layout)
        self.wigner = WignerD(layout.lmax, rows=layout.lm_index(layout.m_major))

    def forward(self, edge_vec: torch.Tensor, roll: torch.Tensor | None = None) -> torch.Tensor:
        rot = self.frames(edge_vec, roll)  # [E, 3, 3]
        return self._to_full_columns(self.wigner(rot))  # [E, K_M, K]


@ROTATION_BACKENDS.register("euler")
class EulerEdgeRotation(_RotationBase):
    """e3nn's Euler-angle Wigner-D on our frames (slow; singular for edges along +-y)."""

    def __init__(self, layout: CoefficientLayout) -> None:
        super().__init__(layout)
        self.register_buffer("rows", layout.lm_index(layout.m_major), persistent=False)

    def forward(self, edge_vec: torch.Tensor, roll: torch.Tensor | None = None) -> torch.Tensor:
        rot = self.frames(edge_vec, roll)
        irreps = o3.Irreps([(1, (l, 1)) for l in range(self.layout.lmax + 1)])
        # e3nn builds its SO(3) generators in the default dtype: under a float32 default a
        # float64 D would only be good to ~1e-6
        with float64_default():
            d = irreps.D_from_matrix(rot).to(rot.dtype)  # [E, K, K] block-diagonal
        return self._to_full_columns(d[:, self.rows])
