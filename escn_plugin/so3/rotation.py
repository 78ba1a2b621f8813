"""The edge rotation, all of it: where its non-zero entries live, how they are built from
edge vectors, and rotating node coefficients into the edge frame and back.

The l -> m reordering and the |m| <= mmax truncation are folded into the rotation rows.

For every edge the rotation into the edge frame is ``W [K_M, K]`` (K: full l-major layout
of all resolutions, K_M: m-major truncated layout; see :mod:`escn_plugin.so3.layout`) with

    W[e, r, k] = D^{l}_{m_r, m_k}(R_e)   if coefficient r and k share resolution and l, else 0,

where R_e = ``edge_frame(edge_vec_e)``. ``forward`` returns only the non-zero entries,
``[E, nnz]`` in the storage order of :class:`~escn_plugin.so3.layout.WignerBlockLayout`
(235 of 1421 entries at L = 6, M = 2); :meth:`to_dense` expands them to W (oracles, tests).
Rotating in is ``W @ x`` (:func:`rotate_in`; the model's factored SO(2) blocks apply
their input maps per node first and use the same rows, see :mod:`escn_plugin.so2.so2_conv`);
rotating back is ``W^T @ y`` since D is orthogonal, summed over each node's edges
(:class:`RotateBackSum`).

Backends (``rotation_backend`` in the model config):

* ``"polynomial"`` (default): :class:`~escn_plugin.so3.wigner.WignerRows`, only the
  |m| <= mmax rows, degree by degree; exact, gimbal-lock free, differentiable (twice and
  more) for every edge direction.
* ``"euler"``: e3nn's Euler-angle Wigner-D (``D_from_matrix``) on the same frames, for
  comparison; like the reference it is ill-conditioned for edges along +-y.
"""

from __future__ import annotations

from functools import cached_property

import torch
from e3nn import o3
from torch import nn

from escn_plugin.common.default_dtype import float64_default
from escn_plugin.common.edge_groups import NodeGroups, pad
from escn_plugin.common.implementations import ROTATION_BACKENDS
from escn_plugin.so3.edge_frame import edge_frame
from escn_plugin.so3.layout import Coefficient, CoefficientLayout
from escn_plugin.so3.wigner import WignerRows

__all__ = [
    "EdgeRotation",
    "EulerEdgeRotation",
    "RotateBackSum",
    "WignerBlockLayout",
    "rotate_in",
    "to_dense",
]


class WignerBlockLayout:
    """Where the non-zero Wigner-D entries of the edge rotation live (block-sparse rows).

    The edge rotation W [K_M, K] (:mod:`escn_plugin.so3.rotation`) is non-zero only where
    row r = (res, l, m) and column k = (res, l, m') share resolution and degree. Those
    entries, ``D^l_{m, m'}``, are stored compactly as ``[E, nnz]`` in **row order**: the
    m-major rows one after the other, each followed by its 2l+1 columns (m' ascending).
    So the rows of one m-group (+m then -m) are one contiguous slice, which is what the
    factored SO(2) input maps read, and :attr:`degree_blocks` regroups the entries per
    (res, l) block for rotating back.

    At L = 6, M = 2: nnz = 235, against K_M * K = 29 * 49 = 1421 dense entries.
    """

    def __init__(self, layout: CoefficientLayout) -> None:
        self.layout = layout

    @cached_property
    def entries(self) -> list[tuple[int, int]]:
        """(m-major row, full-layout column) of every stored entry, in storage order."""
        out = []
        for r, c in enumerate(self.layout.m_major):
            start = self.layout.full_index(Coefficient(c.res, c.l, -c.l))
            out += [(r, start + j) for j in range(2 * c.l + 1)]
        return out

    @property
    def nnz(self) -> int:
        return len(self.entries)

    def group(self, m: int) -> tuple[int, int, list[int], list[int]]:
        """Storage of order m's rows: ``(offset, rows, columns, position)``.

        Entries ``[offset, offset + rows * len(columns))`` hold the +m rows (then the -m
        rows, rows = 2; rows = 1 for m = 0), each row group as one vector over
        ``columns`` (full-layout indices, the rows' blocks side by side); ``position[j]``
        is the index, within order m's degrees (the SO(2) input map's degree axis), of
        the degree that column j belongs to.
        """
        layout = self.layout
        plus, _ = layout.m_slices(m)
        offset = sum(2 * layout.m_major[r].l + 1 for r in range(plus.start))
        columns, position = [], []
        for g, r in enumerate(range(plus.start, plus.stop)):
            c = layout.m_major[r]
            start = layout.full_index(Coefficient(c.res, c.l, -c.l))
            columns += list(range(start, start + 2 * c.l + 1))
            position += [g] * (2 * c.l + 1)
        return offset, 1 if m == 0 else 2, columns, position

    @cached_property
    def degree_blocks(self) -> list[tuple[int, int, list[int], list[int]]]:
        """Per (res, l) block, in full-layout order: ``(res, l, rows, entries)``.

        ``rows``: m-major indices of the block's rows (|m| <= min(l, mmax_res), m
        ascending); ``entries``: storage indices of the block's entries, row by row, so
        ``values[:, entries].view(E, len(rows), 2l+1)`` is the block D^l[rows, :].
        """
        index = {(c.res, c.l, c.m): r for r, c in enumerate(self.layout.m_major)}
        row_start, start = [], 0
        for c in self.layout.m_major:
            row_start.append(start)
            start += 2 * c.l + 1
        out = []
        for res, lmax in enumerate(self.layout.lmax_list):
            mmax = self.layout.mmax_list[res]
            for l in range(lmax + 1):
                rows = [index[(res, l, m)] for m in range(-min(l, mmax), min(l, mmax) + 1)]
                entries = [row_start[r] + j for r in rows for j in range(2 * l + 1)]
                out.append((res, l, rows, entries))
        return out


def dense_index(layout: CoefficientLayout) -> torch.Tensor:
    """``[nnz]``: the position of each stored entry in the flattened dense ``W [K_M * K]``."""
    entries = WignerBlockLayout(layout).entries
    return torch.tensor([r * layout.num_full + k for r, k in entries])


def to_dense(
    values: torch.Tensor, layout: CoefficientLayout, index: torch.Tensor | None = None
) -> torch.Tensor:
    """Block-sparse entries ``[E, nnz]`` -> the dense rotation ``W [E, K_M, K]``
    (``index``: :func:`dense_index`, built if not given)."""
    index = dense_index(layout).to(values.device) if index is None else index
    num_edges, size = values.shape[0], layout.num_m_major * layout.num_full
    dense = values.new_zeros(num_edges, size).index_copy(1, index, values)
    return dense.view(num_edges, layout.num_m_major, layout.num_full)


def rotate_in(
    values: torch.Tensor,
    x: torch.Tensor,
    groups: NodeGroups,
    layout: CoefficientLayout,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """``W_e x[n_e]``: node coefficients ``x [N, K, C]`` seen from each edge's node
    ``groups.index``, in the edge frame, ``[E, K_M, C]`` (edge by edge: oracles, tests)."""
    return torch.bmm(to_dense(values, layout, index), x[groups.index])


class _RotationBase(nn.Module):
    def __init__(self, layout: CoefficientLayout) -> None:
        super().__init__()
        self.layout = layout
        self.blocks = WignerBlockLayout(layout)
        rows, cols = layout.m_major, layout.full
        # each stored entry as (l, m_row, m_col), and its position in the dense W
        self.entry_lmm = [(rows[r].l, rows[r].m, cols[k].m) for r, k in self.blocks.entries]
        self.register_buffer("dense_index", dense_index(layout), persistent=False)  # [nnz]

    def frames(self, edge_vec: torch.Tensor, roll: torch.Tensor | None = None) -> torch.Tensor:
        return edge_frame(edge_vec, roll)

    def to_dense(self, values: torch.Tensor) -> torch.Tensor:
        """Block-sparse entries ``[E, nnz]`` -> the dense rotation ``W [E, K_M, K]``."""
        return to_dense(values, self.layout, self.dense_index)


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


class _TransposedBmm(torch.autograd.Function):
    """``bmm(d^T, y)`` that keeps y for the backward only when d needs a gradient.

    torch's bmm always saves both operands; here y ([N, W r_l, C], the messages) is only
    needed for d's gradient (the rotation rows require grad only when forces are taken
    as -dE/dpos). The backward is made of bmm, so it is differentiable again.
    """

    @staticmethod
    def forward(ctx, d, y):  # noqa: ANN001, ANN205
        # autocast does not reach inside a Function: compute in the wider of the two dtypes
        dtype = torch.promote_types(d.dtype, y.dtype)
        d, y = d.to(dtype), y.to(dtype)
        ctx.save_for_backward(d, y if ctx.needs_input_grad[0] else None)
        return torch.bmm(d.transpose(1, 2), y)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        d, y = ctx.saved_tensors
        grad = grad.to(d.dtype)
        grad_d = torch.bmm(y, grad.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_y = torch.bmm(d, grad) if ctx.needs_input_grad[1] else None
        return grad_d, grad_y


class RotateBackSum(nn.Module):
    """``message[n] = sum over the edges e of node n of W_e^T y_e``, degree by degree.

    ``y [E, K_M, C]`` must hold its rows in :attr:`rows` order (the m-major rows regrouped
    per (res, l) block); each block D^l[rows_l, :] of W acts on its own rows:
    ``message_l[n] = sum_e D^l_e[rows_l]^T y_e[rows_l]``, a bmm over nodes of
    [2l+1, W r_l] x [W r_l, C]. Non-zero entries only (235 of 1421 at L6-M2).
    """

    def __init__(self, layout: CoefficientLayout) -> None:
        super().__init__()
        blocks = WignerBlockLayout(layout).degree_blocks
        rows = [r for _, _, block_rows, _ in blocks for r in block_rows]
        entries = [i for _, _, _, block_entries in blocks for i in block_entries]
        self.block_shapes = [(len(block_rows), 2 * l + 1) for _, l, block_rows, _ in blocks]
        self.register_buffer("rows", torch.tensor(rows), persistent=False)  # [K_M]
        self.register_buffer("entries", torch.tensor(entries), persistent=False)  # [nnz]

    def forward(self, wigner: torch.Tensor, y: torch.Tensor, groups: NodeGroups) -> torch.Tensor:
        """``wigner [E, nnz]``, ``y [E, K_M, C]`` (rows in :attr:`rows` order) -> ``[N, K, C]``."""
        num_nodes, width = groups.slots.shape
        channels = y.shape[-1]
        wigner = pad(wigner.index_select(1, self.entries), groups)  # [N*W, nnz] per block
        y = pad(y, groups).view(num_nodes, width, -1, channels)  # [N, W, K_M, C]
        # split (not slicing): its backward is one cat, a slice's zero-fills the whole input
        d_blocks = wigner.split([rows * cols for rows, cols in self.block_shapes], dim=1)
        y_blocks = y.split([rows for rows, _ in self.block_shapes], dim=2)
        out = []
        for (num_rows, num_cols), d, y_l in zip(self.block_shapes, d_blocks, y_blocks):
            d = d.reshape(num_nodes, width * num_rows, num_cols)  # [N, W r_l, 2l+1]
            y_l = y_l.reshape(num_nodes, width * num_rows, channels)  # [N, W r_l, C]
            out.append(_TransposedBmm.apply(d, y_l))  # [N, 2l+1, C]
        return torch.cat(out, dim=1)  # [N, K, C], full l-major layout
