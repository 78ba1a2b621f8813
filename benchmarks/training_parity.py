"""Does the plugin *train* as well as the reference? Same data, config, steps and seeds.

Both models are trained through the stock ``fairchem --mode train`` command on the same
generated OC20-format EMT dataset (:mod:`escn_plugin.datasets.oc20_emt`) with the same
config; only ``model.name`` differs (``escn`` vs ``escn_plugin.eSCN``). Three arms per seed:

* ``reference``: fairchem's eSCN from its own initialisation (seeded ``torch.manual_seed``);
* ``converted``: ours from *the same* initial weights (the reference's initial state dict
  converted with :func:`escn_plugin.convert.convert_state_dict`);
* ``own``: ours from its own initialisation (same seed).

Every arm starts from a checkpoint written here (``--checkpoint``, step 0, no optimizer
state), so the initial weights are exactly known; the trainer's ``seed`` (data order, the
reference's random edge frames) is the same seed. The model and optimiser are fairchem's
eSCN test config (``tests/core/models/test_configs/test_escn.yml``: 2 layers, L2-M2, 8
channels, 64 sphere points, AdamW lr 2.5e-3 amsgrad, no weight decay, clip 20, energy MAE x2
+ force L2MAE x100), with energies and forces normalised by the train split's statistics.

Reported: final energy and force MAE on the held-out ``val`` split (mean and standard error
over seeds), paired differences (ours - reference, same seed), learning curves (train loss
per logging window, val MAE per evaluation) and each run's wall and CPU time.

    python benchmarks/training_parity.py --seeds 0 1 2 3 4 \
        --out benchmarks/results/cpu_training_parity

Each run's result is cached in ``--work-dir`` (``<arm>_seed<s>/result.json``): re-running
skips finished runs (``--fresh`` discards them). One thread per run (``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_info, machine_lines, markdown_table, write_outputs  # noqa: E402

from escn_plugin.workflows.fairchem_runner import run_fairchem  # noqa: E402

ARMS = ("reference", "converted", "own")
ARM_LABELS = {
    "reference": "reference `escn`",
    "converted": "ours, reference's initial weights",
    "own": "ours, own initialisation",
}

#: fairchem 1.10's tests/core/models/test_configs/test_escn.yml model section
TEST_ESCN_MODEL = dict(
    num_layers=2,
    max_neighbors=10,
    cutoff=12.0,
    sphere_channels=8,
    hidden_channels=8,
    lmax_list=[2],
    mmax_list=[2],
    num_sphere_samples=64,
    distance_function="gaussian",
    regress_forces=True,
    use_pbc=True,
    basis_width_scalar=2.0,
    otf_graph=True,
)


# -- config and initial weights ----------------------------------------------------------


def eval_interval(num_train: int, args) -> int:
    """Steps between val evaluations: the smallest divisor of the total step count giving at
    most ``args.evals`` evaluations, so the last one falls on the last step."""
    total = math.ceil(num_train / args.batch_size) * args.epochs
    return next(d for d in range(1, total + 1) if total % d == 0 and total // d <= args.evals)


def trainer_config(data_root: Path, model: dict, args) -> dict:
    """fairchem's eSCN test config (optimiser, losses) on the generated dataset."""
    meta = json.loads((data_root / "metadata.json").read_text())
    train = meta["s2ef"]["train"]
    transforms = {}
    if args.normalize:
        transforms = {
            "normalizer": {
                "energy": {"mean": train["energy"]["mean"], "stdev": train["energy"]["std"]},
                "forces": {"mean": 0.0, "stdev": train["force_rms"]},
            }
        }

    def split(name: str) -> dict:
        return {
            "format": "lmdb",
            "src": str(data_root / "s2ef" / name),
            "key_mapping": {"y": "energy", "force": "forces"},
            "transforms": transforms,
        }

    return {
        "trainer": "ocp",
        "logger": "tensorboard",
        "outputs": {
            "energy": {"shape": 1, "level": "system"},
            "forces": {
                "irrep_dim": 1,
                "level": "atom",
                "train_on_free_atoms": True,
                "eval_on_free_atoms": True,
            },
        },
        "loss_functions": [
            {"energy": {"fn": "mae", "coefficient": 2}},
            {"forces": {"fn": "l2mae", "coefficient": 100}},
        ],
        "evaluation_metrics": {
            "metrics": {"energy": ["mae"], "forces": ["mae"]},
            "primary_metric": "forces_mae",
        },
        "dataset": {"train": split("train"), "val": split("val")},
        "model": model,
        "optim": {
            "batch_size": args.batch_size,
            "eval_batch_size": 10,
            "num_workers": 0,
            "lr_initial": args.lr,
            "optimizer": "AdamW",
            "optimizer_params": {"amsgrad": True, "weight_decay": args.weight_decay},
            "scheduler": "Null",
            "max_epochs": args.epochs,
            "eval_every": args.eval_every,
            "checkpoint_every": -1,
            "clip_grad_norm": 20,
        },
    }


def initial_checkpoints(model: dict, seed: int, run_dir: Path) -> dict[str, Path]:
    """Write the three arms' step-0 checkpoints for ``seed``; returns arm -> path."""
    import fairchem.core.models.escn.escn  # noqa: F401  (registers "escn")
    from fairchem.core.common.registry import registry

    import escn_plugin
    from escn_plugin.cli.convert import convert_state_dict

    torch.manual_seed(seed)
    reference = registry.get_model_class("escn")(**model)
    torch.manual_seed(seed)
    ours = escn_plugin.eSCN(**model)
    states = {
        "reference": reference.state_dict(),
        "converted": convert_state_dict(reference.state_dict()),
        "own": ours.state_dict(),
    }
    paths = {}
    for arm, state in states.items():
        path = run_dir / "init" / f"{arm}_seed{seed}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": state, "normalizers": {}, "epoch": 0, "step": 0}, path)
        paths[arm] = path
    return paths


# -- running fairchem --------------------------------------------------------------------


_TRAIN_LINE = re.compile(r"energy_mae: (\S+), forces_mae: (\S+), loss: (\S+),.*\bstep: (\S+)")
_VAL_LINE = re.compile(r"energy_mae: ([-+0-9.eE]+), forces_mae: ([-+0-9.eE]+), .*epoch: ")


def parse_curves(log: str, eval_every: int) -> dict:
    """Train metrics per logging window and val metrics per evaluation, from fairchem's log."""
    train, val = [], []
    for line in log.splitlines():
        if (m := _TRAIN_LINE.search(line)) is not None:
            e, f, loss, step = m.groups()
            train.append(dict(step=round(float(step)), energy_mae=float(e), forces_mae=float(f),
                              loss=float(loss)))  # fmt: skip
        elif (m := _VAL_LINE.search(line)) is not None:
            e, f = m.groups()
            val.append(dict(step=eval_every * (len(val) + 1), energy_mae=float(e),
                            forces_mae=float(f)))  # fmt: skip
    return {"train": train, "val": val}


def train_one(config: dict, checkpoint: Path, run_dir: Path, seed: int, args) -> dict:
    """``fairchem --mode train`` from ``checkpoint``; returns curves, wall and CPU seconds."""
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # one thread per run
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    log = run_fairchem(
        dict(config, seed=seed), run_dir, "train", "--checkpoint", str(checkpoint),
        identifier="run", stream=False, print_every=args.print_every, timeout=24 * 3600,
        cpu=args.device == "cpu",
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (run_dir / "fairchem.log").write_text(log)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    curves = parse_curves(log, args.eval_every)
    if not curves["val"]:
        raise RuntimeError(f"no validation metrics in {run_dir / 'fairchem.log'}")
    return dict(curves, wall_s=wall, cpu_s=cpu, steps=curves["train"][-1]["step"])


def run_all(args) -> dict:
    from escn_plugin.datasets.oc20_emt import generate

    work = Path(args.work_dir).resolve()
    data_root = Path(args.data_dir or work.parent / f"data_{args.data_size}").resolve()
    generate(data_root, seed=args.data_seed, size=args.data_size, verbose=False)
    meta = json.loads((data_root / "metadata.json").read_text())
    args.eval_every = eval_interval(int(meta["s2ef"]["train"]["n_frames"]), args)
    model = dict(TEST_ESCN_MODEL, **json.loads(args.model_overrides or "{}"))
    ours_overrides = json.loads(args.ours_overrides or "{}")
    runs: dict[str, dict[str, dict]] = {arm: {} for arm in args.arms}
    for seed in args.seeds:
        checkpoints = None
        for arm in args.arms:
            run_dir = work / f"{arm}_seed{seed}"
            cached = run_dir / "result.json"
            if cached.exists() and not args.fresh:
                runs[arm][str(seed)] = json.loads(cached.read_text())
                continue
            if checkpoints is None:
                checkpoints = initial_checkpoints(model, seed, work)
            if arm == "reference":
                arm_model = dict(model, name="escn")
            else:
                arm_model = dict(model, name="escn_plugin.eSCN", **ours_overrides)
            config = trainer_config(data_root, arm_model, args)
            result = train_one(config, checkpoints[arm], run_dir, seed, args)
            cached.write_text(json.dumps(result))
            runs[arm][str(seed)] = result
            final = result["val"][-1]
            print(
                f"  {arm:9s} seed {seed}: val energy MAE {final['energy_mae']:.4f} eV, "
                f"forces MAE {final['forces_mae']:.4f} eV/A, {result['steps']} steps, "
                f"cpu {result['cpu_s']:.0f} s, wall {result['wall_s']:.0f} s",
                flush=True,
            )
    return dict(
        model=model,
        ours_overrides=ours_overrides,
        data=dict(size=args.data_size, seed=args.data_seed),
        baselines=baselines(data_root),
        runs=runs,
    )


# -- statistics and report ---------------------------------------------------------------


def mean_sem(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n))."""
    x = np.asarray(values, dtype=float)
    sem = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")
    return float(x.mean()), sem


def final_metric(run: dict, key: str) -> float:
    return run["val"][-1][key]


def baselines(data_root: Path) -> dict:
    """Val MAE of trivial predictors: the train-mean energy and zero forces (free atoms)."""
    from escn_plugin.datasets.oc20_emt import read_lmdb

    meta = json.loads((data_root / "metadata.json").read_text())
    src = data_root / meta["s2ef"]["val"]["src"]
    val = [d for path in sorted(src.glob("*.lmdb")) or [src] for d in read_lmdb(path)]
    mean = meta["s2ef"]["train"]["energy"]["mean"]
    energy = float(np.mean([abs(float(d.y) - mean) for d in val]))
    free = torch.cat([d.force[d.fixed == 0] for d in val])
    return {"energy_mae": energy, "forces_mae": float(free.abs().mean())}


def final_train_metric(run: dict, key: str, windows: int = 3) -> float:
    """Train MAE over the last ``windows`` logging windows (the last few batches)."""
    return float(np.mean([p[key] for p in run["train"][-windows:]]))


def summary(results: dict) -> dict:
    """Per arm: mean/sem of the final val MAEs and times; per ours-arm: paired differences."""
    out = {}
    runs = results["runs"]
    for arm, by_seed in runs.items():
        if not by_seed:
            continue
        row = {}
        for key in ("energy_mae", "forces_mae"):
            row[key] = mean_sem([final_metric(r, key) for r in by_seed.values()])
        for key in ("energy_mae", "forces_mae"):
            row[f"train_{key}"] = mean_sem([final_train_metric(r, key) for r in by_seed.values()])
        for key in ("cpu_s", "wall_s"):
            row[key] = mean_sem([r[key] for r in by_seed.values()])
        row["seeds"] = sorted(by_seed, key=int)
        if arm != "reference" and "reference" in runs:
            common = [s for s in by_seed if s in runs["reference"]]
            for key in ("energy_mae", "forces_mae"):
                diffs = [
                    final_metric(by_seed[s], key) - final_metric(runs["reference"][s], key)
                    for s in common
                ]
                row[f"{key}_paired_diff"] = mean_sem(diffs)
        out[arm] = row
    return out


def _pm(pair: tuple[float, float], digits: int = 4) -> str:
    return f"{pair[0]:.{digits}f} ± {pair[1]:.{digits}f}"


def report(args, machine: dict, results: dict) -> str:
    stats = summary(results)
    model = results["model"]
    lines = [
        "# Training parity: the plugin vs the reference eSCN through `fairchem --mode train`",
        "",
        *machine_lines(machine),
        f"- data: OC20-EMT `{results['data']['size']}` (seed {results['data']['seed']}), "
        f"train split for training, held-out `val` split for the metrics",
        f"- model: {json.dumps(model)}; plugin-only arguments: "
        f"{json.dumps(results.get('ours_overrides') or {})}",
        f"- optim: batch {args.batch_size}, {args.epochs} epochs, AdamW lr {args.lr} amsgrad, "
        f"weight decay {args.weight_decay}, clip 20, val every {args.eval_every} steps, "
        f"normalised targets: {args.normalize}",
        "",
        "Final val MAE, mean ± standard error over seeds:",
        "",
    ]
    header = ["arm", "seeds", "energy MAE (eV)", "force MAE (eV/Å)", "CPU s / run", "wall s / run"]
    rows = [
        [
            ARM_LABELS[arm],
            len(row["seeds"]),
            _pm(row["energy_mae"]),
            _pm(row["forces_mae"]),
            f"{row['cpu_s'][0]:.0f}",
            f"{row['wall_s'][0]:.0f}",
        ]
        for arm, row in stats.items()
    ]
    base = results.get("baselines")
    if base:
        rows.append(["train-mean energy, zero forces", "-", f"{base['energy_mae']:.4f}",
                     f"{base['forces_mae']:.4f}", "-", "-"])  # fmt: skip
    lines += [markdown_table(header, rows), ""]
    window = args.print_every * 3
    lines += [f"Train MAE over the last {window} steps (last 3 logging windows), mean ± s.e.:", ""]
    rows = [
        [ARM_LABELS[arm], _pm(row["train_energy_mae"], 3), _pm(row["train_forces_mae"], 3)]
        for arm, row in stats.items()
    ]
    lines += [markdown_table(["arm", "energy MAE (eV)", "force MAE (eV/Å)"], rows), ""]
    paired = [arm for arm in stats if "energy_mae_paired_diff" in stats[arm]]
    if paired:
        lines += ["Paired differences, ours - reference (same seed, same data order):", ""]
        rows = [
            [
                ARM_LABELS[arm],
                _pm(stats[arm]["energy_mae_paired_diff"]),
                _pm(stats[arm]["forces_mae_paired_diff"]),
            ]
            for arm in paired
        ]
        lines += [markdown_table(["arm", "Δ energy MAE (eV)", "Δ force MAE (eV/Å)"], rows), ""]
    lines += ["Per seed (final val energy / force MAE):", ""]
    seeds = sorted({s for by_seed in results["runs"].values() for s in by_seed}, key=int)
    rows = []
    for s in seeds:
        row = [s]
        for arm in results["runs"]:
            r = results["runs"][arm].get(s)
            row.append(
                "-"
                if r is None
                else f"{final_metric(r, 'energy_mae'):.4f} / {final_metric(r, 'forces_mae'):.4f}"
            )
        rows.append(row)
    lines.append(markdown_table(["seed", *(ARM_LABELS[a] for a in results["runs"])], rows))
    return "\n".join(lines)


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib.pyplot as plt

    colors = {"reference": "tab:blue", "converted": "tab:orange", "own": "tab:green"}
    panels = [("train", "loss", "train loss (window mean)"),
              ("val", "energy_mae", "val energy MAE (eV)"),
              ("val", "forces_mae", "val force MAE (eV/Å)")]  # fmt: skip
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, (split, key, label) in zip(axes, panels):
        for arm, by_seed in results["runs"].items():
            curves = [[p[key] for p in r[split]] for r in by_seed.values()]
            n = min(len(c) for c in curves)
            steps = [p["step"] for p in next(iter(by_seed.values()))[split][:n]]
            y = np.array([c[:n] for c in curves])
            for c in y:
                ax.plot(steps, c, color=colors[arm], alpha=0.2, lw=0.8)
            ax.plot(steps, y.mean(0), color=colors[arm], lw=2, label=ARM_LABELS[arm])
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"training parity (thin: single seeds, thick: mean)\n{title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="cuda: fairchem's GPU run (no --cpu)")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--data-size", default="demo", help="oc20_emt size (default demo)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--data-dir", help="dataset directory (default WORK_DIR/../data_SIZE)")
    parser.add_argument("--work-dir", default="/tmp/escn_training_parity/runs",
                        help="checkpoints, logs and cached per-run results")  # fmt: skip
    parser.add_argument("--fresh", action="store_true", help="ignore cached run results")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.0025)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--evals", type=int, default=3, help="val evaluations per run (max)")
    parser.add_argument("--print-every", type=int, default=7)
    parser.add_argument("--no-normalize", dest="normalize", action="store_false",
                        help="train on raw energies/forces (fairchem's test setting)")  # fmt: skip
    parser.add_argument("--model-overrides", help="JSON dict merged into the model config")
    parser.add_argument("--ours-overrides",
                        help="JSON dict of plugin-only arguments (e.g. random_roll)")  # fmt: skip
    parser.add_argument("--out", help="write OUT.md, OUT.json and OUT.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    machine = dict(machine_info(args.device), clock="cpu", threads=1)
    results = run_all(args)
    stats = summary(results)
    markdown = report(args, machine, results)
    payload = dict(machine=machine, args=vars(args), summary=stats, **results)
    title = f"{machine['date']}  {machine['cpu']}  torch {machine['torch']}"
    write_outputs(args.out, markdown, payload, lambda p: plot(results, p, title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
