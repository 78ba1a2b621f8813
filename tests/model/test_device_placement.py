"""Device placement without a GPU: every tensor the model makes is on its inputs' device.

The interaction layers (whole graph and blocked) and the readout heads run under
FakeTensorMode on fake CUDA tensors, which raises on any operation mixing devices and on
any data-dependent one (a host-device synchronisation); no host-to-device copies are made
inside them. The input stage and the whole forward pass (checks, wrapping, neighbour list,
block plan) run on simulated CUDA tensors with real data (tests/model/device_modes.py).
"""

from __future__ import annotations

import pytest
import torch

import escn_plugin
from escn_plugin.common.edge_groups import MessageEdges, NodeGroups, message_edges
from escn_plugin.model import inputs
from escn_plugin.nn import blocked
from escn_plugin.so2 import so2_conv
from tests.helpers.structures import make_batch, slabs
from tests.model.device_modes import (
    CUDA,
    HostToDevice,
    SimulatedCuda,
    fake_cuda,
    fake_module,
    simulated_batch,
    simulated_cuda,
    simulated_module,
    to_fake,
)

SMALL = dict(
    num_layers=2, sphere_channels=8, hidden_channels=8, edge_channels=8, num_sphere_samples=16,
    cutoff=6.0, max_neighbors=12, otf_graph=True,
)  # fmt: skip
CONFIGS = {
    "L4-M2, envelope": dict(lmax_list=[4], mmax_list=[2], envelope_exponent=5),
    "multi-resolution": dict(lmax_list=[3, 2], mmax_list=[2, 1]),
    "readout grid": dict(lmax_list=[2], mmax_list=[1], readout_grid=[8, 9],
                         grid_quadrature="gauss_legendre"),
}  # fmt: skip


def build(config: dict, **overrides) -> escn_plugin.eSCN:
    torch.manual_seed(0)
    return escn_plugin.eSCN(**{**SMALL, **config, **overrides}).eval()


@pytest.fixture(scope="module")
def batch():
    return make_batch(slabs(), dtype=torch.float32, edges=False)


def layer_inputs(model, batch):
    """Real CPU inputs of run_layers: x, basis, Z, edge_index, edges, envelope."""
    with torch.no_grad():
        graph = model.prepare_graph(batch)
        z = batch.atomic_numbers.long()
        x = model.embed_atoms(z)
        wigner, basis, weight = model.edge_tensors(
            graph.edge_distance_vec, graph.edge_distance, None, x.dtype
        )
        edges = message_edges(wigner, graph.edge_index, x.shape[0])
    return graph, (x, basis, z, graph.edge_index, edges, weight)


def fake_tree(value):
    """Fake CUDA copies of the tensors in run_layers' arguments."""
    if isinstance(value, torch.Tensor):
        return to_fake(value)
    if isinstance(value, MessageEdges):
        return MessageEdges(
            fake_tree(value.wigner), fake_tree(value.source), fake_tree(value.target)
        )
    if isinstance(value, NodeGroups):
        return NodeGroups(*(to_fake(t) for t in value))
    return value


def assert_on_cuda(*tensors):
    for t in tensors:
        assert t.device == CUDA, t.device


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("grad", [False, True])
def test_run_layers_on_fake_cuda(batch, name, grad):
    """The whole-graph layers (with grad mode on too: the training path's branches)."""
    model = build(CONFIGS[name])
    _, args = layer_inputs(model, batch)
    with fake_cuda():
        fake = fake_module(model)
        fake_args = [fake_tree(a) for a in args]
        copies = HostToDevice()
        with torch.set_grad_enabled(grad), copies:
            out = fake.run_layers(*fake_args)
    assert_on_cuda(out)
    assert out.shape == args[0].shape
    assert copies.ops == []


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_blocked_layers_on_fake_cuda(batch, name):
    model = build(CONFIGS[name])
    graph, (x, _, z, edge_index, _, _) = layer_inputs(model, batch)
    plan = blocked.plan_blocks(edge_index, x.shape[0], 40)
    assert len(plan.blocks) > 2
    with fake_cuda():
        fake = fake_module(model)
        fake_plan = plan.to(to_fake)
        vec, dist = to_fake(graph.edge_distance_vec), to_fake(graph.edge_distance)
        fx, fz, fedges = to_fake(x), to_fake(z), to_fake(edge_index)
        copies = HostToDevice()
        with copies:
            out = blocked.run_blocked_layers(
                fake.layers, fx, fz, fedges, fake_plan,
                lambda e: fake.edge_tensors(vec[e], dist[e], None, fx.dtype),
            )  # fmt: skip
    assert_on_cuda(out)
    assert copies.ops == []


@pytest.mark.parametrize("node_block", [None, 2])
def test_heads_on_fake_cuda(node_block):
    model = build(CONFIGS["multi-resolution"])
    x = torch.randn(5, model.layout.num_full, model.sphere_channels)
    data = type("Data", (), {})()
    with fake_cuda():
        fake = fake_module(model)
        data.batch, data.natoms = to_fake(torch.zeros(5, dtype=torch.long)), to_fake(torch.ones(1))
        emb = dict(
            sphere_coefficients=to_fake(x), sphere_sampler=fake.sphere_sampler,
            sphere_points=fake.sphere_points, sphere_weights=fake.sphere_weights,
            node_block=node_block,
        )  # fmt: skip
        copies = HostToDevice()
        with copies:
            energy = fake.energy_head(data, emb)["energy"]
            forces = fake.force_head(data, emb)["forces"]
    assert_on_cuda(energy, forces)
    assert forces.shape == (5, 3) and copies.ops == []


def test_control_fake_cuda_catches_a_cpu_constant(batch, monkeypatch):
    """The check can fail: a per-call CPU constant in the SO(2) block raises, and a
    per-call host-to-device constant is recorded."""
    model = build(CONFIGS["L4-M2, envelope"])
    _, args = layer_inputs(model, batch)

    def on_cpu(like):
        return torch.tensor([-1.0, 1.0], dtype=like.dtype).view(1, 2, 1)

    monkeypatch.setattr(so2_conv, "_sign", on_cpu)
    with fake_cuda():
        fake, fake_args = fake_module(model), [fake_tree(a) for a in args]
        with pytest.raises(RuntimeError, match="two different devices"):
            fake.run_layers(*fake_args)

    def from_host(like):
        return torch.tensor([-1.0, 1.0], dtype=like.dtype, device=like.device).view(1, 2, 1)

    monkeypatch.setattr(so2_conv, "_sign", from_host)
    with fake_cuda():
        fake, fake_args = fake_module(model), [fake_tree(a) for a in args]
        copies = HostToDevice()
        with copies:
            fake.run_layers(*fake_args)
    assert copies.ops


def test_control_fake_cuda_refuses_a_host_sync(batch, monkeypatch):
    """A data-dependent value (a host-device synchronisation) inside the layers raises."""
    model = build(CONFIGS["L4-M2, envelope"])
    _, args = layer_inputs(model, batch)
    original = so2_conv._sign

    def syncing(like):
        int(like.abs().max() > 0)  # .item(): waits for the device
        return original(like)

    monkeypatch.setattr(so2_conv, "_sign", syncing)
    with fake_cuda():
        fake, fake_args = fake_module(model), [fake_tree(a) for a in args]
        with pytest.raises(Exception, match="aten._local_scalar_dense|data-dependent"):
            fake.run_layers(*fake_args)


def test_edge_vectors_on_fake_cuda(batch):
    model = build(CONFIGS["L4-M2, envelope"])
    graph, _ = layer_inputs(model, batch)
    cell = batch.cell.view(-1, 3, 3)
    with fake_cuda():
        vec, offsets = inputs.edge_vectors(
            to_fake(batch.pos), to_fake(cell), to_fake(batch.batch),
            to_fake(graph.edge_index), to_fake(graph.cell_offsets),
        )  # fmt: skip
    assert_on_cuda(vec, offsets)


def test_simulated_cuda_catches_a_mixup():
    """The simulated device raises where CUDA would, and allows what CUDA allows."""
    with simulated_cuda():
        x = SimulatedCuda(torch.arange(6.0).view(2, 3))
        with pytest.raises(RuntimeError, match="same device"):
            x + torch.ones(2, 3)
        assert (x + torch.tensor(1.0)).device == CUDA  # CPU scalars are fine
        assert x[torch.tensor([1])].device == CUDA  # and CPU indices
        assert torch.zeros(2, device=x.device).device == CUDA
        assert x.cpu().device.type == "cpu" and float(x.sum()) == 15.0


@pytest.mark.parametrize("pbc", [True, False])
def test_input_checks_on_simulated_cuda(batch, pbc):
    """check_atoms/check_cells/check_overlaps, wrap_positions and edge_vectors keep every
    tensor on the input's device, and still raise their named errors there."""
    data = simulated_batch(batch)
    with simulated_cuda():
        inputs.check_atoms(data, 90)
        inputs.check_cells(data, pbc)
        inputs.check_overlaps(data, pbc)
        periodic = inputs.periodic_axes(data, pbc)
        wrapped = inputs.wrap_positions(data.pos, data.cell.view(-1, 3, 3), data.batch, periodic)
        assert_on_cuda(periodic, wrapped)
        bad = simulated_batch(batch)
        bad.pos[1] = bad.pos[0]  # an overlap
        with pytest.raises(ValueError, match="apart"):
            inputs.check_overlaps(bad, pbc)
        bad.atomic_numbers[2] = 95
        with pytest.raises(ValueError, match="atomic number 95"):
            inputs.check_atoms(bad, 90)


@pytest.mark.parametrize("block_edges", [0, 40])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_forward_on_simulated_cuda(batch, name, block_edges):
    """The whole forward pass, whole graph and blocked: outputs on the device, equal to
    the CPU outputs."""
    model = build(CONFIGS[name], inference_block_edges=block_edges)
    with torch.no_grad():
        ref = model(batch)
    cuda_model = simulated_module(model)
    data = simulated_batch(batch)
    with simulated_cuda():
        out = cuda_model(data)
    assert_on_cuda(out["energy"], out["forces"])
    torch.testing.assert_close(out["energy"].inner, ref["energy"], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out["forces"].inner, ref["forces"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("block_edges", [0, 40])
def test_forward_with_a_precomputed_graph_on_simulated_cuda(block_edges):
    """otf_graph: False: fairchem's graph code for stored edges, then ours, on the device."""
    data = make_batch(slabs(), dtype=torch.float32, edges=True, radius=6.0, max_neigh=12)
    model = build(CONFIGS["L4-M2, envelope"], otf_graph=False, inference_block_edges=block_edges)
    with torch.no_grad():
        ref = model(data)
    cuda_model = simulated_module(model)
    with simulated_cuda():
        out = cuda_model(simulated_batch(data))
    assert_on_cuda(out["energy"], out["forces"])
    torch.testing.assert_close(out["forces"].inner, ref["forces"], rtol=1e-4, atol=1e-7)


def test_gradient_forces_graph_on_simulated_cuda(batch):
    """direct_forces: False builds its differentiable inputs on the device (the energy's
    derivatives themselves need CUDA autograd: checked on a GPU by gpu_suite.sh)."""
    model = build(CONFIGS["L4-M2, envelope"], direct_forces=False)
    cuda_model = simulated_module(model)
    data = simulated_batch(batch)
    with simulated_cuda():
        graph = cuda_model.prepare_graph(data, exact_edge_vectors=True)
    assert_on_cuda(graph.edge_index, graph.edge_distance_vec, graph.edge_distance)


def test_training_grid_rotation_copies_nothing_from_the_host(batch):
    model = build(CONFIGS["L4-M2, envelope"], random_grid_rotation=True)
    _, args = layer_inputs(model, batch)
    with fake_cuda():
        fake = fake_module(model).train()
        fake_args = [fake_tree(a) for a in args]
        copies = HostToDevice()
        with copies:
            fake.run_layers(*fake_args)
    assert copies.ops == []
