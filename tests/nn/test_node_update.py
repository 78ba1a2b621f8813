"""The node update computed with fc1/fc3 on the coefficient side equals the grid-side MLP
``from_grid(fc3(SiLU(fc2(SiLU(fc1([grid(x) | grid(m)]))))))`` written out directly."""

from __future__ import annotations

import pytest
import torch

from escn_plugin.nn.node_update import NodeUpdate
from escn_plugin.so3.layout import CoefficientLayout
from escn_plugin.so3.projections import node_grid_sampler


def grid_side(update: NodeUpdate, sampler, x: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
    """The MLP as the reference writes it: every linear map on the grid values."""
    grid = torch.cat((sampler(x), sampler(message)), dim=-1)  # [N, G, 2RC]
    act = torch.nn.functional.silu
    grid = update.fc3(act(update.fc2(act(update.fc1(grid)))))  # [N, G, RC]
    return sampler.inverse(grid)  # [N, K, C]


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize(
    ("lmax_list", "resolution"),
    [([2], None), ([4], [10, 11]), ([3, 2], None), ([2, 4, 3], [12, 9])],
)
def test_coefficient_side_equals_grid_side(lmax_list, resolution, recompute):
    layout = CoefficientLayout(lmax_list, [1] * len(lmax_list))
    grid = node_grid_sampler(layout, resolution).double()
    update = NodeUpdate(grid, sphere_channels=6, recompute=recompute).double()
    torch.manual_seed(0)
    for p in update.parameters():
        p.data = torch.randn_like(p)  # large weights: a strongly non-linear MLP
    x = torch.randn(7, layout.num_full, 6, dtype=torch.float64, requires_grad=True)
    message = torch.randn_like(x, requires_grad=True)

    ours, ref = update(x, message), grid_side(update, grid, x, message)
    assert ours.shape == ref.shape == x.shape
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12 * ref.abs().max().item())

    # same gradients for inputs and every weight (checkpointed recompute included)
    weights = torch.randn_like(ref)
    grads = torch.autograd.grad((ours * weights).sum(), [x, message, *update.parameters()])
    grads_ref = torch.autograd.grad((ref * weights).sum(), [x, message, *update.parameters()])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-11, atol=1e-11 * g_ref.abs().max().item())


@pytest.mark.parametrize("lmax_list", [[2], [3, 2], [2, 4, 3]])
def test_sample_linear_equals_linear_of_samples(lmax_list):
    """The readout's first linear map on the coefficient side (SphereSampler.sample_linear)
    equals the map applied to the sampled values, gradients included."""
    from escn_plugin.model.escn import readout_points
    from escn_plugin.so3.projections import sphere_points_sampler

    layout = CoefficientLayout(lmax_list, [1] * len(lmax_list))
    points, _ = readout_points(0, [8, 9])
    sampler = sphere_points_sampler(layout, points).double()
    assert [b - a for _, a, b in sampler.blocks] == [(lmax + 1) ** 2 for lmax in lmax_list]
    torch.manual_seed(0)
    linear = torch.nn.Linear(len(lmax_list) * 5, 4).double()
    x = torch.randn(3, layout.num_full, 5, dtype=torch.float64, requires_grad=True)
    ours = sampler.sample_linear(x, linear.weight, linear.bias)
    ref = linear(sampler(x))
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(ours.square().sum(), [x, linear.weight, linear.bias])
    ref_grads = torch.autograd.grad(ref.square().sum(), [x, linear.weight, linear.bias])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10)
