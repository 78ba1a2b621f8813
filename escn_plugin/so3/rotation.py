"""Edge rotations: from edge vectors to the block-sparse rows that move node coefficients
into the edge frame, with the l -> m reordering and the |m| <= mmax truncation folded in.

For every edge the rotation into the edge frame is ``W [K_M, K]`` (K: full l-major layout
of all resolutions, K_M: m-major truncated layout; see :mod:`escn_plugin.so3.layout`) with

    W[e, r, k] = D^{l}_{m_r, m_k}(R_e)   if coefficient r and k share resolution and l, else 0,

where R_e = ``edge_frame(edge_vec_e)``. ``forward`` returns only the non-zero entries,
``[E, nnz]`` in the storage order of :class:`~escn_plugin.so3.layout.WignerBlockLayout`
(235 of 1421 entries at L = 6, M = 2); :meth:`to_dense` expands them to W (oracles, tests).
Rotating in is ``W @ x``; rotating back is ``W^T @ y`` since D is orthogonal.

Backends (``rotation_backend`` in the model config):

* ``"polynomial"`` (default): :class:`~escn_plugin.so3.wigner.WignerRows`, only the
  |m| <= mmax rows, degree by degree; exact, gimbal-lock free, differentiable (twice and
  more) for every edge direction.
* ``"euler"``: e3nn's Euler-angle Wigner-D (``D_from_matrix``) on the same frames, for
  comparison; like the reference it is ill-conditioned for edges along +-y.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from escn_plugin.backends import ROTATION_BACKENDS
from escn_plugin.so3.edge_frame import edge_frame
from escn_plugin.so3.layout import CoefficientLayout, WignerBlockLayout
from escn_plugin.so3.s2_grid import float64_default
from escn_plugin.so3.wigner import WignerRows

__all__ = ["EdgeRotation", "EulerEdgeRotation"]


class _RotationBase(nn.Module):
    def __init__(self, layout: CoefficientLayout) -> None:
        super().__init__()
        self.layout = layout
        self.blocks = WignerBlockLayout(layout)
        rows, cols = layout.m_major, layout.full
        # each stored entry as (l, m_row, m_col), and its position in the dense W
        self.entry_lmm = [(rows[r].l, rows[r].m, cols[k].m) for r, k in self.blocks.entries]
        dense = [r * layout.num_full + k for r, k in self.blocks.entries]
        self.register_buffer("dense_index", torch.tensor(dense), persistent=False)  # [nnz]

    def frames(self, edge_vec: torch.Tensor, roll: torch.Tensor | None = None) -> torch.Tensor:
        return edge_frame(edge_vec, roll)

    def to_dense(self, values: torch.Tensor) -> torch.Tensor:
        """Block-sparse entries ``[E, nnz]`` -> the dense rotation ``W [E, K_M, K]``."""
        num_edges = values.shape[0]
        size = self.layout.num_m_major * self.layout.num_full
        dense = values.new_zeros(num_edges, size).index_copy(1, self.dense_index, values)
        return dense.view(num_edges, self.layout.num_m_major, self.layout.num_full)


@ROTATION_BACKENDS.register("polynomial")
class EdgeRotation(_RotationBase):
    """Default backend: Wigner-D rows |m| <= mmax from sampled harmonics (no angles).

    ``forward(edge_vec [E, 3], roll [E] | None) -> [E, nnz]`` block-sparse entries of W.
    """

    def __init__(self, layout: CoefficientLayout) -> None:
        super().__init__(layout)
        self.wigner = WignerRows(layout.lmax, layout.mmax, self.entry_lmm)

    def forward(self, edge_vec: torch.Tensor, roll: torch.Tensor | None = None) -> torch.Tensor:
        return self.wigner(self.frames(edge_vec, roll))  # [E, nnz]


@ROTATION_BACKENDS.register("euler")
class EulerEdgeRotation(_RotationBase):
    """e3nn's Euler-angle Wigner-D on our frames (slow; singular for edges along +-y)."""

    def __init__(self, layout: CoefficientLayout) -> None:
        super().__init__(layout)
        width = (layout.lmax + 1) ** 2
        flat = [(l * l + l + m) * width + l * l + l + k for l, m, k in self.entry_lmm]
        self.register_buffer("block_index", torch.tensor(flat), persistent=False)  # [nnz]

    def forward(self, edge_vec: torch.Tensor, roll: torch.Tensor | None = None) -> torch.Tensor:
        rot = self.frames(edge_vec, roll)
        irreps = o3.Irreps([(1, (l, 1)) for l in range(self.layout.lmax + 1)])
        # e3nn builds its SO(3) generators in the default dtype: under a float32 default a
        # float64 D would only be good to ~1e-6
        with float64_default():
            d = irreps.D_from_matrix(rot).to(rot.dtype)  # [E, K, K] block-diagonal
        return d.flatten(1).index_select(1, self.block_index)  # [E, nnz]
