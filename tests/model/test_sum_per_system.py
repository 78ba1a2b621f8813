"""The per-system energy sum: exact, in atom order, twice differentiable; and the batch
layout it relies on is checked with a named error."""

import pytest
import torch

from escn_plugin.model.escn import _sum_per_system
from escn_plugin.model.inputs import check_batch_layout


def test_matches_a_plain_sum_per_system():
    generator = torch.Generator().manual_seed(0)
    natoms = torch.tensor([3, 1, 4])
    batch = torch.repeat_interleave(torch.arange(3), natoms)
    per_atom = torch.randn(batch.shape[0], dtype=torch.float64, generator=generator)
    out = _sum_per_system(per_atom, batch, natoms)
    expected = torch.stack([per_atom[batch == b].sum() for b in range(3)])
    assert out.dtype == torch.float64 and torch.allclose(out, expected, rtol=0, atol=1e-15)


def test_accumulates_half_precision_in_float32_and_runs_double_backward():
    per_atom = torch.full((3000,), 0.1, dtype=torch.float16)
    zeros, one = torch.zeros(3000, dtype=torch.long), torch.tensor([3000])
    assert _sum_per_system(per_atom, zeros, one).dtype == torch.float32
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    energy = _sum_per_system(x**3, torch.tensor([0, 0, 1, 1, 1, 1]), torch.tensor([2, 4]))
    (grad,) = torch.autograd.grad((energy * torch.tensor([1.0, 2.0])).sum(), x, create_graph=True)
    (hess_diag,) = torch.autograd.grad(grad.sum(), x)
    weight = torch.tensor([1.0, 1, 2, 2, 2, 2], dtype=torch.float64)
    assert torch.allclose(grad, 3 * weight * x.detach() ** 2)
    assert torch.allclose(hess_diag, 6 * weight * x.detach())


@pytest.mark.parametrize(
    "batch, message",
    [([0, 1, 0, 1], "atom 1 has batch index 1 where 'natoms' puts system 0"),
     ([0, 0, 1], "'batch' has 3 entries but 'natoms' sums to 4")],
)  # fmt: skip
def test_interleaved_or_miscounted_batch_is_named(batch, message):
    with pytest.raises(ValueError, match=message):
        check_batch_layout(torch.tensor(batch), torch.tensor([2, 2]))
