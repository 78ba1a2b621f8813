"""Node update: a per-point MLP on the S2 grid over [node embedding | aggregated message]."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from escn_plugin.so3.projections import SphereSampler, resolution_linear
from escn_plugin.so3.wigner import RandomLayoutRotation, rotate_coefficients

__all__ = ["NodeUpdate"]


class NodeUpdate(nn.Module):
    """``from_grid(fc3(SiLU(fc2(SiLU(fc1([grid(x) | grid(m)]))))))``, all bias-free.

    Every resolution is sampled on the grid of the largest lmax (``grid``, from
    :func:`~escn_plugin.so3.projections.node_grid_sampler`); the R resolutions' channels sit
    side by side, so the MLP maps 2 R C -> R C.

    Computed as written, but with the two linear maps next to the grid moved to the
    coefficient side, where there are K coefficients instead of G grid points (G = 90 to
    840 for K = 9 to 49): sampling acts on the coefficient index and ``fc1``/``fc3`` on
    channels, so they commute. With T [G, R, K] (sampling) and F [G, R, K] (quadrature),
    r(k) the resolution of coefficient k, W1 = [W1x | W1m] and W3 in blocks of C channels::

        h[n, k]    = W1x[:, r(k)] x[n, k] + W1m[:, r(k)] m[n, k]      # [N, K, R C]
        z[n, g]    = SiLU(fc2(SiLU(sum_k T[g, r(k), k] h[n, k])))     # [N, G, R C]
        out[n, k]  = W3[r(k), :] sum_g F[g, r(k), k] z[n, g]          # [N, K, C]

    which equals the grid-side form exactly (same parameters; float rounding aside) and
    needs no [N, G, 2 R C] concatenation.

    ``random_rotation`` (training only): turn the grid by a random rotation Q per call,
    i.e. compute D(Q)^T update(D(Q) x, D(Q) m) with D the block-diagonal Wigner-D. For a
    band-limited, exactly integrated MLP this changes nothing (the update is equivariant);
    on a finite grid the MLP output aliases, so a fixed grid lets training learn features
    tied to the grid's orientation, which then break rotation equivariance. With a
    different grid orientation each step, that aliasing becomes noise the loss penalises.
    """

    def __init__(
        self,
        grid: SphereSampler,
        sphere_channels: int,
        random_rotation: bool = False,
        recompute: bool = True,
    ) -> None:
        super().__init__()
        width = grid.num_resolutions * sphere_channels
        self.sphere_channels = sphere_channels
        self.fc1 = nn.Linear(2 * width, width, bias=False)
        self.fc2 = nn.Linear(width, width, bias=False)
        self.fc3 = nn.Linear(width, width, bias=False)
        self.act = nn.SiLU()
        self.blocks = grid.blocks  # [(res, start, stop)]: each resolution's coefficients
        self.recompute = bool(recompute)
        self.lmax_list = [round((b - a) ** 0.5) - 1 for _, a, b in self.blocks]
        self.rotation = RandomLayoutRotation(self.lmax_list) if random_rotation else None
        # each coefficient belongs to one resolution: the grid maps summed over them
        self.register_buffer("to_matrix", grid.to_matrix_summed, persistent=False)  # [G, K]
        self.register_buffer("from_matrix", grid.from_matrix_summed, persistent=False)

    def forward(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        """``x, message [N, K, C] -> [N, K, C]``.

        In training (with ``recompute``) the grid values ([N, G, RC] and the MLP's
        activations) are recomputed in the backward from x and message instead of being
        kept: less memory for ~1/3 more node-update time.
        """
        if self.rotation is not None and self.training:
            _, wigner = self.rotation(x)  # [K, K]
            x, message = rotate_coefficients(wigner, x), rotate_coefficients(wigner, message)
            return rotate_coefficients(wigner, self._checkpointed(x, message), inverse=True)
        return self._checkpointed(x, message)

    def _checkpointed(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        if (
            self.recompute
            and torch.is_grad_enabled()
            and (x.requires_grad or message.requires_grad)
            # compiled layers (compile_layers): inductor plans what to keep itself, and
            # torch 2.4's dynamo fails on a checkpoint inside a dynamic-shape graph
            and not torch.compiler.is_compiling()
        ):
            return checkpoint(self._update, x, message, use_reentrant=False)
        return self._update(x, message)

    def _update(self, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
        width = self.fc2.in_features
        c = self.sphere_channels
        w1x, w1m = self.fc1.weight[:, :width], self.fc1.weight[:, width:]  # [RC, RC] each
        to_matrix = self.to_matrix.to(x.dtype)  # [G, K]
        from_matrix = self.from_matrix.to(x.dtype)  # [G, K]
        h = resolution_linear(x, w1x, self.blocks) + resolution_linear(
            message, w1m, self.blocks
        )  # [N, K, RC]
        grid = self.act(self.fc2(self.act(torch.matmul(to_matrix, h))))  # [N, G, RC]
        back = torch.matmul(from_matrix.T, grid)  # [N, K, RC]
        return torch.cat(
            [back[:, a:b] @ self.fc3.weight[r * c : (r + 1) * c].T for r, a, b in self.blocks],
            dim=1,
        )  # [N, K, C]
