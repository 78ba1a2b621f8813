"""The fast learned SO(2) block equals its explicit-weight form (same parameters), inside a
single block and inside the whole model."""

from __future__ import annotations

import pytest
import torch

import escn_plugin
from escn_plugin.common.implementations import SO2_IMPLEMENTATIONS
from escn_plugin.so3 import CoefficientLayout
from tests.helpers.structures import make_batch, slabs


@pytest.mark.parametrize("lmax_list,mmax_list", [([4], [2]), ([4, 3], [2, 1]), ([3], [3])])
def test_fast_block_equals_explicit_weights(lmax_list, mmax_list):
    layout = CoefficientLayout(lmax_list, mmax_list)
    torch.manual_seed(0)
    fast = SO2_IMPLEMENTATIONS.build("escn", layout, 3, 5, 4).double()
    explicit = SO2_IMPLEMENTATIONS.build("explicit", layout, 3, 5, 4).double()
    explicit.load_state_dict(fast.state_dict())
    x = torch.randn(7, layout.num_m_major, 3, dtype=torch.float64)
    x_edge = torch.randn(7, 4, dtype=torch.float64)
    out = fast(x, x_edge)
    assert out.abs().max() > 1e-3
    torch.testing.assert_close(explicit(x, x_edge), out, rtol=1e-12, atol=1e-12)


def test_model_with_explicit_implementation_matches():
    config = dict(
        num_layers=2, lmax_list=[3], mmax_list=[2], sphere_channels=4, hidden_channels=6,
        edge_channels=5, cutoff=6.0, otf_graph=False,
    )  # fmt: skip
    torch.manual_seed(0)
    fast = escn_plugin.eSCN(**config).double()
    explicit = escn_plugin.eSCN(**config, so2_impl="explicit").double()
    explicit.load_state_dict(fast.state_dict())
    batch = make_batch(slabs())
    a, b = fast(batch), explicit(batch)
    torch.testing.assert_close(b["energy"], a["energy"], rtol=1e-10, atol=0)
    torch.testing.assert_close(b["forces"], a["forces"], rtol=1e-8, atol=1e-14)
