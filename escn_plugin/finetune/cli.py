"""``python -m escn_plugin.finetune``: fine-tune eSCN on your own structures.

    python -m escn_plugin.finetune --checkpoint CKPT --data FILES... --out DIR
        [--conservative] [--stress | --no-stress] [--freeze-backbone] [--from-scratch]
        [--epochs N | --max-steps N] [--lr LR] [--batch-size B] [--seed S]
        [--device cpu|cuda] [--num-gpus N] [--resume] [--prepare-only]

Steps (one module each): read and split the structures, write them as LMDBs
(:mod:`.data`); fit element references and normalizers on the training split
(:mod:`.normalization`); map the starting checkpoint onto the fine-tuned model and write
its step-0 checkpoint (:mod:`.start`); write ``DIR/config.yml`` (:mod:`.config`); run the
stock ``fairchem --mode train`` on it (:mod:`escn_plugin.workflows.fairchem_runner`), and
with ``--from-scratch`` the same config from fresh weights in ``DIR/from_scratch``;
evaluate on the test split through ``OCPCalculator`` (:mod:`.evaluate`); write
``DIR/report.md`` / ``report.json`` (:mod:`.report`).

The fine-tuned model is ``DIR/checkpoints/finetune/best_checkpoint.pt`` (best validation
force error, EMA weights); it loads in ``OCPCalculator(checkpoint_path=..., cpu=True)``,
``fairchem --mode predict`` and ``--mode run-relaxations`` as it is.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from escn_plugin.finetune import data as data_io
from escn_plugin.finetune import start as start_io
from escn_plugin.finetune.config import epochs_for, finetune_config, steps_per_epoch

__all__ = ["build_parser", "main", "prepare", "run"]

log = logging.getLogger("escn_plugin.finetune")

RUN_ID = "finetune"  # fairchem --timestamp-id: checkpoints in DIR/checkpoints/finetune
SCRATCH_DIR = "from_scratch"
DEFAULT_EPOCHS = 20
DEFAULT_LR = 1e-3
DEFAULT_NVE_STEPS = 200


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m escn_plugin.finetune",
        description="Fine-tune an eSCN checkpoint on your own structures with the stock "
        "fairchem trainer; writes DIR/config.yml, the fine-tuned checkpoint and a report.",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        help="starting checkpoint: escn_plugin's "
        "(plain or hydra) or fairchem's reference escn (converted on the fly)",
    )
    p.add_argument(
        "--data",
        type=Path,
        nargs="+",
        help="labelled structures (any format "
        "ase.io.read reads), split into train/val/test by structure with --seed",
    )
    p.add_argument("--train", type=Path, nargs="+", help="training files (instead of --data)")
    p.add_argument("--val", type=Path, nargs="+", help="validation files (with --train)")
    p.add_argument("--test", type=Path, nargs="+", help="test files (with --train)")
    p.add_argument("--out", type=Path, required=True, help="output folder DIR")
    p.add_argument(
        "--conservative",
        action="store_true",
        help="forces = -dE/dx (eSEN's "
        "stage 2: the start's backbone and energy head, no neighbour cap, cutoff "
        "envelope; a direct force head is dropped)",
    )
    p.add_argument(
        "--stress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train stress (default: where every structure has one)",
    )
    p.add_argument("--freeze-backbone", action="store_true", help="train the heads only")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="also train the same model and budget from fresh weights, for comparison",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, help=f"epochs (default {DEFAULT_EPOCHS})")
    budget.add_argument(
        "--max-steps",
        type=int,
        help="optimizer steps, rounded up to whole epochs (fairchem stops at epoch ends)",
    )
    p.add_argument(
        "--lr",
        type=float,
        default=DEFAULT_LR,
        help=f"initial learning rate (default {DEFAULT_LR}; cosine decay to 4%% of it)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="structures per batch and rank")
    p.add_argument("--seed", type=int, default=0, help="split and training seed")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument(
        "--num-gpus",
        type=int,
        default=1,
        help="ranks (fairchem's DDP flag; with --device cpu: gloo processes)",
    )
    p.add_argument(
        "--nve-steps",
        type=int,
        default=DEFAULT_NVE_STEPS,
        help="NVE steps (1 fs) for the drift line of conservative models (0: none)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted fine-tune in --out (its config.yml, fairchem's --checkpoint)",
    )
    p.add_argument(
        "--prepare-only",
        action="store_true",
        help="write the data, the step-0 checkpoint and config.yml, print the fairchem "
        "command, and stop",
    )
    return p


def _check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.resume:
        if not (args.out / "finetune.json").is_file():
            p.error(f"--resume: {args.out} holds no fine-tune (no finetune.json)")
        return
    if args.checkpoint is None:
        p.error("--checkpoint is required")
    if bool(args.data) == bool(args.train):
        p.error("give either --data FILES (split by --seed) or --train/--val/--test FILES")
    if args.train and not (args.val and args.test):
        p.error("--train needs --val and --test too")
    if args.data and (args.val or args.test):
        p.error("--val/--test go with --train, not with --data")
    if (args.out / "checkpoints" / RUN_ID / "checkpoint.pt").exists():
        p.error(f"{args.out} already holds a fine-tune: use --resume, or another --out")
    for name in ("epochs", "max_steps", "batch_size", "num_gpus"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")


def _read(files: list[Path]) -> list[data_io.Structure]:
    return [s for path in files for s in data_io.read_structures(path)]


def _splits(args: argparse.Namespace) -> dict[str, list[data_io.Structure]]:
    if args.data:
        return data_io.split_structures(
            _read(args.data), args.seed, args.val_fraction, args.test_fraction
        )
    return {"train": _read(args.train), "val": _read(args.val), "test": _read(args.test)}


def _stress(args: argparse.Namespace, splits: dict) -> bool:
    everything = [s for name in data_io.SPLITS for s in splits[name]]
    if args.stress is False:
        return False
    missing = next((s for s in everything if s.stress is None), None)
    if args.stress and missing is not None:
        raise ValueError(
            f"--stress: {missing.where} has no stress label; every structure needs one "
            "(or leave out --stress: stress is then trained only where all have one)"
        )
    return missing is None


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Everything before training: data, normalization, step-0 checkpoint(s), configs.
    Returns (and writes to ``DIR/finetune.json``) the settings the later steps read."""
    from escn_plugin.finetune.normalization import fit_normalization

    out = args.out.resolve()
    start = start_io.load_start(args.checkpoint)  # first: a wrong file fails at once
    splits = _splits(args)
    stress = _stress(args, splits)
    summary = data_io.data_summary(splits)
    folders = data_io.write_splits(out / "data", splits, stress)
    log.info("data: %s -> %s", summary["counts"], out / "data")
    normalization = fit_normalization(
        folders["train"], out / "start", stress, args.conservative, args.seed
    )
    use_pbc = summary["any_periodic"]
    model = start_io.hydra_model(
        start, args.conservative, stress, use_pbc, freeze_backbone=args.freeze_backbone
    )
    ranks = args.num_gpus
    n_train = len(splits["train"])
    epochs = args.epochs or (
        epochs_for(args.max_steps, n_train, args.batch_size, ranks)
        if args.max_steps
        else DEFAULT_EPOCHS
    )
    common = dict(
        data=folders,
        normalization=normalization,
        stress=stress,
        conservative=args.conservative,
        epochs=epochs,
        n_train=n_train,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        ranks=ranks,
    )
    initial = out / "start" / "initial_checkpoint.pt"
    config = finetune_config(model=model, initial_weights=initial, **common)
    state = start_io.initial_state_dict(start, model, normalization["normalizer"], args.seed)
    refs = normalization["element_references"]["coeff"]
    start_io.write_checkpoint(initial, state, config, normalization["normalizer"], refs)
    checkpoints = {"step0" if args.conservative else "start": str(initial)}
    if args.conservative:  # the start as it is (direct heads), for the "before" row
        direct = start_io.hydra_model(start, False, False, use_pbc)
        direct_norm = {k: v for k, v in normalization["normalizer"].items() if k != "stress"}
        direct_cfg = finetune_config(
            model=direct, initial_weights=None, **dict(common, stress=False, conservative=False)
        )
        direct_state = start_io.initial_state_dict(start, direct, direct_norm, args.seed)
        as_is = out / "start" / "start_as_is.pt"
        start_io.write_checkpoint(as_is, direct_state, direct_cfg, direct_norm, refs)
        checkpoints["start"] = str(as_is)
    (out / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    runs = {RUN_ID: str(out)}
    if args.from_scratch:
        scratch = finetune_config(
            model=dict(model, freeze_backbone=False), initial_weights=None, **common
        )
        (out / SCRATCH_DIR).mkdir(parents=True, exist_ok=True)
        (out / SCRATCH_DIR / "config.yml").write_text(yaml.safe_dump(scratch, sort_keys=False))
        runs[SCRATCH_DIR] = str(out / SCRATCH_DIR)
    settings = {
        "argv": sys.argv[1:],
        "mode": "conservative" if args.conservative else "direct",
        "stress": stress,
        "epochs": epochs,
        "steps": epochs * steps_per_epoch(n_train, args.batch_size, ranks),
        "device": args.device,
        "num_gpus": ranks,
        "nve_steps": args.nve_steps,
        "seed": args.seed,
        "freeze_backbone": args.freeze_backbone,
        "runs": runs,
        "evaluate": checkpoints,
        "data": summary,
        "normalization": {
            "normalizer": normalization["normalizer"],
            "element_references": {
                "file": normalization["element_references"]["file"],
                "coeff": {int(z): float(c) for z, c in enumerate(refs) if c != 0.0},
            },
        },
        "start": {
            "path": start.path,
            "origin": start.origin,
            "step": start.step,
            "direct_forces": start.direct_forces,
            "dropped_heads": start.dropped_heads,
            "normalizers": start.normalizers,
        },
    }
    (out / "finetune.json").write_text(json.dumps(settings, indent=1, default=float))
    return settings


def train_command(run_dir: str, device: str, num_gpus: int) -> list[str]:
    """The fairchem command line that trains ``RUN_DIR/config.yml`` (what this runs)."""
    from escn_plugin.workflows.fairchem_runner import fairchem_command

    cmd = [
        *fairchem_command(),
        "--mode",
        "train",
        "--config-yml",
        f"{run_dir}/config.yml",
        "--run-dir",
        run_dir,
        "--identifier",
        "config",
        "--timestamp-id",
        RUN_ID,
    ]
    if device == "cpu":
        cmd.append("--cpu")
    if num_gpus > 1:
        cmd += ["--num-gpus", str(num_gpus)]
    return cmd


def _train(run_dir: Path, settings: dict, stream: bool) -> dict[str, Any]:
    """Train (or resume, or skip if finished) the run in ``run_dir``."""
    import torch

    from escn_plugin.workflows.fairchem_runner import run_fairchem

    config = yaml.safe_load((run_dir / "config.yml").read_text())
    ckpt_dir = run_dir / "checkpoints" / RUN_ID
    last = ckpt_dir / "checkpoint.pt"
    extra = ["--timestamp-id", RUN_ID]
    if settings["num_gpus"] > 1:
        extra += ["--num-gpus", str(settings["num_gpus"])]
    done_step = settings["steps"]
    log_file = run_dir / "train.log"
    step = None
    if last.is_file():
        step = int(torch.load(last, map_location="cpu", weights_only=False).get("step", 0))
    seconds = 0.0
    if step is not None and step >= done_step:
        log.info("%s: already trained (%d steps)", run_dir, step)
    else:
        if step is not None:
            log.info("%s: resuming from step %d (%s)", run_dir, step, last)
            extra += ["--checkpoint", str(last)]
        begin = time.perf_counter()
        text = run_fairchem(
            config,
            run_dir,
            "train",
            *extra,
            identifier="config",
            stream=stream,
            print_every=max(1, min(10, done_step // 20)),
            cpu=settings["device"] == "cpu",
            timeout=7 * 24 * 3600,
        )
        seconds = time.perf_counter() - begin
        with log_file.open("a") as fh:
            fh.write(text)
    return {
        "checkpoint": str(ckpt_dir / "best_checkpoint.pt"),
        "last_checkpoint": str(last),
        "seconds": seconds,
        "steps": done_step,
        "log": log_file.read_text() if log_file.is_file() else "",
    }


def _test_structures(out: Path) -> list[data_io.Structure]:
    """The test split, as written (labels from the LMDB records)."""
    import pickle

    import lmdb
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixAtoms

    path = out / "data" / "test" / "data.lmdb"
    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False)
    structures = []
    with env.begin() as txn:
        n = pickle.loads(txn.get(b"length"))
        for i in range(n):
            d = pickle.loads(txn.get(str(i).encode("ascii")))
            atoms = Atoms(
                numbers=d.atomic_numbers.long().numpy(),
                positions=d.pos.double().numpy(),
                cell=d.cell.reshape(3, 3).double().numpy(),
                pbc=d.pbc.reshape(3).numpy(),
                tags=d.tags.numpy(),
            )
            fixed = d.fixed.numpy().astype(bool)
            if fixed.any():
                atoms.set_constraint(FixAtoms(mask=fixed))
            labels = {"energy": float(d.energy), "forces": d.forces.double().numpy()}
            if hasattr(d, "stress"):
                labels["stress"] = d.stress.reshape(3, 3).double().numpy()
            atoms.calc = SinglePointCalculator(atoms, **labels)
            structures.append(data_io.Structure(atoms, str(path), i))
    env.close()
    return structures


def evaluate_and_report(out: Path, settings: dict, runs: dict[str, dict]) -> dict[str, Path]:
    """Test errors of every model, NVE drift (conservative), the report files."""
    import numpy as np

    from escn_plugin.finetune import evaluate
    from escn_plugin.finetune.normalization import reference_energies
    from escn_plugin.finetune.report import write_report
    from escn_plugin.workflows.fairchem_runner import learning_curve

    test = _test_structures(out)
    coeff = np.zeros(119)
    for z, c in settings["normalization"]["element_references"]["coeff"].items():
        coeff[int(z)] = c
    refs = reference_energies(coeff, test)
    true = np.array([s.atoms.calc.results["energy"] for s in test])
    natoms = np.array([len(s.atoms) for s in test])
    errors = {
        "references": {
            "energy_mae": float(np.abs(refs - true).mean()),
            "energy_per_atom_mae": float((np.abs(refs - true) / natoms).mean()),
        }
    }
    checkpoints = dict(settings["evaluate"])
    checkpoints["finetuned"] = runs[RUN_ID]["checkpoint"]
    if SCRATCH_DIR in runs:
        checkpoints["from_scratch"] = runs[SCRATCH_DIR]["checkpoint"]
    predictions = {}
    for name, path in checkpoints.items():
        predictions[name] = evaluate.predict(path, test, settings["device"])
        errors[name] = evaluate.errors(predictions[name])
        log.info("test errors, %s: %s", name, errors[name])
    report: dict[str, Any] = {
        "command": {
            "finetune": "python -m escn_plugin.finetune " + " ".join(settings["argv"]),
            "train": " ".join(train_command(str(out), settings["device"], settings["num_gpus"])),
        },
        "settings": {
            k: settings[k]
            for k in (
                "mode",
                "stress",
                "epochs",
                "steps",
                "seed",
                "freeze_backbone",
                "device",
                "num_gpus",
            )
        },
        "data": settings["data"],
        "normalization": settings["normalization"],
        "start": settings["start"],
        "test": errors,
        "runs": {
            k: {kk: v[kk] for kk in ("checkpoint", "seconds", "steps")} for k, v in runs.items()
        },
        "notes": [
            "fine-tuned model: best validation force MAE, EMA weights (best_checkpoint.pt)",
        ],
    }
    if "from_scratch" in errors:
        report["ratios"] = {
            k: errors["finetuned"][k] / errors["from_scratch"][k]
            for k in errors["finetuned"]
            if errors["from_scratch"].get(k)
        }
    if settings["mode"] == "conservative" and settings["nve_steps"] > 0:
        periodic = [s for s in test if s.atoms.pbc.all()] or test
        system = max(periodic, key=lambda s: len(s.atoms))
        report["nve"] = {
            name: evaluate.nve_drift(
                checkpoints[name], system, settings["nve_steps"], settings["device"]
            )
            for name in ("finetuned", "start")
        }
        report["nve"] = {
            ("fine-tuned (conservative)" if k == "finetuned" else "start (direct)"): v
            for k, v in report["nve"].items()
        }
    curves = {name: learning_curve(run["log"]) for name, run in runs.items()}
    return write_report(out, report, predictions, curves)


def run(args: argparse.Namespace, stream: bool = True) -> dict[str, Path]:
    """The whole command (see the module doc); returns the report's paths."""
    out = args.out.resolve()
    if args.resume:
        settings = json.loads((out / "finetune.json").read_text())
    else:
        settings = prepare(args)
    if args.prepare_only:
        for name, run_dir in settings["runs"].items():
            cmd = train_command(run_dir, settings["device"], settings["num_gpus"])
            print(f"{name}: " + " ".join(cmd))
        return {}
    runs = {
        name: _train(Path(run_dir), settings, stream) for name, run_dir in settings["runs"].items()
    }
    paths = evaluate_and_report(out, settings, runs)
    print(f"report: {paths['md']}")
    return paths


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        run(args)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
