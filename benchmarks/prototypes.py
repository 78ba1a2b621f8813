"""A/B prototypes of optimisations of escn_plugin (evidence for benchmarks/README.md).

Nothing in escn_plugin is changed: each variant is a subclass whose ``forward`` is swapped
into a copy of a converted model (``module.__class__ = Variant``), so the weights are
identical. The script checks energies, forces and parameter gradients against the unmodified
model, then times forward+backward of the reference, ours and the variants (interleaved
repeats, medians).

Variants (combine with ``+``):

* ``split``: ``torch.split`` instead of slicing in the SO(2) blocks (the backward of a
  slice zero-fills the whole input; the backward of ``split`` is one ``cat``);
* ``twobmm``: rotate ``x[source]`` and ``x[target]`` with two bmm instead of cat + slice;
* ``factored``: the SO(2) input projections factored through the rotation: per node
  ``z[n, k, :] = W_in[:, l(k), :] x[n, k, :]``, per edge the Wigner rows of each m-group
  summed over l times ``z`` of its node, edges grouped by node so that this is a bmm;
* ``lowmem`` (implies ``factored``): plus an ``index_add`` whose backward keeps only the
  index, and recomputation of the edge-grid activation in the backward.

Usage::

    python benchmarks/prototypes.py --threads 1 --clock cpu --variants split+twobmm split+factored
    python benchmarks/prototypes.py --memory --variants split+factored split+lowmem
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch.utils.checkpoint import checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

from escn_plugin.nn.message import MessageBlock  # noqa: E402
from escn_plugin.so2.so2_conv import (  # noqa: E402
    SO2Convolution,
    SO2OrderConvolution,
    complex_combine,
)


class SO2Split(SO2Convolution):
    def forward(self, x: torch.Tensor, x_edge: torch.Tensor) -> torch.Tensor:
        num_edges, channels = x.shape[0], self.sphere_channels
        sizes = [self.layout.m_size[0]] + [2 * n for n in self.layout.m_size[1:]]
        parts = torch.split(x, sizes, dim=1)  # m = 0 group, then (+m, -m) pairs
        x0 = parts[0].reshape(num_edges, -1)
        out = [self.m0_out(self.m0_in(x0) * self.act(self.edge_m0(x_edge)))]
        for conv, xm in zip(self.orders, parts[1:]):
            out.append(conv(xm.reshape(num_edges, 2, -1), x_edge))
        return torch.cat([o.reshape(num_edges, -1, channels) for o in out], dim=1)


class SO2OrderSplit(SO2OrderConvolution):
    def forward(self, xm: torch.Tensor, x_edge: torch.Tensor) -> torch.Tensor:
        gate = self.act(self.edge_gate(x_edge)).unsqueeze(1)
        h_r, h_i = (self.in_proj(xm) * gate).split(self.hidden_channels, dim=-1)
        return complex_combine(self.out_r(h_r), self.out_i(h_i))


class MessageTwoBmm(MessageBlock):
    def forward(self, x, basis, atomic_numbers, edge_index, wigner):
        source, target = edge_index
        x_edge = self.edge_features(basis, atomic_numbers[source], atomic_numbers[target])
        y = self.so2_source(torch.bmm(wigner, x[source]), x_edge)
        y = y + self.so2_target(torch.bmm(wigner, x[target]), x_edge)
        y = torch.bmm(wigner.transpose(1, 2), self.grid_act(y))
        out = torch.zeros(x.shape[0], *y.shape[1:], dtype=y.dtype, device=y.device)
        return out.index_add_(0, target, y)


def node_slots(index: torch.Tensor, num_nodes: int) -> tuple[torch.Tensor, int]:
    """Slot of each edge in a padded [num_nodes * width] layout grouped by ``index``."""
    order = torch.argsort(index, stable=True)
    counts = torch.bincount(index, minlength=num_nodes)
    width = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    sorted_index = index[order]
    positions = torch.arange(index.shape[0], device=index.device) - starts[sorted_index]
    slot = torch.empty_like(order)
    slot[order] = sorted_index * width + positions
    return slot, width


def grouped_rows_times_nodes(d, z, slot, width):
    """``out[e] = d[e] @ z[node(e)]``: d [E, r, K], z [N, K, F] -> [E, r, F], as one bmm."""
    num_nodes = z.shape[0]
    padded = d.new_zeros(num_nodes * width, *d.shape[1:]).index_copy(0, slot, d)
    out = torch.bmm(padded.view(num_nodes, -1, d.shape[-1]), z)
    return out.view(num_nodes * width, d.shape[1], -1).index_select(0, slot)


class IndexAddNoSave(torch.autograd.Function):
    """Sum rows into ``num`` zero rows; the backward keeps only the index (torch's
    ``IndexAddBackward0`` saves the whole source, for its shape)."""

    @staticmethod
    def forward(ctx, index, src, num):
        ctx.save_for_backward(index)
        return src.new_zeros(num, *src.shape[1:]).index_add_(0, index, src)

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return None, grad.index_select(0, index), None


class MessageFactored(MessageBlock):
    low_memory = False

    def forward(self, x, basis, atomic_numbers, edge_index, wigner):
        source, target = edge_index
        num_nodes = x.shape[0]
        layout = self.so2_source.layout
        x_edge = self.edge_features(basis, atomic_numbers[source], atomic_numbers[target])
        # Wigner rows of each m-group summed over l (the l-blocks have disjoint columns),
        # columns with l >= m only: [E, 1 or 2, K_m]
        rows = []
        for m in range(layout.mmax + 1):
            plus, minus = layout.m_slices(m)
            group = [wigner[:, plus].sum(1)] + ([wigner[:, minus].sum(1)] if m else [])
            rows.append(torch.stack(group, 1)[:, :, m * m :])
        y = 0
        for conv, index in ((self.so2_source, source), (self.so2_target, target)):
            slot, width = node_slots(index, num_nodes)
            pre = []
            for m in range(layout.mmax + 1):
                weight = conv.m0_in.weight if m == 0 else conv.orders[m - 1].in_proj.weight
                degree = [l - m for l in range(m, layout.lmax + 1) for _ in range(2 * l + 1)]
                w = weight.view(weight.shape[0], -1, conv.sphere_channels)
                w = w.index_select(1, torch.tensor(degree, device=x.device))  # [H_m, K_m, C]
                z = torch.bmm(x[:, m * m :].transpose(0, 1), w.permute(1, 2, 0))  # [K_m, N, H_m]
                pre.append(grouped_rows_times_nodes(rows[m], z.transpose(0, 1), slot, width))
            y = y + self._so2_after_input(conv, pre, x_edge)
        if self.low_memory:
            y = checkpoint(self.grid_act, y, use_reentrant=False)
        else:
            y = self.grid_act(y)
        y = torch.bmm(wigner.transpose(1, 2), y)
        if self.low_memory:
            return IndexAddNoSave.apply(target, y, num_nodes)
        out = torch.zeros(num_nodes, *y.shape[1:], dtype=y.dtype, device=y.device)
        return out.index_add_(0, target, y)

    @staticmethod
    def _so2_after_input(conv, pre, x_edge):
        num_edges, channels = pre[0].shape[0], conv.sphere_channels
        out = [conv.m0_out(pre[0][:, 0] * conv.act(conv.edge_m0(x_edge)))]
        for order, hidden in zip(conv.orders, pre[1:]):
            gate = order.act(order.edge_gate(x_edge)).unsqueeze(1)
            h_r, h_i = (hidden * gate).split(conv.hidden_channels, dim=-1)
            out.append(complex_combine(order.out_r(h_r), order.out_i(h_i)))
        return torch.cat([o.reshape(num_edges, -1, channels) for o in out], dim=1)


class MessageLowMemory(MessageFactored):
    low_memory = True


def apply_variant(model: torch.nn.Module, variant: str) -> torch.nn.Module:
    parts = set(variant.split("+"))
    unknown = parts - {"split", "twobmm", "factored", "lowmem"}
    if unknown:
        raise SystemExit(f"unknown variant parts {sorted(unknown)}")
    model = copy.deepcopy(model)
    for module in model.modules():
        if "split" in parts and type(module) is SO2Convolution:
            module.__class__ = SO2Split
        if "split" in parts and type(module) is SO2OrderConvolution:
            module.__class__ = SO2OrderSplit
        if type(module) is MessageBlock:
            if "lowmem" in parts:
                module.__class__ = MessageLowMemory
            elif "factored" in parts:
                module.__class__ = MessageFactored
            elif "twobmm" in parts:
                module.__class__ = MessageTwoBmm
    return model


def relative_max(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--config", default="L6-M2", choices=list(common.CONFIGS))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--systems", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=["split+twobmm", "split+factored"])
    parser.add_argument("--memory", action="store_true", help="tensor memory peaks, no timing")
    args = parser.parse_args(argv)
    common.setup(args)
    from full_model import spread_weights_

    from escn_plugin.convert import convert_state_dict

    device = args.device
    batch = common.slab_batch(args.systems, device=device)
    ref = common.build_reference(common.model_config(args.config, args.layers), device)
    spread_weights_(ref)  # O(1) outputs: relative differences mean something
    ours = common.build_ours(common.model_config(args.config, args.layers), device)
    ours.load_state_dict(convert_state_dict(ref.state_dict()))
    models = {"ref": ref, "ours": ours}
    models.update({v: apply_variant(ours, v) for v in args.variants})

    with torch.no_grad():
        base = ours(batch)
    common.forward_backward(ours, batch)
    base_grads = [p.grad.clone() for p in ours.parameters()]
    for variant in args.variants:
        model = models[variant]
        with torch.no_grad():
            out = model(batch)
        common.forward_backward(model, batch)
        grad = max(relative_max(p.grad, g) for p, g in zip(model.parameters(), base_grads))
        print(
            f"{variant}: vs ours, rel max |dE| {relative_max(out['energy'], base['energy']):.1e}"
            f", |dF| {relative_max(out['forces'], base['forces']):.1e}, grads {grad:.1e}"
        )
    if args.memory:
        for name, model in models.items():
            peak = common.peak_live_tensors_mib(lambda m=model: common.forward_backward(m, batch))
            print(f"{name:24s} fwd+bwd tensors peak {peak:.0f} MiB")
        return 0
    fns = {k: (lambda m=m: common.forward_backward(m, batch)) for k, m in models.items()}
    timing = common.interleaved_medians(fns, args.repeats, device, warmup=0)
    ref_time = timing["ref"]["median"]
    print(
        f"\n{args.config}-Lay{args.layers}, {common.count_edges(ours, batch)} edges, "
        "forward+backward:"
    )
    for name, t in timing.items():
        print(
            f"{name:24s} {common.fmt_time(t['median'])}  "
            f"speed-up vs ref {ref_time / t['median']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
