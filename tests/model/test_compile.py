"""torch.compile: the interaction layers trace without graph breaks and compiling does not
change results."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

import escn_plugin
from escn_plugin.common.edge_groups import message_edges
from tests.helpers.structures import make_batch, slabs

SMALL = dict(
    num_layers=2,
    lmax_list=[3],
    mmax_list=[2],
    sphere_channels=8,
    hidden_channels=8,
    edge_channels=8,
    cutoff=6.0,
    otf_graph=False,
)


def _layer_inputs(model, batch):
    graph = model.generate_graph(batch)
    numbers = batch.atomic_numbers.long()
    wigner = model.rotation(graph.edge_distance_vec)
    return (
        model.embed_atoms(numbers),
        model.distance_expansion(graph.edge_distance),
        numbers,
        graph.edge_index,
        message_edges(wigner, graph.edge_index, numbers.shape[0]),
    )


def test_layer_loop_has_no_graph_break():
    torch.manual_seed(0)
    model = escn_plugin.eSCN(**SMALL).eval()
    inputs = _layer_inputs(model, make_batch(slabs(), dtype=torch.float32))
    dynamo.reset()
    explanation = dynamo.explain(model.run_layers)(*inputs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_traced_layers_match_eager():
    """aot_eager runs dynamo + AOTAutograd (functionalisation, decompositions) without
    inductor's C++ build, so it is fast; the inductor run is in the slow test below."""
    torch.manual_seed(0)
    model = escn_plugin.eSCN(**dict(SMALL, num_layers=1)).train()
    inputs = _layer_inputs(model, make_batch(slabs(), dtype=torch.float32))
    dynamo.reset()
    compiled = torch.compile(model.run_layers, backend="aot_eager")
    eager_out = model.run_layers(*inputs)
    out = compiled(*inputs)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    params = list(model.parameters())
    grads = torch.autograd.grad(out.pow(2).sum(), params, allow_unused=True, retain_graph=True)
    eager_grads = torch.autograd.grad(eager_out.pow(2).sum(), params, allow_unused=True)
    for g, e in zip(grads, eager_grads, strict=True):
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_compile_layers_inductor_matches_eager():
    torch.manual_seed(0)
    eager = escn_plugin.eSCN(**SMALL).eval()
    torch.manual_seed(0)
    compiled = escn_plugin.eSCN(**SMALL, compile_layers=True).eval()
    batch = make_batch(slabs(), dtype=torch.float32)
    dynamo.reset()
    a, b = eager(batch), compiled(batch)
    torch.testing.assert_close(b["energy"], a["energy"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(b["forces"], a["forces"], rtol=1e-4, atol=1e-6)
