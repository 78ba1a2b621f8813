"""``model.num_layers = k`` on a built model runs only its first k layers, as the reference
does (fairchem's tests lower it on built models); out-of-range values fail clearly."""

from __future__ import annotations

import pytest
import torch

import escn_plugin
from tests.helpers.structures import make_batch, slabs

ARGS = dict(
    lmax_list=[2],
    mmax_list=[1],
    sphere_channels=8,
    hidden_channels=8,
    edge_channels=8,
    num_sphere_samples=16,
    cutoff=6.0,
    otf_graph=False,
)


def test_lowering_num_layers_runs_the_first_layers_only():
    torch.manual_seed(0)
    three = escn_plugin.eSCN(num_layers=3, **ARGS).double().eval()
    one = escn_plugin.eSCN(num_layers=1, **ARGS).double().eval()
    # the one-layer model gets the three-layer model's first layer, embeddings and heads
    one.load_state_dict(
        {
            k: v
            for k, v in three.state_dict().items()
            # a 3-layer checkpoint into 1 layer on purpose: without the stored arguments
            if not k.startswith(("layers.1", "layers.2", "_extra_state"))
        }
    )
    batch = make_batch(slabs())
    full = three(batch)
    three.num_layers = 1
    cut = three(batch)
    expected = one(batch)
    torch.testing.assert_close(cut["energy"], expected["energy"], rtol=1e-12, atol=0)
    torch.testing.assert_close(cut["forces"], expected["forces"], rtol=1e-12, atol=1e-15)
    assert not torch.allclose(cut["forces"], full["forces"])
    three.num_layers = 3
    torch.testing.assert_close(three(batch)["forces"], full["forces"], rtol=0, atol=0)


@pytest.mark.parametrize("num_layers", [-1, 4])
def test_num_layers_outside_the_built_layers_fails(num_layers):
    model = escn_plugin.eSCN(num_layers=3, **ARGS).double().eval()
    with pytest.raises(ValueError, match="built with 3 layers"):
        model.num_layers = num_layers
