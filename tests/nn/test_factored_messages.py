"""The default message path (factored SO(2) input maps, block-sparse rotations, per-node
grouped sums) equals the edge-by-edge oracle: block by block and in the whole model,
float64, <= 1e-10."""

from __future__ import annotations

import pytest
import torch

import escn_plugin
from escn_plugin.common.edge_groups import group_by_node, message_edges
from escn_plugin.common.implementations import SO2_IMPLEMENTATIONS
from escn_plugin.so3 import CoefficientLayout, EdgeRotation
from escn_plugin.so3.rotation import RotateBackSum
from tests.helpers.structures import make_batch, slabs

F64 = torch.float64
LAYOUTS = [([4], [2]), ([4, 3], [2, 1]), ([3], [3]), ([2], [0])]


def _graph(num_nodes: int, num_edges: int, seed: int):
    """Random edges with uneven degrees (node 0 has none), vectors and node features."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(1, num_nodes, (2, num_edges), generator=gen)
    vectors = torch.randn(num_edges, 3, dtype=F64, generator=gen)
    return index, vectors, gen


@pytest.mark.parametrize(("lmax_list", "mmax_list"), LAYOUTS)
@pytest.mark.parametrize("scalar_input", [False, True])
def test_factored_block_equals_edge_by_edge_block(lmax_list, mmax_list, scalar_input):
    layout = CoefficientLayout(lmax_list, mmax_list)
    num_nodes, num_edges, channels = 9, 40, 3
    edge_index, vectors, gen = _graph(num_nodes, num_edges, seed=len(lmax_list))
    wigner = EdgeRotation(layout).double()(vectors)
    x = torch.randn(num_nodes, layout.num_full, channels, dtype=F64, generator=gen)
    if scalar_input:  # the first layer: only l = 0 of each resolution
        keep = torch.tensor([c.l == 0 for c in layout.full])
        x = x * keep.view(1, -1, 1)
    x_edge = torch.randn(num_edges, 4, dtype=F64, generator=gen)
    torch.manual_seed(0)
    oracle = SO2_IMPLEMENTATIONS.build("escn", layout, channels, 5, 4).double()
    factored = SO2_IMPLEMENTATIONS.build("factored", layout, channels, 5, 4).double()
    factored.load_state_dict(oracle.state_dict())
    for index in edge_index:
        groups = group_by_node(index, num_nodes)
        expected = oracle.from_nodes(x, wigner, groups, x_edge)
        out = factored.from_nodes(x, wigner, groups, x_edge, scalar_input)
        assert expected.abs().max() > 1e-3
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-10 * expected.abs().max().item())


@pytest.mark.parametrize(("lmax_list", "mmax_list"), LAYOUTS)
def test_rotate_back_sum_equals_dense_rotation_and_scatter(lmax_list, mmax_list):
    layout = CoefficientLayout(lmax_list, mmax_list)
    num_nodes, num_edges, channels = 7, 30, 2
    edge_index, vectors, gen = _graph(num_nodes, num_edges, seed=3)
    rotation = EdgeRotation(layout).double()
    wigner = rotation(vectors)
    y = torch.randn(num_edges, layout.num_m_major, channels, dtype=F64, generator=gen)
    expected = torch.zeros(num_nodes, layout.num_full, channels, dtype=F64)
    expected.index_add_(0, edge_index[1], rotation.to_dense(wigner).transpose(1, 2) @ y)
    rotate_back = RotateBackSum(layout)
    out = rotate_back(wigner, y[:, rotate_back.rows], group_by_node(edge_index[1], num_nodes))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_edges_are_grouped_in_order_with_padding():
    index = torch.tensor([2, 0, 2, 2, 1])
    groups = group_by_node(index, 4)
    assert groups.slots.shape == (4, 3)  # node 2 has the most edges (3); node 3 has none
    assert groups.slot.tolist() == [6, 0, 7, 8, 3]
    assert groups.slots.tolist() == [[1, 5, 5], [4, 5, 5], [0, 2, 3], [5, 5, 5]]  # 5 = empty
    empty = group_by_node(torch.zeros(0, dtype=torch.long), 3)
    assert empty.slots.shape == (3, 0)


CONFIG = dict(
    num_layers=3, lmax_list=[3], mmax_list=[2], sphere_channels=4, hidden_channels=6,
    edge_channels=5, cutoff=6.0, otf_graph=False,
)  # fmt: skip


@pytest.mark.parametrize("overrides", [{}, dict(lmax_list=[3, 2], mmax_list=[2, 1])])
def test_model_default_equals_edge_by_edge_oracle(float64_default, overrides):
    """Energies, forces and every parameter gradient of the default model equal the
    ``escn`` oracle's with the same weights."""
    config = dict(CONFIG, **overrides)
    torch.manual_seed(0)
    oracle = escn_plugin.eSCN(**config, so2_impl="escn")
    fast = escn_plugin.eSCN(**config)
    assert fast.layers[1].message.so2_source.__class__.__name__ == "FactoredSO2Convolution"
    with torch.no_grad():  # spread the weights: O(1) outputs
        for p in oracle.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    fast.load_state_dict(oracle.state_dict())
    batch = make_batch(slabs())
    outputs = []
    for model in (oracle, fast):
        out = model(batch)
        loss = out["energy"].sum() + out["forces"].pow(2).sum()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        outputs.append((out["energy"], out["forces"], grads))
    (e_ref, f_ref, g_ref), (e, f, g) = outputs
    assert f_ref.abs().max() > 1e-3
    torch.testing.assert_close(e, e_ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(f, f_ref, rtol=0, atol=1e-10 * f_ref.abs().max().item())
    for a, b in zip(g, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10 * max(b.abs().max().item(), 1e-3))


def test_message_edges_bundle_rotation_rows_and_both_groupings():
    edge_index = torch.tensor([[0, 1, 1], [1, 0, 2]])
    edges = message_edges(torch.ones(3, 5), edge_index, 3)
    assert edges.source.slots.shape == (3, 2) and edges.target.slots.shape == (3, 1)
    assert torch.equal(edges.target.index, edge_index[1])
