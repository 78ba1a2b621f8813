"""Full model: ours (escn_plugin.eSCN) against the reference (fairchem's ``escn``).

Both models get the same weights (reference weights converted by
``escn_plugin.convert.convert_state_dict``) and the same float32 batch of OC20-like PBC slabs
(fcc(111) 4x4x4 + adsorbate, rattled, generic rotation; cutoff 12 Å, 20 neighbours,
``otf_graph=True``). Measured per configuration:

* forward time (grad enabled, as in a training step) and forward+backward time
  (loss = energy.sum() + forces.pow(2).sum()), medians of interleaved repeats
  (ref, ours, ours, ref, ...) in one process;
* peak memory of one forward+backward and of one inference forward (``torch.no_grad``;
  the reference turns grad on inside its forward anyway): on CPU the peak RSS increase
  measured in a fresh subprocess per measurement, on CUDA ``torch.cuda.max_memory_allocated``
  above the memory allocated before the call; minor page faults of the call on CPU;
* output agreement, with the reference's random edge frame replaced by ours.

Usage::

    python benchmarks/full_model.py --quick
    python benchmarks/full_model.py --configs L6-M2 --layers 2 --out benchmarks/results/full_cpu
    python benchmarks/full_model.py --device cuda --out benchmarks/results/full_cuda
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

SCRIPT = Path(__file__).resolve()


def spread_weights_(model: torch.nn.Module, seed: int = 1) -> None:
    """Re-draw the weights at a 1/sqrt(fan_in) scale (embeddings N(0, 1)) so that energies and
    forces are far from zero and a relative comparison means something (the reference's
    default init gives |F| ~ 1e-6 dominated by cancellation)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:  # the reference's sphere points and SH weights
                continue
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            if p.dim() == 2 and "embedding" not in name:
                p.copy_(noise / p.shape[1] ** 0.5)
            elif "embedding" in name:
                p.copy_(noise)
            else:
                p.copy_(0.1 * noise)


def compare_outputs(config: dict, batch, device: str) -> dict:
    """Max differences of energy and forces, reference (with our frames) vs ours."""
    from escn_plugin.cli.convert import convert_state_dict

    ref = common.build_reference(config, device)
    spread_weights_(ref)
    ours = common.build_ours(config, device)
    ours.load_state_dict(convert_state_dict(ref.state_dict()), strict=True)
    with common.reference_uses_our_frame(ref), torch.no_grad():
        out_ref = ref(batch)
        out_ours = ours(batch)
    result = {}
    for key in ("energy", "forces"):
        diff = (out_ours[key].double() - out_ref[key].double()).abs().max().item()
        scale = out_ref[key].double().abs().max().item()
        result[key] = dict(max_abs_diff=diff, max_abs_ref=scale, rel=diff / scale)
    return result


def memory_worker(payload: dict) -> dict:
    """Fresh process: build one model and the batch, then measure one call."""
    device = payload["device"]
    common.setup_torch(device, payload.get("threads"))
    config = common.model_config(payload["config"], payload["layers"])
    batch = common.slab_batch(payload["systems"], tuple(payload["size"]), device)
    build = common.build_reference if payload["model"] == "ref" else common.build_ours
    model = build(config, device)
    if payload["mode"] == "fwd+bwd":

        def fn():
            common.forward_backward(model, batch)
    else:

        def fn():
            with torch.no_grad():
                model(batch)

    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    result = common.peak_memory_mib(fn, device)
    result["minor_page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    if not device.startswith("cuda"):
        result["peak_live_tensors_mib"] = common.peak_live_tensors_mib(fn)  # a second call
    return result


def measure_memory(args, name: str) -> dict:
    out = {}
    for mode in ("fwd+bwd", "fwd"):
        for model in ("ref", "ours"):
            payload = dict(
                device=args.device,
                threads=args.threads,
                config=name,
                layers=args.layers,
                systems=args.systems,
                size=list(args.size),
                model=model,
                mode=mode,
            )
            runs = [common.run_worker(SCRIPT, payload) for _ in range(args.memory_repeats)]
            peaks = [r["peak_increase_mib"] for r in runs]
            out[f"{model} {mode}"] = dict(
                peak_increase_mib=sorted(peaks)[len(peaks) // 2],
                samples=peaks,
                minor_page_faults=runs[0].get("minor_page_faults"),
                peak_live_tensors_mib=runs[0].get("peak_live_tensors_mib"),
                method=runs[0]["method"],
            )
            live = runs[0].get("peak_live_tensors_mib")
            print(f"  memory {model:4s} {mode:7s}: RSS {peaks} MiB, tensors {live} MiB", flush=True)
    return out


def measure_config(args, name: str) -> dict:
    device = args.device
    config = common.model_config(name, args.layers)
    batch = common.slab_batch(args.systems, tuple(args.size), device)
    print(f"[{name}, {args.layers} layers] parity check ...", flush=True)
    parity = compare_outputs(config, batch, device)
    ref, ours = common.build_pair(config, device)
    info = dict(
        config=name,
        layers=args.layers,
        atoms=int(batch.natoms.sum()),
        systems=args.systems,
        edges=common.count_edges(ours, batch),
        params_ref=sum(p.numel() for p in ref.parameters() if p.requires_grad),
        params_ours=sum(p.numel() for p in ours.parameters()),
        parity=parity,
    )
    print(f"  {info['atoms']} atoms, {info['edges']} edges; parity {parity}", flush=True)
    fns = {
        "ref fwd": lambda: common.forward(ref, batch),
        "ours fwd": lambda: common.forward(ours, batch),
        "ref fwd+bwd": lambda: common.forward_backward(ref, batch),
        "ours fwd+bwd": lambda: common.forward_backward(ours, batch),
    }
    # warm-up: one forward each (the first forward+backward is a timed repeat's job)
    for key in ("ref fwd", "ours fwd"):
        fns[key]()
    if args.repeats > 0:
        timing = {}
        for mode in ("fwd", "fwd+bwd"):
            print(f"  timing {mode} x{args.repeats} ...", flush=True)
            pair = {f"ref {mode}": fns[f"ref {mode}"], f"ours {mode}": fns[f"ours {mode}"]}
            timing.update(common.interleaved_medians(pair, args.repeats, device, warmup=0))
        info["timing"] = timing
        info["repeats"] = args.repeats
    if args.profile:
        info["profile"] = {
            label: profile_table(model, batch, device, args.profile_rows)
            for label, model in (("ours", ours), ("ref", ref))
        }
    if not args.skip_memory:
        info["memory"] = measure_memory(args, name)
    return info


def profile_table(model, batch, device: str, rows: int) -> dict:
    """torch.profiler on one forward+backward: top ops by self time, and how much of the time
    the matrix products (mm/bmm/addmm: the SO(2) linears, rotations, grid maps) take."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    common.forward_backward(model, batch)  # warm-up outside the trace
    with profile(activities=activities, with_flops=True) as prof:
        wall = common.timed(lambda: common.forward_backward(model, batch), device)
    averages = prof.key_averages()
    table = averages.table(sort_by=sort, row_limit=rows, max_name_column_width=45)
    self_attr = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    total = sum(getattr(e, self_attr) for e in averages)
    matmul_ops = ("aten::mm", "aten::bmm", "aten::addmm")
    matmul = [e for e in averages if e.key in matmul_ops]
    matmul_time = sum(getattr(e, self_attr) for e in matmul)
    flops = sum(e.flops for e in matmul)
    by_op = {e.key: getattr(e, self_attr) / 1e6 for e in averages}
    return dict(
        table=table,
        wall_s=wall,
        self_total_s=total / 1e6,
        matmul_s=matmul_time / 1e6,
        matmul_gflop=flops / 1e9,
        top={k: v for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:rows]},
    )


def label(r: dict) -> str:
    return f"{r['config']}-Lay{r['layers']}"


def report(args, machine: dict, results: list[dict]) -> str:
    lines = ["## Full model: ours vs reference eSCN", ""]
    lines += common.machine_lines(machine)
    batches = sorted({(r["systems"], r["atoms"], r["edges"]) for r in results})
    lines += [
        f"- batch: PBC slabs fcc(111) {'x'.join(map(str, args.size))} + adsorbate, rattled, "
        "generic rotation; float32, cutoff 12 Å, max_neighbors 20, otf_graph; "
        + ", ".join(f"{s} system(s) = {a} atoms, {e} edges" for s, a, e in batches),
        "- models: C=128, H=256, edge 128 (small: L2-M1, C=32, H=64, edge 32); layers as in "
        "the config name (**the paper's models have 12**); same weights (convert_state_dict)",
        "- times: medians of interleaved repeats (ref, ours, ours, ref, ...) in one process; "
        "loss = energy.sum() + forces.pow(2).sum(); forward with grad enabled",
    ]
    timed_results = [r for r in results if "timing" in r]
    if timed_results:
        lines += [
            "",
            "| config | atoms | edges | repeats | fwd ref | fwd ours | ours/ref | fwd+bwd ref "
            "| fwd+bwd ours | ours/ref | speed-up fwd+bwd |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in timed_results:
            t = r["timing"]
            f_ref, f_ours = t["ref fwd"]["median"], t["ours fwd"]["median"]
            b_ref, b_ours = t["ref fwd+bwd"]["median"], t["ours fwd+bwd"]["median"]
            lines.append(
                f"| {label(r)} | {r['atoms']} | {r['edges']} | {r['repeats']} | "
                f"{common.fmt_time(f_ref)} | {common.fmt_time(f_ours)} | {f_ours / f_ref:.2f} | "
                f"{common.fmt_time(b_ref)} | {common.fmt_time(b_ours)} | {b_ours / b_ref:.2f} | "
                f"{b_ref / b_ours:.2f}x |"
            )
        lines += ["", "Spread (min..max over repeats):", ""]
        for r in timed_results:
            spread = ", ".join(
                f"{k} {common.fmt_time(v['min'])}..{common.fmt_time(v['max'])}"
                for k, v in r["timing"].items()
            )
            lines.append(f"- {label(r)}: {spread}")
    if any("memory" in r for r in results):
        method = next(r for r in results if "memory" in r)["memory"]["ref fwd+bwd"]["method"]
        lines += [
            "",
            f"Peak memory above the state after building model and batch ({method}"
            + ("; fresh process per measurement" if not args.device.startswith("cuda") else "")
            + "), MiB; page faults: minor page faults during the call (CPU).",
            "",
            "| config | fwd+bwd ref | fwd+bwd ours | ours/ref | inference fwd ref | "
            "inference fwd ours | ours/ref | page faults fwd+bwd ref / ours |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in results:
            if "memory" not in r:
                continue
            m = {k: v["peak_increase_mib"] for k, v in r["memory"].items()}
            pf = {k: v["minor_page_faults"] for k, v in r["memory"].items()}
            lines.append(
                f"| {label(r)} | {m['ref fwd+bwd']:.0f} | "
                f"{m['ours fwd+bwd']:.0f} | {m['ours fwd+bwd'] / m['ref fwd+bwd']:.2f} | "
                f"{m['ref fwd']:.0f} | {m['ours fwd']:.0f} | {m['ours fwd'] / m['ref fwd']:.2f} |"
                f" {pf['ref fwd+bwd']} / {pf['ours fwd+bwd']} |"
            )
        live_rows = [
            r
            for r in results
            if "memory" in r and r["memory"]["ref fwd+bwd"].get("peak_live_tensors_mib")
        ]
        if live_rows:
            lines += [
                "",
                "Peak memory held by tensors during the call above what was held before (MiB; "
                "torch.profiler memory events; independent of what the allocator caches):",
                "",
                "| config | fwd+bwd ref | fwd+bwd ours | ours/ref | inference fwd ref | "
                "inference fwd ours | ours/ref |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in live_rows:
                t = {k: v["peak_live_tensors_mib"] for k, v in r["memory"].items()}
                lines.append(
                    f"| {label(r)} | {t['ref fwd+bwd']:.0f} | {t['ours fwd+bwd']:.0f} | "
                    f"{t['ours fwd+bwd'] / t['ref fwd+bwd']:.2f} | {t['ref fwd']:.0f} | "
                    f"{t['ours fwd']:.0f} | {t['ours fwd'] / t['ref fwd']:.2f} |"
                )
    lines += [
        "",
        "Output agreement (reference's random frame replaced by ours; weights re-drawn at a "
        "1/sqrt(fan_in) scale so outputs are O(1); float32):",
        "",
        "| config | params ref / ours | max abs ΔE | max abs E | rel | max abs ΔF | max abs F "
        "| rel |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        e, f = r["parity"]["energy"], r["parity"]["forces"]
        lines.append(
            f"| {label(r)} | {r['params_ref']:,} / {r['params_ours']:,} | "
            f"{e['max_abs_diff']:.2e} | {e['max_abs_ref']:.2e} | {e['rel']:.1e} | "
            f"{f['max_abs_diff']:.2e} | {f['max_abs_ref']:.2e} | {f['rel']:.1e} |"
        )
    for r in results:
        for who, prof in r.get("profile", {}).items():
            p = prof
            lines += [
                "",
                f"Profile, {who}, {label(r)}, one forward+backward "
                f"({common.fmt_time(p['wall_s'])} under the profiler): matrix products "
                f"(mm, bmm, addmm) {p['matmul_s']:.2f} s of {p['self_total_s']:.2f} s self time "
                f"({100 * p['matmul_s'] / p['self_total_s']:.0f} %), {p['matmul_gflop']:.1f} GFLOP"
                f" = {p['matmul_gflop'] / max(p['matmul_s'], 1e-9):.1f} GFLOP/s in them",
                "",
                "```",
                p["table"].rstrip(),
                "```",
            ]
    return "\n".join(lines)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    panels = []  # (title, y label, results, getter)
    timed_results = [r for r in results if "timing" in r]
    for key, title_ in (("fwd", "forward"), ("fwd+bwd", "forward + backward")):
        if timed_results:
            panels.append(
                (
                    title_,
                    "time [s]",
                    timed_results,
                    lambda r, w, k=key: r["timing"][f"{w} {k}"]["median"],
                )
            )
    mem_results = [r for r in results if "memory" in r]
    if mem_results:
        panels.append(
            (
                "fwd+bwd peak memory",
                "peak memory increase [MiB]",
                mem_results,
                lambda r, w: r["memory"][f"{w} fwd+bwd"]["peak_increase_mib"],
            )
        )
    if not panels:  # profile-only run: nothing to draw
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (title_, ylabel, rs, get) in zip(axes[0], panels):
        x = np.arange(len(rs))
        ref = [get(r, "ref") for r in rs]
        ours = [get(r, "ours") for r in rs]
        ax.bar(x - 0.2, ref, 0.4, label="reference")
        ax.bar(x + 0.2, ours, 0.4, label="ours")
        for i in x:
            ax.text(i + 0.2, ours[i], f"{ours[i] / ref[i]:.2f}x", ha="center", va="bottom")
        ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.set_title(title_)
        ax.set_xticks(x, [label(r) for r in rs])
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge(args) -> int:
    payloads = [json.loads(Path(f).read_text()) for f in args.merge]
    merged: dict[str, dict] = {}
    for payload in payloads:
        for r in payload["results"]:
            key = f"{label(r)} x{r['systems']}"
            merged.setdefault(key, {}).update(r)
    results = list(merged.values())
    machine = payloads[0]["machine"]
    machine["merged_from"] = [str(f) for f in args.merge]
    for key in ("size", "device"):
        setattr(args, key, payloads[0]["args"][key])
    return common.publish(args, machine, results, report, plot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument(
        "--configs", nargs="+", default=list(common.CONFIGS), choices=list(common.CONFIGS)
    )
    parser.add_argument("--layers", type=int, help="layers (default 12 on cuda, 2 on cpu)")
    parser.add_argument("--systems", type=int, default=2, help="systems in the batch")
    parser.add_argument("--size", type=int, nargs=3, default=[4, 4, 4], help="slab size")
    parser.add_argument(
        "--repeats", type=int, help="timed repeats (default 5, cuda 10; 0: no timing)"
    )
    parser.add_argument("--memory-repeats", type=int, default=1)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables")
    parser.add_argument("--profile-rows", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="1 system, 1 layer, 2 repeats")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="no measurement: merge the results of earlier runs (their --out .json files; "
        "later files win per config and measurement) into one report",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(memory_worker(json.loads(args.worker))))
        return 0
    if args.merge:
        return merge(args)
    cuda = args.device.startswith("cuda")
    if args.quick:
        args.systems, args.layers = 1, args.layers or 1
        args.repeats = args.repeats or 2
    args.layers = args.layers or (12 if cuda else 2)
    if args.repeats is None:
        args.repeats = 10 if cuda else 5
    common.setup(args)
    machine = common.machine_info(args.device)
    results = [measure_config(args, name) for name in args.configs]
    return common.publish(args, machine, results, report, plot)


if __name__ == "__main__":
    sys.exit(main())
