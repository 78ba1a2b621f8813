"""Wigner-D + edge-frame construction time per edge: ours vs the reference eSCN.

* ours: ``escn_plugin.so3.EdgeRotation(CoefficientLayout([L], [M]))(edge_vec)``: edge frame
  (no random numbers), Wigner-D rows from rotated spherical-harmonic samples (no Euler
  angles), only the |m| <= M rows, degree by degree, as the block-sparse entries the model
  reads ([E, nnz], nnz = 235 at L6-M2); differentiable.
* reference: ``eSCN._init_edge_rot_mat`` (random roll per edge) followed by
  ``fairchem.core.models.escn.so3.SO3_Rotation(edge_rot_mat, L)``, which builds the full
  block-diagonal ``wigner`` [E, K, K] with Euler angles and a per-l loop, and its transpose
  ``wigner_inv`` (contiguous copy), both detached. The reference selects the |m| <= M rows
  later, inside every ``rotate`` call; the column "ref + rows" adds one such selection.

Also checked: with the reference given our frames (float64), its Wigner-D rows equal ours.

Usage::

    python benchmarks/wigner.py --quick
    python benchmarks/wigner.py --edges 20000 --out benchmarks/results/wigner
    python benchmarks/wigner.py --device cuda --out benchmarks/results/wigner_cuda
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402


def edge_vectors(num_edges: int, device: str, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    """Random directions, lengths 1..12 Å (what the radius graph hands the model)."""
    gen = torch.Generator().manual_seed(seed)
    vec = torch.randn(num_edges, 3, generator=gen, dtype=torch.float64)
    length = 1.0 + 11.0 * torch.rand(num_edges, 1, generator=gen, dtype=torch.float64)
    return (vec / vec.norm(dim=-1, keepdim=True) * length).to(device=device, dtype=dtype)


def reference_functions(lmax: int, mmax: int, device: str):
    import fairchem.core.models.escn.escn as ref_escn
    from fairchem.core.models.escn.so3 import CoefficientMapping, SO3_Rotation

    init_frame = ref_escn.eSCN._init_edge_rot_mat  # uses neither self nor data

    def construct(vec):
        rot = init_frame(None, None, None, vec)
        return SO3_Rotation(rot, lmax)

    mapping = CoefficientMapping([lmax], [lmax], torch.device(device))

    def construct_and_rows(vec):
        so3 = construct(vec)
        return so3.wigner[:, mapping.coefficient_idx(lmax, mmax), :]

    return construct, construct_and_rows


def check_agreement(lmax: int, mmax: int, device: str) -> float:
    """Max |ours - reference| over 2000 edges, reference given our frames, float64."""
    from fairchem.core.models.escn.so3 import SO3_Rotation

    from escn_plugin.common.default_dtype import float64_default
    from escn_plugin.so3 import CoefficientLayout, EdgeRotation, edge_frame

    vec = edge_vectors(2000, device, torch.float64, seed=1)
    layout = CoefficientLayout([lmax], [mmax])
    rotation = EdgeRotation(layout).to(device)
    ours = rotation.to_dense(rotation(vec))  # [E, K_M, K]
    with float64_default():  # the reference allocates wigner in the default dtype
        ref = SO3_Rotation(edge_frame(vec), lmax).wigner
    rows = layout.lm_index(layout.m_major).to(device)
    return (ours - ref.to(ours.dtype)[:, rows]).abs().max().item()


def measure(args) -> list[dict]:
    from escn_plugin.so3 import CoefficientLayout, EdgeRotation

    device = args.device
    vec = edge_vectors(args.edges, device)
    rows = []
    for lmax in args.lmax:
        mmax = min(args.mmax, lmax)
        layout = CoefficientLayout([lmax], [mmax])
        ours = EdgeRotation(layout).to(device)
        construct, construct_and_rows = reference_functions(lmax, mmax, device)
        fns = {
            "ours": lambda ours=ours: ours(vec),
            "ref": lambda construct=construct: construct(vec),
            "ref + rows": lambda f=construct_and_rows: f(vec),
        }
        with torch.no_grad():
            timing = common.interleaved_medians(fns, args.repeats, device, warmup=1, verbose=False)
        error = check_agreement(lmax, mmax, device)
        row = dict(
            lmax=lmax,
            mmax=mmax,
            K=layout.num_full,
            K_M=layout.num_m_major,
            edges=args.edges,
            timing=timing,
            max_abs_diff_vs_ref_float64=error,
        )
        t = {k: v["median"] for k, v in timing.items()}
        print(
            f"  L={lmax}: ours {common.fmt_time(t['ours'])}, ref {common.fmt_time(t['ref'])}, "
            f"ref/ours {t['ref'] / t['ours']:.1f}x, |diff| {error:.1e}",
            flush=True,
        )
        rows.append(row)
    return rows


def profile_tables(args, rows_limit: int = 12) -> dict[str, str]:
    """torch.profiler of one construction each (ours, reference) at L = --profile-lmax."""
    from torch.profiler import ProfilerActivity, profile

    from escn_plugin.so3 import CoefficientLayout, EdgeRotation

    lmax, device = args.profile_lmax, args.device
    mmax = min(args.mmax, lmax)
    vec = edge_vectors(args.edges, device)
    ours = EdgeRotation(CoefficientLayout([lmax], [mmax])).to(device)
    construct, _ = reference_functions(lmax, mmax, device)
    activities = [ProfilerActivity.CPU]
    sort = "self_cpu_time_total"
    if device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
        sort = "self_cuda_time_total"
    tables = {}
    for name, fn in (("ours", lambda: ours(vec)), ("ref", lambda: construct(vec))):
        with torch.no_grad():
            fn()  # warm-up
            with profile(activities=activities, record_shapes=True) as prof:
                fn()
        tables[name] = prof.key_averages(group_by_input_shape=True).table(
            sort_by=sort, row_limit=rows_limit, max_name_column_width=28, max_shapes_column_width=55
        )
    return tables


def report(args, machine: dict, rows: list[dict]) -> str:
    lines = ["## Wigner-D + edge frame construction: ours vs reference", ""]
    lines += common.machine_lines(machine)
    lines += [
        f"- {args.edges} random edge vectors, float32, no autograd graph (inputs do not "
        f"require grad); medians of {args.repeats} interleaved repeats",
        "- ours: `EdgeRotation(CoefficientLayout([L], [M]))(edge_vec)` -> [E, nnz] "
        "(frame + the non-zero entries of the |m| <= M Wigner-D rows, m-major, block-sparse)",
        "- ref: `_init_edge_rot_mat` + `SO3_Rotation(edge_rot_mat, L)` -> wigner and "
        "wigner_inv [E, K, K]; ref + rows: plus the |m| <= M row selection its `rotate` does",
        "- |Δ|: max abs difference of the Wigner-D rows, reference given our frames, float64 "
        "(2000 edges)",
        "",
        "| L | M | K | K_M | ours | ref | ref + rows | speed-up (ref / ours) | ours per edge | "
        "ref per edge | \\|Δ\\| |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t = {k: v["median"] for k, v in row["timing"].items()}
        lines.append(
            f"| {row['lmax']} | {row['mmax']} | {row['K']} | {row['K_M']} | "
            f"{common.fmt_time(t['ours'])} | {common.fmt_time(t['ref'])} | "
            f"{common.fmt_time(t['ref + rows'])} | {t['ref'] / t['ours']:.1f}x | "
            f"{common.fmt_time(t['ours'] / row['edges'])} | "
            f"{common.fmt_time(t['ref'] / row['edges'])} | "
            f"{row['max_abs_diff_vs_ref_float64']:.1e} |"
        )
    for name, table in getattr(args, "profile_tables", {}).items():
        lines += [
            "",
            f"Profile, {name}, L = {args.profile_lmax}, {args.edges} edges, by input shape:",
            "",
            "```",
            table.rstrip(),
            "```",
        ]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    lmax = [row["lmax"] for row in rows]
    for key, style in (("ours", "o-"), ("ref", "s-"), ("ref + rows", "s--")):
        per_edge = [row["timing"][key]["median"] / row["edges"] * 1e6 for row in rows]
        axes[0].plot(lmax, per_edge, style, label=key)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("L")
    axes[0].set_ylabel("µs per edge")
    axes[0].set_title(f"Wigner-D + frame, {rows[0]['edges']} edges")
    axes[0].grid(True, which="both", alpha=0.3)
    axes[0].legend()
    speedup = [row["timing"]["ref"]["median"] / row["timing"]["ours"]["median"] for row in rows]
    axes[1].bar(lmax, speedup)
    axes[1].axhline(1.0, color="k", lw=0.8)
    axes[1].set_xlabel("L")
    axes[1].set_ylabel("reference time / our time")
    axes[1].set_title("speed-up")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common.add_common_args(parser)
    parser.add_argument("--edges", type=int, default=20000)
    parser.add_argument("--lmax", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8])
    parser.add_argument("--mmax", type=int, default=2)
    parser.add_argument(
        "--repeats", type=int, help="timed repeats (default 5, cuda 20; 0: no timing)"
    )
    parser.add_argument("--profile", action="store_true", help="torch.profiler tables")
    parser.add_argument("--profile-lmax", type=int, default=6)
    parser.add_argument("--quick", action="store_true", help="5000 edges, L 2 4 6, 3 repeats")
    args = parser.parse_args(argv)
    if args.quick:
        args.edges = 5000 if args.edges == parser.get_default("edges") else args.edges
        args.lmax = [2, 4, 6] if args.lmax == parser.get_default("lmax") else args.lmax
        args.repeats = 3 if args.repeats is None else args.repeats
    if args.repeats is None:
        args.repeats = 20 if args.device.startswith("cuda") else 5
    common.setup(args)
    machine = common.machine_info(args.device)
    rows = measure(args) if args.repeats > 0 else []
    if args.profile:
        args.profile_tables = profile_tables(args)
    return common.publish(args, machine, rows, report, plot)


if __name__ == "__main__":
    sys.exit(main())
