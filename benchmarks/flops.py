"""Matmul FLOPs of a training step, achieved GFLOP/s and the fraction of this machine's
fp32 matmul peak (a roofline), plus bf16 autocast time (report only).

FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over one
forward+backward of ``escn_plugin.eSCN`` (every mm/bmm/addmm/einsum, 2 FLOPs per
multiply-add), reported per edge and layer (the whole model's count divided by E x
layers: node-side work is included, spread over the edges). The peak is the best of a few
fp32 ``torch.mm`` of 2048 x 2048 on the same threads. Run it once with ``PYTHONPATH`` on
an older checkout to get the "before" figures of the same table.

Usage::

    python benchmarks/flops.py --threads 1 --clock cpu --configs L6-M2 L4-M2 --bf16
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402


def matmul_peak_gflops(device: str, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    best = min(common.timed(lambda: torch.mm(a, b), device) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def counted_flops(model, batch) -> int:
    with FlopCounterMode(display=False) as counter:
        common.forward_backward(model, batch)
    return counter.get_total_flops()


def measure_config(args, name: str) -> dict:
    config = common.model_config(name, args.layers)
    batch = common.slab_batch(args.systems, device=args.device)
    model = common.build_ours(config, args.device)
    edges = common.count_edges(model, batch)
    flops = counted_flops(model, batch)
    fns = {"fp32": lambda: common.forward_backward(model, batch)}
    if args.bf16:

        def bf16():
            with torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16):
                common.forward_backward(model, batch)

        fns["bf16 autocast"] = bf16
    timing = common.interleaved_medians(fns, args.repeats, args.device, warmup=1)
    seconds = timing["fp32"]["median"]
    row = dict(
        config=name,
        layers=args.layers,
        edges=edges,
        atoms=int(batch.natoms.sum()),
        flops=flops,
        flops_per_edge_layer=flops / edges / args.layers,
        fwd_bwd_s=seconds,
        gflops=flops / seconds / 1e9,
        timing=timing,
    )
    print(
        f"{name}: {flops / 1e9:.1f} GFLOP, {row['flops_per_edge_layer'] / 1e6:.1f} MFLOP per "
        f"edge-layer, {common.fmt_time(seconds)}, {row['gflops']:.1f} GFLOP/s",
        flush=True,
    )
    return row


def report(machine: dict, results: dict) -> str:
    peak = results["peak_gflops"]
    lines = ["## Matmul FLOPs and roofline fraction (forward+backward)", ""]
    lines += common.machine_lines(machine)
    lines += [
        f"- fp32 matmul peak (2048^3 mm, best of 5): {peak:.1f} GFLOP/s",
        "",
        "| config | atoms | edges | GFLOP | MFLOP / edge-layer | fwd+bwd | GFLOP/s | of peak "
        "| bf16 autocast | bf16 / fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        bf16 = r["timing"].get("bf16 autocast", {}).get("median")
        lines.append(
            f"| {r['config']}-Lay{r['layers']} | {r['atoms']} | {r['edges']} | "
            f"{r['flops'] / 1e9:.1f} | {r['flops_per_edge_layer'] / 1e6:.1f} | "
            f"{common.fmt_time(r['fwd_bwd_s'])} | {r['gflops']:.1f} | {r['gflops'] / peak:.0%} | "
            + (f"{common.fmt_time(bf16)} | {bf16 / r['fwd_bwd_s']:.2f} |" if bf16 else "– | – |")
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--configs", nargs="+", default=["L6-M2"], choices=list(common.CONFIGS))
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--systems", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    args = parser.parse_args(argv)
    common.setup(args)
    machine = common.machine_info(args.device)
    results = dict(peak_gflops=matmul_peak_gflops(args.device), rows=[])
    print(f"fp32 matmul peak: {results['peak_gflops']:.1f} GFLOP/s", flush=True)
    results["rows"] = [measure_config(args, name) for name in args.configs]
    payload = dict(machine=machine, args=vars(args), results=results)
    common.write_outputs(args.out, report(machine, results), payload, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
