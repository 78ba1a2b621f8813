"""Double backward through the whole model: gradients of force-based losses with respect to
the parameters (forces = -dE/dpos, create_graph=True) are right, checked against a
float64 central finite difference on a tiny model."""

from __future__ import annotations

import torch

import escn_plugin
from tests.helpers.structures import make_batch, slabs

TINY = dict(
    num_layers=2, lmax_list=[2], mmax_list=[1], sphere_channels=4, hidden_channels=4,
    edge_channels=4, cutoff=5.0, otf_graph=False, regress_forces=False,
    num_sphere_samples=16, distance_resolution=0.25,
)  # fmt: skip


def _force_loss(model, batch) -> torch.Tensor:
    """sum over atoms of |dE/dpos|^2 (the gradient-force training loss up to scale)."""
    pos = batch.pos.detach().requires_grad_(True)
    batch.pos = pos
    energy = model(batch)["energy"].sum()
    (grad,) = torch.autograd.grad(energy, pos, create_graph=True)
    return grad.pow(2).sum()


def test_force_loss_parameter_gradient_matches_finite_difference(float64_default):
    torch.manual_seed(0)
    model = escn_plugin.eSCN(**TINY)
    with torch.no_grad():  # O(1) weights: a force loss well above rounding
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    batch = make_batch(slabs()[:1])
    params = list(model.parameters())
    loss = _force_loss(model, batch)
    grads = torch.autograd.grad(loss, params)
    assert loss.item() > 1e-14  # energies carry the reference's 0.001 scale
    assert all(torch.isfinite(g).all() for g in grads)  # and none is None: all take part

    gen = torch.Generator().manual_seed(1)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    predicted = sum((g * d).sum() for g, d in zip(grads, direction)).item()
    eps = 1e-5
    values = []
    for sign in (1.0, -1.0):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        values.append(_force_loss(model, batch).item())
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    finite_difference = (values[0] - values[1]) / (2 * eps)
    assert abs(finite_difference - predicted) <= 1e-6 * abs(predicted) + 1e-10
