"""Cost per edge of an SO(3) tensor-product convolution vs eSCN's SO(2) route, L = 1..8.

Both compute the same message (docs/design.md §2), channel-wise ("uvu"), with per-edge weights:

* SO(3): e3nn's ``o3.TensorProduct`` (default code generation) of the node coefficients
  x [E, K, C] with the edge's spherical harmonics Y(r̂), all paths (li, lf, lo) <= L of both
  parities, one weight per path and channel; includes evaluating Y(r̂).
* SO(2): ``EdgeRotation`` (edge frame + Wigner-D rows built from the edge vectors, M = L),
  x̃ = W x, per order m the complex product with per-edge, per-channel weights
  w̃_{±m} [E, n_m, n_m, C] (eSCN learns w̃ directly, so mapping w -> w̃ is not timed), and
  the rotation back W^T ỹ.

Before timing, a float64 check (``--no-check`` skips it) maps random SO(3) weights to w̃
and asserts both routes give the same message at L = 3.

Usage::

    python benchmarks/so2_vs_so3.py                       # CPU float32, L = 1..8
    python benchmarks/so2_vs_so3.py --lmax-max 6 --edges 2000 --channels 32
    python benchmarks/so2_vs_so3.py --device cuda
    python benchmarks/so2_vs_so3.py --threads 1 --clock cpu   # on a busy shared machine

Prints a Markdown table (microseconds per edge, best of repeats) and the exponent p of a
least-squares fit cost ~ L^p over L >= 2 for each route.
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=FutureWarning)  # fairchem's torch.load at import

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from e3nn import o3  # noqa: E402

from escn_plugin.common.default_dtype import default_dtype  # noqa: E402
from escn_plugin.so3 import CoefficientLayout, EdgeRotation  # noqa: E402


def paths(lmax: int) -> list[tuple[int, int, int]]:
    return [
        (li, lf, lo)
        for li in range(lmax + 1)
        for lf in range(lmax + 1)
        for lo in range(abs(li - lf), min(li + lf, lmax) + 1)
    ]


def parity(l: int) -> int:
    return 1 if l % 2 == 0 else -1


# -- SO(3): e3nn ----------------------------------------------------------------------------


class SO3Conv:
    """e3nn TensorProduct 'uvu' over all paths; x^(l), Y^(l) get parity (-1)^l, so each
    path lands on (lo, (-1)^(li+lf)) and both parities of lo are summed."""

    def __init__(self, lmax: int, channels: int, dtype: torch.dtype, device: str) -> None:
        self.lmax, self.channels = lmax, channels
        irreps_x = o3.Irreps([(channels, (l, parity(l))) for l in range(lmax + 1)])
        irreps_sh = o3.Irreps([(1, (l, parity(l))) for l in range(lmax + 1)])
        self.irreps_out = o3.Irreps(
            [(channels, (lo, p)) for lo in range(lmax + 1) for p in (1, -1)]
        )
        instructions = [
            (li, lf, 2 * lo + (0 if parity(li) * parity(lf) == 1 else 1), "uvu", True)
            for li, lf, lo in paths(lmax)
        ]
        with default_dtype(dtype):
            self.tp = o3.TensorProduct(
                irreps_x,
                irreps_sh,
                self.irreps_out,
                instructions,
                irrep_normalization="none",
                path_normalization="none",
                internal_weights=False,
                shared_weights=False,
            ).to(device)
        self.num_paths = len(instructions)

    def to_e3nn(self, x: torch.Tensor) -> torch.Tensor:
        """[E, K, C] l-major -> e3nn's flat [E, sum_l C (2l+1)] (per irrep: [C, 2l+1])."""
        blocks = [
            x[:, l * l : (l + 1) ** 2].transpose(1, 2).reshape(len(x), -1)
            for l in range(self.lmax + 1)
        ]
        return torch.cat(blocks, dim=1)

    def from_e3nn(self, out: torch.Tensor) -> torch.Tensor:
        num_edges = len(out)
        msg = out.new_zeros(num_edges, (self.lmax + 1) ** 2, self.channels)
        for (mul, ir), sl in zip(self.irreps_out, self.irreps_out.slices()):
            chunk = out[:, sl].reshape(num_edges, mul, ir.dim).transpose(1, 2)
            msg[:, ir.l * ir.l : (ir.l + 1) ** 2] += chunk
        return msg

    def __call__(self, vec: torch.Tensor, x_flat: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        sh = o3.spherical_harmonics(list(range(self.lmax + 1)), vec, normalize=True)
        return self.tp(x_flat, sh, w)  # [E, irreps_out.dim]


# -- SO(2): eSCN ----------------------------------------------------------------------------


class SO2Conv:
    """Rotate into the edge frame, per-m complex products with per-edge channel-wise
    weights, rotate back. M = L (no truncation), so it equals the SO(3) convolution."""

    def __init__(self, lmax: int, device: str) -> None:
        self.layout = CoefficientLayout([lmax], [lmax])
        self.rotation = EdgeRotation(self.layout).to(device)
        self.slices = [self.layout.m_slices(m) for m in range(lmax + 1)]

    def __call__(
        self,
        vec: torch.Tensor,
        x: torch.Tensor,
        w_plus: list[torch.Tensor],
        w_minus: list[torch.Tensor],
    ) -> torch.Tensor:
        rot = self.rotation.to_dense(self.rotation(vec))  # [E, K, K]
        x_frame = torch.bmm(rot, x)  # [E, K, C]
        out = []
        for m, (plus, minus) in enumerate(self.slices):
            xp = x_frame[:, plus]  # [E, n_m, C]
            wp = w_plus[m]  # [E, n_m (out), n_m (in), C]
            if m == 0:
                out.append(torch.einsum("eoic,eic->eoc", wp, xp))
                continue
            xm, wm = x_frame[:, minus], w_minus[m]
            yp = torch.einsum("eoic,eic->eoc", wp, xp) - torch.einsum("eoic,eic->eoc", wm, xm)
            ym = torch.einsum("eoic,eic->eoc", wm, xp) + torch.einsum("eoic,eic->eoc", wp, xm)
            out += [yp, ym]
        y_frame = torch.cat(out, dim=1)  # [E, K, C] m-major
        return torch.bmm(rot.transpose(1, 2), y_frame)  # [E, K, C] l-major


def map_weights(lmax: int, weights: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """SO(3) path weights [E, P, C] -> w̃_{±m} [E, n_m, n_m, C] (docs/design.md §2)."""
    pole = weights.new_tensor([0.0, 1.0, 0.0])
    y0 = [o3.spherical_harmonics(lf, pole, normalize=True)[lf] for lf in range(lmax + 1)]
    w_plus, w_minus = [], []
    for m in range(lmax + 1):
        n_m = lmax - m + 1
        plus = weights.new_zeros(weights.shape[0], n_m, n_m, weights.shape[2])
        minus = torch.zeros_like(plus)
        for p, (li, lf, lo) in enumerate(paths(lmax)):
            if li < m or lo < m:
                continue
            cg = o3.wigner_3j(li, lf, lo, dtype=weights.dtype, device=weights.device)
            w = weights[:, p] * y0[lf]
            plus[:, lo - m, li - m] += w * cg[li + m, lf, lo + m]
            minus[:, lo - m, li - m] += w * cg[li + m, lf, lo - m]
        w_plus.append(plus)
        w_minus.append(minus)
    return w_plus, w_minus


def check_equal(lmax: int = 3, channels: int = 4, num_edges: int = 5) -> float:
    """float64: the SO(2) route with mapped weights reproduces e3nn's TensorProduct."""
    gen = torch.Generator().manual_seed(0)
    f64 = torch.float64
    so3 = SO3Conv(lmax, channels, f64, "cpu")
    so2 = SO2Conv(lmax, "cpu")
    vec = torch.randn(num_edges, 3, dtype=f64, generator=gen)
    x = torch.randn(num_edges, (lmax + 1) ** 2, channels, dtype=f64, generator=gen)
    weights = torch.randn(num_edges, so3.num_paths, channels, dtype=f64, generator=gen)
    ref = so3.from_e3nn(so3(vec, so3.to_e3nn(x), weights.reshape(num_edges, -1)))
    ours = so2(vec, x, *map_weights(lmax, weights))
    err = (ref - ours).abs().max().item()
    if not err <= 1e-10:
        raise RuntimeError(f"SO(2) route differs from e3nn's SO(3) convolution: {err:.2e}")
    return err


# -- timing -----------------------------------------------------------------------------------


def timed(
    fn: Callable[[], object], device: str, min_time: float, min_repeats: int, clock: str
) -> float:
    """Best (minimum) seconds per call over the repeats: one warm-up call, then repeats
    until ``min_time`` (wall) and ``min_repeats`` are reached. The minimum is robust to other
    load on a small shared machine; medians would measure the contention.

    ``clock="wall"``: elapsed time. ``clock="cpu"``: CPU time of this thread
    (``time.thread_time``), which other processes on the machine do not inflate; it counts
    all the work only with one torch thread (``--threads 1``) on the CPU.
    """
    now = time.thread_time if clock == "cpu" else time.perf_counter

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    with torch.no_grad():
        fn()
        sync()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < min_repeats or (
            time.perf_counter() - start < min_time and len(times) < 50
        ):
            t0 = now()
            fn()
            sync()
            times.append(now() - t0)
    return min(times)


def fit_exponent(ls: list[int], costs: list[float]) -> float:
    """Slope of log(cost) vs log(L) by least squares."""
    xs = [math.log(l) for l in ls]
    ys = [math.log(c) for c in costs]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def edges_for(lmax: int, edges: int | None) -> int:
    """Default edge count: fewer edges for large L, to keep the run short on 2 CPU cores."""
    if edges is not None:
        return edges
    return 1024 if lmax <= 4 else 512 if lmax <= 6 else 256


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lmax-min", type=int, default=1)
    parser.add_argument("--lmax-max", type=int, default=8)
    parser.add_argument(
        "--edges", type=int, default=None, help="edges per call (default 1024/512/256 by L)"
    )
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "cpu"],
        help="wall: elapsed time; cpu: this thread's CPU time (needs --threads 1, CPU only; "
        "use it on a machine shared with other jobs)",
    )
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of repeats per cell")
    parser.add_argument("--no-check", action="store_true")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda requested but CUDA is not available")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu" and (args.device != "cpu" or torch.get_num_threads() != 1):
        raise SystemExit("--clock cpu measures one thread's CPU time: use --threads 1 on cpu")
    dtype = getattr(torch, args.dtype)
    device = args.device

    if not args.no_check:
        err = check_equal()
        print(f"check (float64, L=3): SO(2) route == e3nn TensorProduct, max |diff| = {err:.1e}")

    hardware = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    print(
        f"\ndevice {device} ({hardware or platform.machine()}), {args.dtype}, "
        f"torch threads {torch.get_num_threads()}, C = {args.channels}, torch {torch.__version__}, "
        f"{args.clock} clock, best of repeats"
    )
    if args.edges is None:
        print("edges per call: 1024 for L <= 4, 512 for L = 5, 6, 256 for L >= 7 (--edges sets)")
    print()
    print("| L | paths | edges | SO(3) e3nn TP us/edge | SO(2) us/edge | speed-up |")
    print("|---|---|---|---|---|---|")
    ls, so3_costs, so2_costs = [], [], []
    for lmax in range(args.lmax_min, args.lmax_max + 1):
        num_edges = edges_for(lmax, args.edges)
        gen = torch.Generator().manual_seed(lmax)
        chan = args.channels
        vec = torch.randn(num_edges, 3, generator=gen).to(device, dtype)
        x = torch.randn(num_edges, (lmax + 1) ** 2, chan, generator=gen).to(device, dtype)
        so3 = SO3Conv(lmax, chan, dtype, device)
        weights = torch.randn(num_edges, so3.num_paths * chan, generator=gen).to(device, dtype)
        x_flat = so3.to_e3nn(x)
        so2 = SO2Conv(lmax, device)
        w_plus = [
            torch.randn(num_edges, n_m, n_m, chan, generator=gen).to(device, dtype)
            for n_m in range(lmax + 1, 0, -1)
        ]
        w_minus = [torch.randn_like(w) for w in w_plus]

        run3 = functools.partial(so3, vec, x_flat, weights)
        run2 = functools.partial(so2, vec, x, w_plus, w_minus)
        t3 = timed(run3, device, args.min_time, 3, args.clock) / num_edges
        t2 = timed(run2, device, args.min_time, 3, args.clock) / num_edges
        ls.append(lmax)
        so3_costs.append(t3)
        so2_costs.append(t2)
        print(
            f"| {lmax} | {so3.num_paths} | {num_edges} | {t3 * 1e6:.2f} | {t2 * 1e6:.2f} "
            f"| {t3 / t2:.1f}x |",
            flush=True,
        )

    print()
    for lmin in (2, 4):  # L >= 2 as asked; L >= 4 is closer to the asymptotic regime
        fit = [(l, a, b) for l, a, b in zip(ls, so3_costs, so2_costs) if l >= lmin]
        if len(fit) < 2:
            continue
        lf = [l for l, _, _ in fit]
        print(
            f"fitted cost ~ L^p over L = {lf[0]}..{lf[-1]}: "
            f"SO(3) p = {fit_exponent(lf, [a for _, a, _ in fit]):.2f}, "
            f"SO(2) p = {fit_exponent(lf, [b for _, _, b in fit]):.2f}"
        )


if __name__ == "__main__":
    main()
