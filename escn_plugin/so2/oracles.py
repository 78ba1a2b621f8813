"""Oracles for the SO(2) block: the same parameters computed the slow, obvious ways.

Registered by name for tests and parity runs (``so2_impl`` in the model config); the
model's default, ``"factored"``, is checked against them to float64 round-off:

* ``"escn"``: :class:`~escn_plugin.so2.so2_conv.SO2Convolution` itself, each edge's node
  rotated into the edge frame with the dense Wigner-D (the reference eSCN's order of work);
* ``"explicit"``: :class:`ExplicitSO2Convolution`, the per-edge weight matrices
  materialised and applied by :func:`~escn_plugin.so2.so2_conv.so2_linear` (E x F x F
  memory: tests only).
"""

from __future__ import annotations

import torch

from escn_plugin.common.implementations import SO2_IMPLEMENTATIONS
from escn_plugin.so2.so2_conv import SO2Convolution, so2_linear

__all__ = ["ExplicitSO2Convolution"]

SO2_IMPLEMENTATIONS.register("escn")(SO2Convolution)


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
