"""SO(2) convolutions on edge-frame coefficients in the m-major layout.

In the edge frame (edge along +y) an SO(3) convolution reduces to, for every order m > 0
and every pair of degrees (l_in, l_out),

    y_{+m} = W_r x_{+m} - W_i x_{-m}
    y_{-m} = W_i x_{+m} + W_r x_{-m}          (m = 0:  y_0 = W_0 x_0)

i.e. the complex product (x_{+m} + i x_{-m})(W_r + i W_i): the most general linear map
that commutes with rotations about the edge axis (``../SPEC.md`` §2). Here x_{±m} stacks the
±m coefficients of every degree l >= m and channel, flattened [E, n_m * C] in the m-major
layout of :mod:`escn_plugin.so3.layout`.

* :func:`so2_linear` applies explicit weights (used to prove the reduction against e3nn).
* :class:`SO2Convolution` is eSCN's learned block: for m = 0, ``W_0 x = out(in(x) * g_0(e))``;
  for m > 0, ``W_r x = out_r(in_r(x) * g_r(e))`` and likewise W_i, where the gates g come
  from the invariant edge features e through SiLU(Linear). Bias-free maps on coefficients
  keep the block equivariant.

Implementations are registered by name (``so2_impl`` in the model config).
"""

from __future__ import annotations

import torch
from torch import nn

from escn_plugin.backends import SO2_IMPLEMENTATIONS
from escn_plugin.so3.layout import CoefficientLayout

__all__ = ["ExplicitSO2Convolution", "SO2Convolution", "complex_combine", "so2_linear"]


def complex_combine(real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
    """Combine W_r and W_i applied to the stacked (+m, -m) inputs into (y_{+m}, y_{-m}).

    ``real, imag: [E, 2, F]`` hold W_r [x_{+m}; x_{-m}] and W_i [x_{+m}; x_{-m}];
    returns ``[E, 2, F]`` = [W_r x_{+m} - W_i x_{-m}; W_i x_{+m} + W_r x_{-m}].
    """
    # [r+ - i-, r- + i+] as real + sign * flip(imag): no select/stack, whose backward
    # would allocate and zero-fill full-size gradients
    sign = torch.tensor([-1.0, 1.0], dtype=real.dtype, device=real.device).view(1, 2, 1)
    return real + imag.flip(1) * sign


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


@SO2_IMPLEMENTATIONS.register("escn")
class SO2Convolution(nn.Module):
    """eSCN's edge-conditioned SO(2) convolution block (SPEC §3).

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

    def forward(self, x: torch.Tensor, x_edge: torch.Tensor) -> torch.Tensor:
        num_edges = x.shape[0]
        # groups m = 0, (+1, -1), (+2, -2), ...: the +m and -m groups are adjacent in the
        # m-major layout, so one split gives every order (split's backward is a cat)
        x0, *x_orders = x.split(self.group_sizes, dim=1)
        x0 = x0.reshape(num_edges, -1)  # [E, n_0 C]
        y0 = self.m0_out(self.m0_in(x0) * self.act(self.edge_m0(x_edge)))
        out = [y0.view(num_edges, -1, self.sphere_channels)]
        for xm, conv in zip(x_orders, self.orders):
            xm = xm.reshape(num_edges, 2, -1)  # [E, 2, n_m C]
            out.append(conv(xm, x_edge).reshape(num_edges, -1, self.sphere_channels))
        return torch.cat(out, dim=1)  # [E, K_M, C]


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
        gate = self.act(self.edge_gate(x_edge)).unsqueeze(1)  # [E, 1, 2H]
        hidden = self.in_proj(xm) * gate  # [E, 2, 2H]: (+m, -m) x (real, imag)
        hidden_r, hidden_i = hidden.chunk(2, dim=-1)
        return complex_combine(self.out_r(hidden_r), self.out_i(hidden_i))  # [E, 2, F]


@SO2_IMPLEMENTATIONS.register("explicit")
class ExplicitSO2Convolution(SO2Convolution):
    """The same block, parameters and all, computed the long way: it materialises the
    per-edge weight matrices ``W = out diag(g(e)) in`` of every order and applies
    :func:`so2_linear`. Slow (E x F x F memory); it shows that the learned block is exactly
    the SO(2) map of the reduction, and serves as the oracle for the fast path."""

    def forward(self, x: torch.Tensor, x_edge: torch.Tensor) -> torch.Tensor:
        gate0 = self.act(self.edge_m0(x_edge))  # [E, H]
        w0 = torch.einsum("oh,eh,hi->eoi", self.m0_out.weight, gate0, self.m0_in.weight)
        weights: list[tuple[torch.Tensor, torch.Tensor | None]] = [(w0, None)]
        for conv in self.orders:
            h = conv.hidden_channels
            gate = conv.act(conv.edge_gate(x_edge))  # [E, 2H]
            w_in = conv.in_proj.weight  # [2H, F]
            w_r = torch.einsum("oh,eh,hi->eoi", conv.out_r.weight, gate[:, :h], w_in[:h])
            w_i = torch.einsum("oh,eh,hi->eoi", conv.out_i.weight, gate[:, h:], w_in[h:])
            weights.append((w_r, w_i))
        return so2_linear(x, self.layout, weights)
