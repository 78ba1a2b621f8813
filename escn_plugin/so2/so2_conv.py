"""SO(2) convolutions on edge-frame coefficients in the m-major layout.

In the edge frame (edge along +y) an SO(3) convolution reduces to, for every order m > 0
and every pair of degrees (l_in, l_out),

    y_{+m} = W_r x_{+m} - W_i x_{-m}
    y_{-m} = W_i x_{+m} + W_r x_{-m}          (m = 0:  y_0 = W_0 x_0)

i.e. the complex product (x_{+m} + i x_{-m})(W_r + i W_i): the most general linear map
that commutes with rotations about the edge axis (``docs/design.md`` §2). Here x_{±m} stacks the
±m coefficients of every degree l >= m and channel, flattened [E, n_m * C] in the m-major
layout of :mod:`escn_plugin.so3.layout`.

* :func:`so2_linear` applies explicit weights (used to prove the reduction against e3nn).
* :class:`SO2Convolution` is eSCN's learned block: for m = 0, ``W_0 x = out(in(x) * g_0(e))``;
  for m > 0, ``W_r x = out_r(in_r(x) * g_r(e))`` and likewise W_i, where the gates g come
  from the invariant edge features e through SiLU(Linear). Bias-free maps on coefficients
  keep the block equivariant.

The model runs :class:`FactoredSO2Convolution` (registered ``"factored"``); the same block
computed edge by edge (``"escn"``, the reference's way) and with materialised weights
(``"explicit"``) are oracles for tests and parity, in :mod:`escn_plugin.so2.oracles`.
"""

from __future__ import annotations

import torch
from torch import nn

from escn_plugin.common.edge_groups import NodeGroups, pad, unpad
from escn_plugin.common.implementations import SO2_IMPLEMENTATIONS
from escn_plugin.so3.layout import CoefficientLayout
from escn_plugin.so3.rotation import WignerBlockLayout, dense_index, rotate_in

__all__ = [
    "FactoredSO2Convolution",
    "SO2Convolution",
    "complex_combine",
    "so2_linear",
    "source_target_messages",
]


def complex_combine(real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
    """Combine W_r and W_i applied to the stacked (+m, -m) inputs into (y_{+m}, y_{-m}).

    ``real, imag: [E, 2, F]`` hold W_r [x_{+m}; x_{-m}] and W_i [x_{+m}; x_{-m}];
    returns ``[E, 2, F]`` = [W_r x_{+m} - W_i x_{-m}; W_i x_{+m} + W_r x_{-m}].
    """
    # [r+ - i-, r- + i+] as real + sign * flip(imag): no select/stack, whose backward
    # would allocate and zero-fill full-size gradients
    return real + imag.flip(1) * _sign(real)


def _sign(like: torch.Tensor) -> torch.Tensor:
    """``[1, 2, 1]`` = (-1, +1), made on ``like``'s device: ``torch.tensor([-1.0, 1.0],
    device=cuda)`` would copy from the host, a host-device synchronisation every call."""
    return torch.arange(-1.0, 2.0, 2.0, dtype=like.dtype, device=like.device).view(1, 2, 1)


def so2_linear(
    x: torch.Tensor,
    layout: CoefficientLayout,
    weights: list[tuple[torch.Tensor, torch.Tensor | None]],
) -> torch.Tensor:
    """SO(2)-equivariant linear map with explicit (per-edge) weights.

    Args:
        x: ``[E, K_M, C]`` edge-frame coefficients, m-major.
        layout: the coefficient layout of x.
        weights: for m = 0..mmax, ``(W_r, W_i)`` of shape ``[E, n_m * C, n_m * C]`` acting on
            the flattened (degree, channel) vectors of order m; ``W_i`` is None for m = 0.

    Returns:
        ``[E, K_M, C]``.
    """
    num_edges, _, channels = x.shape
    out = []
    for m, (w_r, w_i) in enumerate(weights):
        plus, minus = layout.m_slices(m)
        if m == 0:
            x0 = x[:, plus].reshape(num_edges, -1)  # [E, n_0 C]
            out.append(torch.einsum("eoi,ei->eo", w_r, x0).view(num_edges, -1, channels))
            continue
        xm = torch.stack((x[:, plus], x[:, minus]), dim=1).reshape(num_edges, 2, -1)
        real = torch.einsum("eoi,esi->eso", w_r, xm)  # [E, 2, n_m C]
        imag = torch.einsum("eoi,esi->eso", w_i, xm)
        out.append(complex_combine(real, imag).reshape(num_edges, -1, channels))
    return torch.cat(out, dim=1)


class SO2Convolution(nn.Module):
    """eSCN's edge-conditioned SO(2) convolution block (docs/design.md §3).

    Args:
        layout: coefficient layout (gives n_m, the number of degrees per order m).
        sphere_channels: C, channels per coefficient.
        hidden_channels: H, width of the gated bottleneck.
        edge_channels: width of the invariant edge features.

    ``forward(x [E, K_M, C], x_edge [E, edge_channels]) -> [E, K_M, C]``.
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        sphere_channels: int,
        hidden_channels: int,
        edge_channels: int,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.sphere_channels = sphere_channels
        self.hidden_channels = hidden_channels
        n0 = layout.m_size[0] * sphere_channels
        self.edge_m0 = nn.Linear(edge_channels, hidden_channels)
        self.m0_in = nn.Linear(n0, hidden_channels, bias=False)
        self.m0_out = nn.Linear(hidden_channels, n0, bias=False)
        self.orders = nn.ModuleList(
            SO2OrderConvolution(n_m * sphere_channels, hidden_channels, edge_channels)
            for n_m in layout.m_size[1:]
        )
        self.group_sizes = [layout.m_size[0]] + [2 * n for n in layout.m_size[1:]]
        self.act = nn.SiLU()
        self.register_buffer("dense_index", dense_index(layout), persistent=False)  # [nnz]

    def forward(self, x: torch.Tensor, x_edge: torch.Tensor) -> torch.Tensor:
        num_edges = x.shape[0]
        # groups m = 0, (+1, -1), (+2, -2), ...: the +m and -m groups are adjacent in the
        # m-major layout, so one split gives every order (split's backward is a cat)
        x0, *x_orders = x.split(self.group_sizes, dim=1)
        hidden = [self.m0_in(x0.reshape(num_edges, 1, -1))]  # [E, 1, H]
        for xm, conv in zip(x_orders, self.orders):
            hidden.append(conv.in_proj(xm.reshape(num_edges, 2, -1)))  # [E, 2, 2H]
        return self.from_hidden(hidden, x_edge)

    def from_hidden(self, hidden: list[torch.Tensor], x_edge: torch.Tensor) -> torch.Tensor:
        """The block after its input maps: ``hidden`` = [in(x_0) [E, 1, H]] + [in_proj(x_m)
        [E, 2, 2H] for m = 1..mmax] -> ``[E, K_M, C]`` (gates, output maps, complex combine)."""
        num_edges = x_edge.shape[0]
        y0 = self.m0_out(hidden[0][:, 0] * self.act(self.edge_m0(x_edge)))
        out = [y0.view(num_edges, -1, self.sphere_channels)]
        for h, conv in zip(hidden[1:], self.orders):
            out.append(conv.from_hidden(h, x_edge).reshape(num_edges, -1, self.sphere_channels))
        return torch.cat(out, dim=1)  # [E, K_M, C]

    def from_nodes(
        self,
        x: torch.Tensor,
        wigner: torch.Tensor,
        groups: NodeGroups,
        x_edge: torch.Tensor,
        scalar_input: bool = False,
    ) -> torch.Tensor:
        """The block on node coefficients ``x [N, K, C]`` seen from each edge's node
        ``groups.index``: rotate ``x[index]`` into the edge frame with the dense
        ``W [E, K_M, K]`` (from the block-sparse ``wigner [E, nnz]``), then :meth:`forward`.
        ``scalar_input`` (x non-zero on l = 0 only) is a hint this path does not use."""
        return self(rotate_in(wigner, x, groups, self.layout, self.dense_index), x_edge)


class SO2OrderConvolution(nn.Module):
    """The complex-weighted map for one order m > 0: ``[E, 2, F] -> [E, 2, F]``.

    ``in_proj`` holds the real and imaginary input maps stacked ([2H, F]) so both run as
    one matmul; the edge gates for both come from one Linear(edge -> 2H).
    """

    def __init__(self, features: int, hidden_channels: int, edge_channels: int) -> None:
        super().__init__()
        self.hidden_channels = hidden_channels
        self.edge_gate = nn.Linear(edge_channels, 2 * hidden_channels)
        self.in_proj = nn.Linear(features, 2 * hidden_channels, bias=False)
        self.out_r = nn.Linear(hidden_channels, features, bias=False)
        self.out_i = nn.Linear(hidden_channels, features, bias=False)
        self.act = nn.SiLU()

    def forward(self, xm: torch.Tensor, x_edge: torch.Tensor) -> torch.Tensor:
        return self.from_hidden(self.in_proj(xm), x_edge)

    def from_hidden(self, hidden: torch.Tensor, x_edge: torch.Tensor) -> torch.Tensor:
        """``hidden = in_proj(x_m) [E, 2, 2H]`` -> ``[E, 2, F]``."""
        gate = self.act(self.edge_gate(x_edge)).unsqueeze(1)  # [E, 1, 2H]
        hidden = hidden * gate  # [E, 2, 2H]: (+m, -m) x (real, imag)
        hidden_r, hidden_i = hidden.chunk(2, dim=-1)
        return complex_combine(self.out_r(hidden_r), self.out_i(hidden_i))  # [E, 2, F]


@SO2_IMPLEMENTATIONS.register("factored")
class FactoredSO2Convolution(SO2Convolution):
    """The same block (same parameters), with its input maps applied per node, before
    rotating: the model's default.

    The input map of order m acts on channels and degree, the rotation on m only, so for
    the +-m rows of edge e seen from node n (``W_m`` [H', n_m, C]: ``m0_in`` or ``in_proj``)

        in_m(W_e x_n)[s, h] = sum_k D_e[(s m, l_k), k] z_m[n, k, h],
        z_m[n, k, h]        = sum_c W_m[h, l_k - m, c] x[n, k, c]           (per node)

    over the columns k with l_k >= m. The per-node z_m costs N K H' C instead of
    E n_m H' C per side, and the per-edge sum is one bmm per order over nodes with the
    edges in per-node slots (:mod:`escn_plugin.common.edge_groups`): no [E, K, C] gather,
    no rotation into the edge frame. Exactly the SO(2) block of :class:`SO2Convolution`
    on ``W_e x[index]`` (up to rounding).

    With ``scalar_input`` (x non-zero on l = 0 only, as in the first layer) the orders
    m > 0 see zero inputs, so their outputs are exactly 0 and are not computed.
    """

    def __init__(
        self,
        layout: CoefficientLayout,
        sphere_channels: int,
        hidden_channels: int,
        edge_channels: int,
    ) -> None:
        super().__init__(layout, sphere_channels, hidden_channels, edge_channels)
        blocks = WignerBlockLayout(layout)
        self.order_storage: list[tuple[int, int, int]] = []  # (offset, rows, columns)
        for m in range(layout.mmax + 1):
            offset, rows, columns, position = blocks.group(m)
            self.order_storage.append((offset, rows, len(columns)))
            self.register_buffer(f"columns_{m}", torch.tensor(columns), persistent=False)
            self.register_buffer(f"position_{m}", torch.tensor(position), persistent=False)
        # x's (res, l) blocks, and for each order the block of each of its degrees
        blocks_full = [(c.res, c.l) for c in layout.full if c.m == -c.l]
        self.degree_sizes = [2 * l + 1 for _, l in blocks_full]
        self.order_blocks = [
            [blocks_full.index((c.res, c.l)) for c in layout.m_major[layout.m_slices(m)[0]]]
            for m in range(layout.mmax + 1)
        ]
        # first layer: the l = 0 columns of the m = 0 rows (one per resolution)
        offset, _, columns, _ = blocks.group(0)
        degree = [layout.full[k].l for k in columns]
        scalar = [j for j, l in enumerate(degree) if l == 0]
        self.register_buffer("scalar_pick", torch.tensor(scalar), persistent=False)
        self.register_buffer(
            "scalar_columns", torch.tensor([columns[j] for j in scalar]), persistent=False
        )

    def _input_weight(self, m: int) -> torch.Tensor:
        """``[H', n_m, C]`` input map of order m (H' = H for m = 0, 2H otherwise)."""
        weight = self.m0_in.weight if m == 0 else self.orders[m - 1].in_proj.weight
        return weight.view(weight.shape[0], -1, self.sphere_channels)

    def _hidden_from_nodes(
        self,
        x: torch.Tensor,
        wigner: torch.Tensor,
        groups: NodeGroups,
        scalar_input: bool = False,
    ) -> list[torch.Tensor]:
        """The input maps of every order on each edge's node ``groups.index`` in the edge
        frame: ``[in(x_0) [E, 1, H]] + [in_proj(x_m) [E, 2, 2H]]`` (only m = 0 with
        ``scalar_input``)."""
        num_nodes, width = groups.slots.shape
        x_degrees = x.split(self.degree_sizes, dim=1)  # per (res, l) block of the full layout
        # the rows of each order, [N*W, rows * size] (split: its backward is one cat)
        rot_orders = pad(wigner, groups).split([r * n for _, r, n in self.order_storage], dim=1)
        hidden = []
        for m, (_, rows, size) in enumerate(self.order_storage):
            weight = self._input_weight(m)
            columns, position = getattr(self, f"columns_{m}"), getattr(self, f"position_{m}")
            rot = rot_orders[m]
            if scalar_input:
                if m > 0:
                    break
                # only the l = 0 columns of x are non-zero (D^0 = 1 per entry)
                columns, position = self.scalar_columns, position[self.scalar_pick]
                rot, size = rot[:, self.scalar_pick], self.scalar_pick.shape[0]
            if scalar_input:
                weight = weight.index_select(1, position)  # [H', size, C]
                z = torch.einsum("njc,hjc->njh", x.index_select(1, columns), weight)
            else:  # degree by degree: no expanded [H', size, C] weight copy to keep
                blocks = [x_degrees[b] for b in self.order_blocks[m]]  # [N, 2l+1, C] each
                z = torch.cat([torch.matmul(xb, weight[:, g].T) for g, xb in enumerate(blocks)], 1)
            rot = rot.reshape(num_nodes, width * rows, size)
            per_slot = torch.bmm(rot, z).view(num_nodes * width, rows, -1)  # [N*W, rows, H']
            hidden.append(unpad(per_slot, groups))  # [E, rows, H']
        return hidden

    def from_nodes(
        self,
        x: torch.Tensor,
        wigner: torch.Tensor,
        groups: NodeGroups,
        x_edge: torch.Tensor,
        scalar_input: bool = False,
    ) -> torch.Tensor:
        """``x [N, K, C]``, ``wigner [E, nnz]`` -> ``[E, K_M, C]``, the block applied to
        each edge's node ``groups.index``, in the edge frame."""
        hidden = self._hidden_from_nodes(x, wigner, groups, scalar_input)
        out = self.from_hidden(hidden, x_edge)
        num_rest = self.layout.num_m_major - out.shape[1]
        if num_rest == 0:
            return out
        return torch.cat((out, self._zeros(x_edge.shape[0], num_rest)), 1)

    def _zeros(self, num_edges: int, num_coefficients: int) -> torch.Tensor:
        """``[E, n, C]`` exact zeros: the outputs of the orders m > 0 on zero inputs.

        They stay attached to those orders' parameters with their true gradient, 0:
        DDP (no ``find_unused_parameters`` in fairchem) needs every parameter to get a
        gradient, as it does when the orders are computed on zeros.
        """
        anchor = sum(p.sum() for p in self.orders.parameters()) * 0.0
        zeros = anchor.new_zeros(num_edges, num_coefficients, self.sphere_channels)
        return zeros + anchor


def source_target_messages(
    source: SO2Convolution,
    target: SO2Convolution,
    x: torch.Tensor,
    wigner: torch.Tensor,
    source_groups: NodeGroups,
    target_groups: NodeGroups,
    x_edge: torch.Tensor,
    scalar_input: bool = False,
    x_target: torch.Tensor | None = None,
) -> torch.Tensor:
    """``source(W_e x[s]) + target(W_e x[t])`` ``[E, K_M, C]``: the two SO(2) blocks of a
    message, each on its end of every edge.

    ``x [N', K, C]`` holds the nodes ``source_groups`` index; ``x_target`` (default x)
    the nodes ``target_groups`` index, e.g. only the first rows of x (a block's targets
    in blocked inference), so that the target side's per-node work covers them alone.

    With two factored blocks the output maps of both blocks and of the real and imaginary
    parts run as one matmul per order:
    ``y_m = [h_r, flip(h_i) * (-1, +1), h_r', flip(h_i') * (-1, +1)] [W_r W_i W_r' W_i']^T``
    (the complex combination of :func:`complex_combine` moved onto the hidden side).
    """
    x_target = x if x_target is None else x_target
    if not (
        isinstance(source, FactoredSO2Convolution) and isinstance(target, FactoredSO2Convolution)
    ):
        y = source.from_nodes(x, wigner, source_groups, x_edge, scalar_input)
        return y + target.from_nodes(x_target, wigner, target_groups, x_edge, scalar_input)
    blocks = (source, target)
    hiddens = [
        b._hidden_from_nodes(xs, wigner, g, scalar_input)
        for b, xs, g in zip(blocks, (x, x_target), (source_groups, target_groups))
    ]
    num_edges, channels = x_edge.shape[0], source.sphere_channels
    gated = [h[0][:, 0] * b.act(b.edge_m0(x_edge)) for b, h in zip(blocks, hiddens)]
    weight = torch.cat([b.m0_out.weight for b in blocks], dim=1)  # [n_0 C, 2H]
    out = [torch.matmul(torch.cat(gated, dim=-1), weight.T).view(num_edges, -1, channels)]
    sign = _sign(x)  # [1, 2, 1]: (-1, +1)
    for m in range(1, len(hiddens[0])):
        parts, weights = [], []
        for b, h in zip(blocks, hiddens):
            conv = b.orders[m - 1]
            gate = conv.act(conv.edge_gate(x_edge)).unsqueeze(1)  # [E, 1, 2H]
            hidden_r, hidden_i = (h[m] * gate).chunk(2, dim=-1)  # [E, 2, H] each
            parts += [hidden_r, hidden_i.flip(1) * sign]
            weights += [conv.out_r.weight, conv.out_i.weight]
        y = torch.matmul(torch.cat(parts, dim=-1), torch.cat(weights, dim=1).T)  # [E, 2, F]
        out.append(y.reshape(num_edges, -1, channels))
    num_rest = source.layout.num_m_major - sum(o.shape[1] for o in out)
    if num_rest > 0:  # scalar input: the orders m > 0 are exactly zero
        zeros = source._zeros(num_edges, num_rest) + target._zeros(num_edges, num_rest)
        out.append(zeros)
    return torch.cat(out, dim=1)  # [E, K_M, C]
