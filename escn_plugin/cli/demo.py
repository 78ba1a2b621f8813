"""The main job, end to end on a small OC20-format dataset labelled with EMT.

::

    python -m escn_plugin.demo [--out demo_output] [--seed 0] [--epochs N] [--size demo]

1. generate (or reuse) the ``demo`` OC20-EMT dataset (:mod:`escn_plugin.datasets.oc20_emt`:
   adsorption energies of hundreds of adsorbate+slab systems) into ``OUT/data``; fit
   linear per-element energy references on its train split;
2. train a small eSCN with the stock ``fairchem --mode train`` (its output streamed), then
   ``--mode validate`` on val and ``--mode predict`` on test with the trained
   ``best_checkpoint.pt``;
3. build an OC20 S2EF leaderboard-format submission file from the test predictions with
   fairchem's ``make_submission_file`` (the one test split stands in for all four OC20
   test splits) and check that it loads;
4. ``fairchem --mode run-relaxations`` on the IS2RS test split; IS2RE energy MAE / EwT (the
   model's energy at the relaxed positions, through ``OCPCalculator``) and IS2RS ADwT /
   mean distance are computed here (fairchem 1.10's own IS2RE number is wrong);
5. the trained model's rotation error on test structures and its NVE energy drift (vs
   EMT's own) from one relaxed test structure;
6. report: learning curve, energy/force MAE vs train-mean, element-reference and
   zero-force baselines, relaxation metrics, rotation error, ``OUT/learning_curve.png``,
   ``OUT/parity.png``, ``OUT/report.md`` and ``OUT/results.json``.

Every step is a function in :mod:`escn_plugin.workflows` (one concern per module), so
tests can run them on the ``tiny`` dataset; this script only composes them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from escn_plugin.cli.check_data import check_lmdb
from escn_plugin.common.progress import log
from escn_plugin.workflows.configs import (
    DATA_WORKERS,
    DEMO_EPOCHS,
    NVE_STEPS,
    RELAX_FMAX,
    RELAX_STEPS,
    ROTATION_CHECK_STRUCTURES,
    s2ef_config,
)
from escn_plugin.workflows.data import load_metadata, make_dataset, records
from escn_plugin.workflows.element_references import element_reference_mae, fit_element_references
from escn_plugin.workflows.equivariance import rotation_error
from escn_plugin.workflows.fairchem_runner import (
    fairchem_relaxation_log,
    learning_curve,
    predict,
    relaxation_steps_taken,
    run_relaxations,
    train,
    validate,
)
from escn_plugin.workflows.md import nve_drift
from escn_plugin.workflows.plots import learning_curve_plot, parity_plot
from escn_plugin.workflows.relaxation_metrics import relaxation_metrics
from escn_plugin.workflows.relaxations import (
    model_energies,
    read_relaxed_positions,
    trajectory_check,
)
from escn_plugin.workflows.report import count_parameters, format_report, jsonable
from escn_plugin.workflows.s2ef_metrics import baseline_metrics, s2ef_metrics
from escn_plugin.workflows.submission import check_submission, make_submission


def run_demo(
    out: str | os.PathLike = "demo_output",
    seed: int = 0,
    epochs: int = DEMO_EPOCHS,
    size: str = "demo",
    model: dict | None = None,
    relax_split: str = "test",
    relax_steps: int = RELAX_STEPS,
    stream: bool = True,
    workers: int = DATA_WORKERS,
) -> dict[str, Any]:
    """Run every step; returns the results (also written to ``OUT/report.md`` and
    ``OUT/results.json``)."""
    t0 = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_root = out / "runs" / time.strftime("%Y%m%d-%H%M%S")

    log(f"[1/6] dataset ({size}, seed {seed}) -> {out / 'data'}")
    t_data = time.perf_counter()
    data_root = make_dataset(out / "data", seed=seed, size=size, workers=workers)
    data_seconds = time.perf_counter() - t_data
    log(f"data check: {check_lmdb(data_root / 's2ef' / 'train')['records']} records OK")
    meta = load_metadata(data_root)
    train_mean = meta["s2ef"]["train"]["energy"]["mean"]
    refs = fit_element_references(data_root, out / "element_references.npz")
    log(
        f"linear element references fit on train -> {refs['file']} (energy MAE of the "
        f"references alone: val {refs['mae']['val']:.3f}, test {refs['mae']['test']:.3f} eV)"
    )

    log(f"[2/6] training eSCN for {epochs} epochs -> {run_root / 'train'}")
    config = s2ef_config(data_root, model=model, epochs=epochs, seed=seed, element_references=refs)
    trained = train(config, run_root / "train", stream=stream)
    # best_checkpoint.pt: EMA weights in place (what OCPCalculator needs too), chosen on
    # val forces MAE at each validation (every DEMO_EVAL_EVERY_EPOCHS epochs and after the
    # last step; with the cosine schedule usually the last)
    checkpoint = trained["best_checkpoint"]
    curve = learning_curve(trained["log"])
    log(f"trained in {trained['seconds']:.0f} s: {checkpoint}")

    log("[2/6] validate on val")
    val = validate(config, checkpoint, run_root / "validate", stream=stream)
    log(f"val: energy MAE {val['energy_mae']:.4f} eV, forces MAE {val['forces_mae']:.4f} eV/A")
    log("[2/6] predict on test")
    test_src = data_root / "s2ef" / "test"
    pred_path = predict(config, checkpoint, test_src, run_root / "predict", stream=stream)
    test = s2ef_metrics(pred_path, test_src)
    log(f"test: energy MAE {test['energy_mae']:.4f} eV, forces MAE {test['forces_mae']:.4f} eV/A")

    log("[3/6] OC20 S2EF submission file (the test predictions stand in for all 4 splits)")
    submission = make_submission(pred_path, out / "submission_s2ef.npz", stream=stream)
    keys = check_submission(submission)
    log(f"{submission} loads; keys: {', '.join(sorted(keys))}")

    log(f"[4/6] relaxations on the IS2RS {relax_split} split ({relax_steps} steps max)")
    relax_src = data_root / "is2re" / relax_split / "data.lmdb"
    relaxed = run_relaxations(
        config, checkpoint, relax_src, run_root / "relax", steps=relax_steps, stream=stream
    )
    positions = read_relaxed_positions(relaxed["relaxed_positions"])
    energies = model_energies(checkpoint, relax_src, positions)
    relax_train_mean = meta["is2re"]["train"]["y_relaxed"]["mean"]
    relax = relaxation_metrics(relaxed["relaxed_positions"], relax_src, energies, relax_train_mean)
    relax["is2re_baseline_mae_element_references"] = element_reference_mae(
        refs, records(relax_src), "y_relaxed"
    )
    trajs = trajectory_check(relaxed["traj_dir"], relaxed["relaxed_positions"])
    relax["stale_trajectories"] = trajs["stale"]
    relax["fairchem_logged"] = fairchem_relaxation_log(relaxed["log"])
    log(
        f"IS2RE energy MAE {relax['is2re_energy_mae']:.4f} eV (train-mean baseline "
        f"{relax['is2re_baseline_mae']:.4f}), IS2RS ADwT {relax['is2rs']['adwt']:.3f} "
        f"(initial structures: {relax['initial_as_relaxed']['adwt']:.3f}); trajectories "
        f"without the final frame: {trajs['stale'] or 'none'}"
    )

    log(f"[5/6] rotation error on {ROTATION_CHECK_STRUCTURES} test structures")
    rotation = rotation_error(
        checkpoint, records(relax_src)[:ROTATION_CHECK_STRUCTURES], n_rotations=2, seed=seed
    )
    log(
        f"force error / max force {rotation['force_error_max']:.1e} (max), energy error "
        f"{rotation['energy_error_max']:.1e} eV (max)"
    )

    system = records(relax_src)[0]
    log(f"[5/6] NVE energy drift ({NVE_STEPS} steps) on IS2RS system {int(system.sid)}")
    nve = nve_drift(checkpoint, system, steps=NVE_STEPS, seed=seed)
    log(
        f"drift {nve['model']['drift_ev_per_atom_ps']:+.2e} eV/atom/ps "
        f"(EMT {nve['emt']['drift_ev_per_atom_ps']:+.2e})"
    )

    log("[6/6] report")
    baseline = {
        split: {
            **baseline_metrics(data_root / "s2ef" / split, train_mean),
            "energy_mae_element_references": refs["mae"][split],
        }
        for split in ("val", "test")
    }
    curve_png = learning_curve_plot(
        curve, out / "learning_curve.png",
        {"energy_mae": baseline["val"]["energy_mae_element_references"],
         "forces_mae": baseline["val"]["forces_mae"]},
    )  # fmt: skip
    parity = parity_plot(test, out / "parity.png", relax)
    results = {
        "size": size,
        "seed": seed,
        "epochs": epochs,
        "data_root": str(data_root),
        "energy_definition": meta["energy"],
        "n_frames": {s: meta["s2ef"][s]["n_frames"] for s in ("train", "val", "test")},
        "n_systems": {s: meta["s2ef"][s]["n_systems"] for s in ("train", "val", "test")},
        "n_systems_train": meta["s2ef"]["train"]["n_systems"],
        "data_seconds": data_seconds,
        "model": config["model"],
        "optim": config["optim"],
        "loss_functions": config["loss_functions"],
        "n_params": count_parameters(checkpoint),
        "train_seconds": trained["seconds"],
        "train_energy_mean": train_mean,
        "learning_curve": curve,
        "s2ef": {
            "val": val,
            "test": {k: test[k] for k in ("n_frames", "energy_mae", "forces_mae")},
        },
        "baseline": baseline,
        "relax_split": relax_split,
        "relax_steps": relax_steps,
        "relax_fmax": RELAX_FMAX,
        "relax_max_steps_taken": relaxation_steps_taken(relaxed["log"]),
        "relax": relax,
        "rotation": rotation,
        "nve": nve,
        "submission": str(submission),
        "submission_keys": {k: list(v) for k, v in keys.items()},
        "files": {
            "dataset": str(data_root),
            "element references (npz, coeff)": str(refs["file"]),
            "checkpoint used (best_checkpoint.pt, EMA weights)": str(checkpoint),
            "last checkpoint (training state, for resuming)": str(trained["checkpoint"]),
            "training config and logs": str(run_root / "train"),
            "validate run": str(run_root / "validate"),
            "test predictions": str(pred_path),
            "S2EF submission file": str(submission),
            "relaxed positions (IS2RS)": str(relaxed["relaxed_positions"]),
            "relaxation trajectories (IS2RE)": str(relaxed["traj_dir"]),
            "learning curve": str(curve_png),
            "parity plot": str(parity),
            "report": str(out / "report.md"),
            "results (json)": str(out / "results.json"),
        },
    }
    results["wall_seconds"] = time.perf_counter() - t0
    results["cpu_seconds"] = cpu_seconds()
    report = format_report(results)
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=jsonable) + "\n")
    print("\n" + report, flush=True)
    return results


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and every finished child (fairchem runs,
    data workers): the compute a run took, whatever else shares the machine."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m escn_plugin.demo",
        description="Generate OC20-EMT data, train/validate/predict eSCN with fairchem, "
        "write a submission file, run relaxations and report.",
    )
    parser.add_argument("--out", default="demo_output", help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="dataset and training seed")
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="training epochs")
    parser.add_argument("--size", default="demo", choices=("demo", "tiny"), help="dataset size")
    parser.add_argument(
        "--relax-steps", type=int, default=RELAX_STEPS, help="max L-BFGS steps per relaxation"
    )
    parser.add_argument(
        "--workers", type=int, default=DATA_WORKERS, help="processes for data generation"
    )
    parser.add_argument("--quiet", action="store_true", help="do not stream fairchem's output")
    args = parser.parse_args(argv)
    return run_demo(
        args.out, seed=args.seed, epochs=args.epochs, size=args.size,
        relax_steps=args.relax_steps, stream=not args.quiet, workers=args.workers,
    )  # fmt: skip


def console() -> None:
    """The ``escn-demo`` console script (``main`` returns the results for Python callers)."""
    main()


if __name__ == "__main__":
    main()
