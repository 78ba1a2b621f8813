"""Blocked inference (escn_plugin/nn/blocked.py) computes what the whole-graph pass computes.

float64, a periodic batch of three systems, weights re-drawn so that messages matter. Each
comparison first checks that the blocked path really ran with several blocks.
"""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk

import escn_plugin
from escn_plugin.model import escn as escn_module
from escn_plugin.nn import EnergyReadout, ForceReadout, blocked
from tests.helpers.structures import make_batch, slabs

SMALL = dict(
    num_layers=2, sphere_channels=8, hidden_channels=8, edge_channels=8, num_sphere_samples=16,
    cutoff=6.0, max_neighbors=12, otf_graph=True, envelope_exponent=5,
)  # fmt: skip
CONFIGS = {
    "L4-M2": dict(lmax_list=[4], mmax_list=[2]),
    "multi-resolution": dict(lmax_list=[3, 2], mmax_list=[2, 1]),
}


def systems():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    cu.rattle(0.05, seed=3)
    return [*slabs(), cu]


def build(config: dict, **overrides) -> escn_plugin.eSCN:
    torch.manual_seed(0)
    model = escn_plugin.eSCN(**{**SMALL, **config, **overrides}).double().eval()
    with torch.no_grad():
        for p in model.parameters():  # the default init makes messages ~1e-3 of the rest
            p.normal_(0.0, 0.5 / max(p.shape[-1], 1) ** 0.5 if p.dim() > 1 else 0.5)
    return model


@pytest.fixture(scope="module")
def batch():
    return make_batch(systems(), edges=False)


class Spy:
    """Counts the blocks run_blocked_layers was called with."""

    def __init__(self, monkeypatch) -> None:
        self.blocks: list[int] = []
        original = blocked.run_blocked_layers

        def spy(layers, x, atomic_numbers, edge_index, plan, edge_tensors):
            self.blocks.append(len(plan.blocks))
            return original(layers, x, atomic_numbers, edge_index, plan, edge_tensors)

        monkeypatch.setattr(escn_module, "run_blocked_layers", spy)


def run(model, batch, block_edges):
    model.inference_block_edges = block_edges
    with torch.no_grad():
        return model(batch)


def assert_same(out, ref, rtol=1e-10):
    for key in ("energy", "forces"):
        scale = ref[key].abs().max()
        assert scale > 0
        err = (out[key] - ref[key]).abs().max()
        assert err <= rtol * scale, f"{key}: {err:.3g} vs scale {scale:.3g}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("block_edges", [1, 5, 64, "all but one"])
def test_blocked_equals_whole_graph(batch, monkeypatch, name, block_edges):
    model = build(CONFIGS[name])
    ref = run(model, batch, 0)  # 0: blocking off
    num_edges = model.prepare_graph(batch).edge_index.shape[1]
    block_edges = num_edges - 1 if block_edges == "all but one" else block_edges
    spy = Spy(monkeypatch)
    out = run(model, batch, block_edges)
    assert len(spy.blocks) == 1 and spy.blocks[0] > 1
    if block_edges == 1:  # one target atom per block
        assert spy.blocks[0] == batch.pos.shape[0]
    assert_same(out, ref)


def test_one_block_of_every_node_equals_whole_graph(batch):
    """The single-block plan (which the model hands to the whole-graph pass) through the
    blocked loop: the local graph of every target is the graph itself."""
    model = build(CONFIGS["multi-resolution"])
    z = batch.atomic_numbers.long()
    with torch.no_grad():
        graph = model.prepare_graph(batch)
        x = model.embed_atoms(z)
        vec, dist = graph.edge_distance_vec, graph.edge_distance
        plan = blocked.plan_blocks(graph.edge_index, x.shape[0], graph.edge_index.shape[1])
        assert len(plan.blocks) == 1
        out = blocked.run_blocked_layers(
            model.layers, x.clone(), z, graph.edge_index, plan,  # it overwrites its input
            lambda e: model.edge_tensors(vec[e], dist[e], None, x.dtype),
        )  # fmt: skip
        wigner, basis, weight = model.edge_tensors(vec, dist, None, x.dtype)
        edges = blocked.MessageEdges(wigner, plan.blocks[0].source, plan.blocks[0].target)
        ref = model.run_layers(x, basis, z, graph.edge_index, edges, weight)
    assert ref.abs().max() > 0
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)


def test_control_a_wrong_local_graph_is_caught(batch, monkeypatch):
    """The comparison can fail: swapping two local source nodes of a block changes forces."""
    model = build(CONFIGS["L4-M2"])
    ref = run(model, batch, 0)
    original = blocked.plan_blocks

    def broken(edge_index, num_nodes, max_edges):
        plan = original(edge_index, num_nodes, max_edges)
        block = plan.blocks[0]
        n = block.node_stop - block.node_start
        nodes = block.nodes.clone()
        nodes[n], nodes[n + 1] = block.nodes[n + 1], block.nodes[n]  # two outside sources
        plan.blocks[0] = blocked.TargetBlock(
            block.node_start, block.node_stop, block.edge_start, block.edge_stop, nodes,
            block.source, block.target,
        )  # fmt: skip
        return plan

    monkeypatch.setattr(escn_module, "plan_blocks", broken)
    out = run(model, batch, 40)
    err = (out["forces"] - ref["forces"]).abs().max()
    assert err > 1e-6 * ref["forces"].abs().max()


def test_precomputed_graph_out_of_target_order_is_sorted(monkeypatch):
    """A precomputed graph whose edges are not target-major (shuffled within each system,
    as fairchem's per-system offsets need) gives the whole-graph result."""
    data = make_batch(systems(), edges=True, radius=6.0, max_neigh=12)
    generator = torch.Generator().manual_seed(0)
    order, start = [], 0
    for count in data.neighbors.tolist():
        order.append(start + torch.randperm(count, generator=generator))
        start += count
    order = torch.cat(order)
    data.edge_index, data.cell_offsets = data.edge_index[:, order], data.cell_offsets[order]
    assert blocked.target_major_order(data.edge_index) is not None
    model = build(CONFIGS["L4-M2"], otf_graph=False)
    ref = run(model, data, 0)
    spy = Spy(monkeypatch)
    out = run(model, data, 30)
    assert spy.blocks and spy.blocks[0] > 1
    assert_same(out, ref)


def _fail(*args, **kwargs):
    raise AssertionError("blocked inference ran on a path that needs gradients")


@pytest.mark.parametrize("training", [False, True])
def test_gradient_paths_are_unchanged(batch, monkeypatch, training):
    """With gradients on (training or not) the blocked loop never runs and outputs and
    parameter gradients are bit-identical whatever inference_block_edges says."""
    monkeypatch.setattr(escn_module, "run_blocked_layers", _fail)
    results = []
    for block_edges in (0, 1):
        model = build(CONFIGS["L4-M2"], inference_block_edges=block_edges).train(training)
        out = model(batch)
        (out["energy"].sum() + out["forces"].pow(2).sum()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((out["energy"].detach(), out["forces"].detach(), grads))
    (e0, f0, g0), (e1, f1, g1) = results
    assert torch.equal(e0, e1) and torch.equal(f0, f1)
    assert len(g0) == len(g1) > 0 and all(torch.equal(a, b) for a, b in zip(g0, g1))


def test_gradient_forces_are_not_blocked(batch, monkeypatch):
    """direct_forces: False differentiates the energy, also under no_grad: never blocked."""
    monkeypatch.setattr(escn_module, "run_blocked_layers", _fail)
    model = build(CONFIGS["L4-M2"], direct_forces=False, inference_block_edges=1)
    out = run(model, batch, 1)
    assert out["forces"].abs().max() > 0


def test_automatic_blocks(batch, monkeypatch):
    """inference_block_edges None: blocks from the budget (here forced small) and the same
    result; on this tiny batch the real budget keeps one pass."""
    model = build(CONFIGS["L4-M2"])
    ref = run(model, batch, 0)
    spy = Spy(monkeypatch)
    run(model, batch, None)
    assert spy.blocks == []  # a few hundred edges: one block
    monkeypatch.setattr(blocked, "MIN_BLOCK_FLOPS", {"cpu": 1.0, "cuda": 1.0})
    monkeypatch.setattr(blocked, "FRACTION", 1e-3)
    out = run(model, batch, None)
    assert spy.blocks and spy.blocks[0] > 1
    assert_same(out, ref)


@pytest.mark.parametrize("node_block", [1, 3, 1000])
def test_heads_in_node_blocks(node_block):
    model = build(CONFIGS["multi-resolution"])
    x = torch.randn(7, model.layout.num_full, model.sphere_channels, dtype=torch.float64)
    energy, forces = model.energy_head.readout, model.force_head.readout
    assert isinstance(energy, EnergyReadout) and isinstance(forces, ForceReadout)
    sampler, points, weights = model.sphere_sampler, model.sphere_points, model.sphere_weights
    with torch.no_grad():
        torch.testing.assert_close(
            energy(x, sampler, weights, node_block), energy(x, sampler, weights), rtol=1e-13, atol=0
        )
        torch.testing.assert_close(
            forces(x, sampler, points, weights, node_block),
            forces(x, sampler, points, weights),
            rtol=1e-13,
            atol=1e-15,
        )


def test_plan_covers_the_graph_with_local_indices():
    """Blocks partition targets and edges in order, hold at most max_edges edges (or one
    target), list their targets first, and local indices map back to the global edges."""
    generator = torch.Generator().manual_seed(1)
    num_nodes = 40
    target = torch.sort(torch.randint(0, num_nodes, (300,), generator=generator)).values
    source = torch.randint(0, num_nodes, (300,), generator=generator)
    edge_index = torch.stack([source, target])
    plan = blocked.plan_blocks(edge_index, num_nodes, 25)
    assert len(plan.blocks) > 5
    node, edge = 0, 0
    for b in plan.blocks:
        assert (b.node_start, b.edge_start) == (node, edge)
        node, edge = b.node_stop, b.edge_stop
        n, e = b.node_stop - b.node_start, b.edge_stop - b.edge_start
        assert e <= 25 or n == 1
        assert torch.equal(b.nodes[:n], torch.arange(b.node_start, b.node_stop))
        assert b.nodes.unique().numel() == b.nodes.numel()
        assert torch.equal(b.nodes[b.source.index], source[b.edge_start : b.edge_stop])
        assert torch.equal(b.nodes[b.target.index], target[b.edge_start : b.edge_stop])
        assert b.target.slots.shape[0] == n
    assert (node, edge) == (num_nodes, 300)


def test_block_size_from_the_budget():
    """Edges per block: a fixed fraction of what the atoms hold (so memory per atom is
    flat) above the work floor, capped by free memory, never below one edge."""
    model = build(CONFIGS["L4-M2"])
    memory, cpu = model.inference_memory, torch.device("cpu")
    big = [blocked.block_edges(memory, n, 20 * n, 4, cpu, free_bytes=1e12) for n in (10**6, 10**7)]
    assert big[1] == pytest.approx(10 * big[0], rel=0.01)  # proportional to the system
    floor = blocked.block_edges(memory, 10, 200, 4, cpu, free_bytes=1e12)
    assert floor == int(blocked.MIN_BLOCK_FLOPS["cpu"] / memory.flops_per_edge)
    capped = blocked.block_edges(memory, 10**7, 2 * 10**8, 4, cpu, free_bytes=1e6)
    assert capped < big[1] and capped >= 1
    assert blocked.block_edges(memory, 10, 200, 4, cpu, free_bytes=0.0) == 1


def test_memory_estimate_is_an_upper_bound():
    """The estimate of one block holds the tensors it peaks at (torch.profiler), and is
    not loose by more than 3x (demo-like widths, float32)."""
    from torch.profiler import ProfilerActivity, profile

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3)
    atoms.rattle(0.05, seed=0)
    data = make_batch([atoms], dtype=torch.float32, edges=False)
    config = dict(lmax_list=[3], mmax_list=[2], sphere_channels=32, hidden_channels=64,
                  edge_channels=32, num_layers=1, cutoff=5.0, max_neighbors=30)  # fmt: skip
    torch.manual_seed(0)
    model = escn_plugin.eSCN(**{**SMALL, **config}).eval()
    z = data.atomic_numbers.long()
    with torch.no_grad():
        graph = model.prepare_graph(data)
        x = torch.randn(z.shape[0], model.layout.num_full, 32)
        plan = blocked.plan_blocks(graph.edge_index, z.shape[0], 600)
        block = plan.blocks[1]
        one = blocked.BlockPlan([block], plan.node_block)
        vec, dist = graph.edge_distance_vec, graph.edge_distance
        layer = model.layers[0]
        layer.message.scalar_input = False  # a later layer's full x

        def call():
            blocked.run_blocked_layers(
                [layer], x, z, graph.edge_index, one,
                lambda e: model.edge_tensors(vec[e], dist[e], None, x.dtype),
            )  # fmt: skip

        call()
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            call()
    events = sorted(
        (e for e in prof.events() if e.self_cpu_memory_usage != 0),
        key=lambda e: e.time_range.start,
    )
    current = peak = 0
    for e in events:
        current += e.self_cpu_memory_usage
        peak = max(peak, current)
    peak -= x.numel() * 4  # the output [N, K, C] of run_blocked_layers is not the block's
    edges, targets = block.edge_stop - block.edge_start, block.node_stop - block.node_start
    estimate = model.inference_memory.block_bytes(edges, targets, 4)
    assert peak < estimate < 3 * peak, (peak, estimate)


@pytest.mark.parametrize("value", [-1, 2.5, True, "auto"])
def test_bad_block_size_names_the_argument(value):
    with pytest.raises(ValueError, match="inference_block_edges"):
        escn_plugin.eSCN(**{**SMALL, **CONFIGS["L4-M2"], "inference_block_edges": value})


@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_two_buffers_take_turns(batch, monkeypatch, num_layers):
    """x [N, K, C] twice at most, whatever the depth: the embedding's buffer is reused."""
    model = build(CONFIGS["L4-M2"], num_layers=num_layers)
    z = batch.atomic_numbers.long()
    allocated, original = [], torch.empty_like

    def counting(t, *args, **kwargs):
        allocated.append(t.shape)
        return original(t, *args, **kwargs)

    with torch.no_grad():
        graph = model.prepare_graph(batch)
        x = model.embed_atoms(z)
        vec, dist = graph.edge_distance_vec, graph.edge_distance
        plan = blocked.plan_blocks(graph.edge_index, x.shape[0], 50)
        monkeypatch.setattr(torch, "empty_like", counting)
        out = blocked.run_blocked_layers(
            model.layers, x, z, graph.edge_index, plan,
            lambda e: model.edge_tensors(vec[e], dist[e], None, x.dtype),
        )  # fmt: skip
    assert allocated == [x.shape]
    assert (out.data_ptr() == x.data_ptr()) == (num_layers % 2 == 0)
