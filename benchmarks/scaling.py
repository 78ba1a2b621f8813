"""Scaling of our eSCN (escn_plugin.eSCN): forward+backward time vs graph size and vs lmax.

* ``atoms``: L6-M2 (C=128, H=256, edge 128) on batches of 1, 2, 4, ... OC20-like slabs
  (fcc(111) 4x4x4 + adsorbate, 65..68 atoms each; cutoff 12 Å, 20 neighbours, so 20 edges
  per atom);
* ``lmax``: L = 2..8 with M = 2 (same widths) on a fixed batch.

Loss = energy.sum() + forces.pow(2).sum(); float32; medians of repeats interleaved over the
sweep's points (one model per L built up front, so a changing machine load hits all alike).

Usage::

    python benchmarks/scaling.py --quick
    python benchmarks/scaling.py --what atoms --systems 1 2 4 --out benchmarks/results/scaling
    python benchmarks/scaling.py --device cuda --out benchmarks/results/scaling_cuda
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402


def sweep_atoms(args) -> dict:
    device = args.device
    config = common.model_config("L6-M2", args.layers)
    model = common.build_ours(config, device)
    batches = {n: common.slab_batch(n, tuple(args.size), device) for n in args.systems}
    fns = {n: (lambda b=b: common.forward_backward(model, b)) for n, b in batches.items()}
    print(f"[atoms] L6-M2, {args.layers} layers, systems {args.systems}", flush=True)
    timing = common.interleaved_medians(fns, args.repeats, device, warmup=1)
    rows = []
    for n, b in batches.items():
        row = dict(
            systems=n,
            atoms=int(b.natoms.sum()),
            edges=common.count_edges(model, b),
            **{k: v for k, v in timing[n].items()},
        )
        if args.memory:  # tensors' peak of one more forward+backward (CPU: profiler)
            if device.startswith("cuda"):
                row["peak_mib"] = common.peak_memory_mib(fns[n], device)["peak_increase_mib"]
            else:
                row["peak_mib"] = common.peak_live_tensors_mib(fns[n])
        rows.append(row)
    return dict(layers=args.layers, rows=rows)


def sweep_lmax(args) -> dict:
    device = args.device
    batch = common.slab_batch(args.lmax_systems, tuple(args.size), device)
    models = {}
    for lmax in args.lmax:
        config = common.model_config(
            "L6-M2", args.layers, lmax_list=[lmax], mmax_list=[min(args.mmax, lmax)]
        )
        models[lmax] = common.build_ours(config, device)
    edges = common.count_edges(next(iter(models.values())), batch)
    fns = {lmax: (lambda m=m: common.forward_backward(m, batch)) for lmax, m in models.items()}
    print(f"[lmax] M={args.mmax}, {args.layers} layers, L {args.lmax}, {edges} edges", flush=True)
    timing = common.interleaved_medians(fns, args.repeats, device, warmup=1)
    rows = []
    for lmax, m in models.items():
        rows.append(
            dict(
                lmax=lmax,
                mmax=min(args.mmax, lmax),
                K=m.layout.num_full,
                K_M=m.layout.num_m_major,
                params=sum(p.numel() for p in m.parameters()),
                **timing[lmax],
            )
        )
    return dict(
        layers=args.layers,
        systems=args.lmax_systems,
        atoms=int(batch.natoms.sum()),
        edges=edges,
        rows=rows,
    )


def report(args, machine: dict, results: dict) -> str:
    lines = ["## Scaling of our eSCN (forward + backward)", ""]
    lines += common.machine_lines(machine)
    lines += [
        "- float32, cutoff 12 Å, max_neighbors 20, otf_graph; loss = energy.sum() + "
        "forces.pow(2).sum(); medians of repeats interleaved over the sweep",
    ]
    if "atoms" in results:
        r = results["atoms"]
        first = r["rows"][0]
        lines += [
            "",
            f"### vs graph size: L6-M2, C=128, H=256, **{r['layers']} layers**, batches of "
            f"fcc(111) {'x'.join(map(str, args.size))} slabs + adsorbate",
            "",
            "| systems | atoms | edges | repeats | fwd+bwd | per atom | per edge | "
            "time / first time | edges / first edges | peak tensors fwd+bwd | per atom |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            peak = row.get("peak_mib")
            memory = f"{peak:.0f} MiB | {peak * 1024 / row['atoms']:.0f} KiB" if peak else "– | –"
            lines.append(
                f"| {row['systems']} | {row['atoms']} | {row['edges']} | {row['n']} | "
                f"{common.fmt_time(row['median'])} | "
                f"{common.fmt_time(row['median'] / row['atoms'])} | "
                f"{common.fmt_time(row['median'] / row['edges'])} | "
                f"{row['median'] / first['median']:.2f} | {row['edges'] / first['edges']:.2f} | "
                f"{memory} |"
            )
    if "lmax" in results:
        r = results["lmax"]
        lines += [
            "",
            f"### vs L (M = {args.mmax}): C=128, H=256, **{r['layers']} layers**, "
            f"{r['systems']} system(s), {r['atoms']} atoms, {r['edges']} edges",
            "",
            "| L | M | K = (L+1)^2 | K_M (edge frame) | params | repeats | fwd+bwd | per edge |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in r["rows"]:
            lines.append(
                f"| {row['lmax']} | {row['mmax']} | {row['K']} | {row['K_M']} | "
                f"{row['params']:,} | {row['n']} | {common.fmt_time(row['median'])} | "
                f"{common.fmt_time(row['median'] / r['edges'])} |"
            )
    return "\n".join(lines)


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    panels = [k for k in ("atoms", "lmax") if k in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, key in zip(axes[0], panels):
        rows = results[key]["rows"]
        t = [row["median"] for row in rows]
        lo = [row["median"] - row["min"] for row in rows]
        hi = [row["max"] - row["median"] for row in rows]
        if key == "atoms":
            x = [row["edges"] for row in rows]
            ax.errorbar(x, t, yerr=[lo, hi], marker="o", capsize=3, label="ours (median, range)")
            ax.plot(x, [t[0] * xi / x[0] for xi in x], "k--", lw=0.8, label="linear in edges")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("edges in the batch (20 per atom)")
            ax.set_title(f"L6-M2, {results[key]['layers']} layers: time vs graph size")
        else:
            x = [row["lmax"] for row in rows]
            ax.errorbar(x, t, yerr=[lo, hi], marker="o", capsize=3, label="ours (median, range)")
            ax.set_yscale("log")
            ax.set_xlabel("L (M = 2)")
            ax.set_title(
                f"{results[key]['layers']} layers, {results[key]['edges']} edges: time vs L"
            )
        ax.set_ylabel("forward + backward [s]")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge(args) -> int:
    """Combine earlier runs (their --out .json): rows of each sweep concatenated, sorted."""
    payloads = [json.loads(Path(f).read_text()) for f in args.merge]
    results: dict = {}
    for payload in payloads:
        for key, part in payload["results"].items():
            if key not in results:
                results[key] = dict(part, rows=[])
            results[key]["rows"] += part["rows"]
    for key, sort_key in (("atoms", "edges"), ("lmax", "lmax")):
        if key in results:
            results[key]["rows"].sort(key=lambda row, k=sort_key: row[k])
    machine = payloads[0]["machine"]
    machine["merged_from"] = [str(f) for f in args.merge]
    for key in ("size", "mmax", "device"):
        setattr(args, key, payloads[0]["args"][key])
    return common.publish(args, machine, results, report, plot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--what", nargs="+", default=["atoms", "lmax"], choices=["atoms", "lmax"])
    parser.add_argument("--layers", type=int, help="layers (default 12 on cuda, 2 on cpu)")
    parser.add_argument("--systems", type=int, nargs="+", help="batch sizes for 'atoms'")
    parser.add_argument("--size", type=int, nargs=3, default=[4, 4, 4], help="slab size")
    parser.add_argument("--lmax", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8])
    parser.add_argument("--mmax", type=int, default=2)
    parser.add_argument("--lmax-systems", type=int, help="systems in the batch for 'lmax'")
    parser.add_argument(
        "--memory", action="store_true", help="'atoms': also the peak memory of each batch"
    )
    parser.add_argument("--repeats", type=int, help="timed repeats (default 3, cuda 10)")
    parser.add_argument("--quick", action="store_true", help="1 layer, small sweeps, 2 repeats")
    parser.add_argument(
        "--merge", nargs="+", metavar="JSON", help="no measurement: merge earlier --out .json"
    )
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args)
    cuda = args.device.startswith("cuda")
    if args.quick:
        args.layers = args.layers or 1
        args.systems = args.systems or [1, 2]
        args.lmax = [2, 4, 6] if args.lmax == parser.get_default("lmax") else args.lmax
        args.repeats = args.repeats or 2
    args.layers = args.layers or (12 if cuda else 2)
    args.systems = args.systems or ([1, 2, 4, 8, 16] if cuda else [1, 2, 4])
    args.lmax_systems = args.lmax_systems or (2 if cuda else 1)
    args.repeats = args.repeats or (10 if cuda else 3)
    common.setup(args)
    machine = common.machine_info(args.device)
    results = {}
    if "atoms" in args.what:
        results["atoms"] = sweep_atoms(args)
    if "lmax" in args.what:
        results["lmax"] = sweep_lmax(args)
    return common.publish(args, machine, results, report, plot)


if __name__ == "__main__":
    sys.exit(main())
