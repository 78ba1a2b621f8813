"""The main job, end to end on a small OC20-format dataset labelled with EMT.

::

    python -m escn_plugin.demo [--out demo_output] [--seed 0] [--epochs N] [--size demo]

1. generate (or reuse) the ``demo`` OC20-EMT dataset (:mod:`escn_plugin.datasets.oc20_emt`)
   into ``OUT/data``; fit linear per-element energy references on its train split;
2. train a small eSCN with the stock ``fairchem --mode train`` (its output streamed), then
   ``--mode validate`` on val and ``--mode predict`` on test with the trained
   ``best_checkpoint.pt``;
3. build an OC20 S2EF leaderboard-format submission file from the test predictions with
   fairchem's ``make_submission_file`` (the one test split stands in for all four OC20
   test splits) and check that it loads;
4. ``fairchem --mode run-relaxations`` on the IS2RS test split; IS2RE energy MAE / EwT (the
   model's energy at the relaxed positions) and IS2RS ADwT / mean distance are computed
   here (fairchem 1.10's own IS2RE number is wrong, and its trajectories can miss the
   final frame);
5. report: energy/force MAE vs train-mean, element-reference and zero-force baselines,
   relaxation metrics, ``OUT/parity.png``, ``OUT/report.md`` and ``OUT/results.json``.

Every step is a function, so tests can run them on the ``tiny`` dataset.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from escn_plugin.check_data import check_lmdb

#: the demo model: a small eSCN (lmax 2, mmax 1, 2 layers, 48k parameters) that trains in
#: minutes on 2 CPU cores
DEMO_MODEL: dict[str, Any] = {
    "name": "escn_plugin.eSCN",
    "num_layers": 2,
    "lmax_list": [2],
    "mmax_list": [1],
    "sphere_channels": 16,
    "hidden_channels": 32,
    "edge_channels": 16,
    "num_sphere_samples": 32,
    "cutoff": 6.0,
    "max_neighbors": 20,
    "otf_graph": True,
    "distance_resolution": 0.1,
}
#: 39 steps of 8 frames per epoch. eSCN starts with almost no messages (its atom-pair
#: embeddings are initialised in +-0.001), so forces only come alive after ~100-200 Adam
#: steps: hence the high initial learning rate and several hundred steps
DEMO_EPOCHS = 12
DEMO_LR = 1e-2
#: relaxations in the demo: every IS2RS test system, L-BFGS as fairchem's relax configs
RELAX_STEPS = 100
RELAX_FMAX = 0.05
RELAX_OPT = {"maxstep": 0.04, "memory": 50, "damping": 1.0, "alpha": 70.0}

#: OC20 S2EF test splits; make_submission_file wants one predictions file for each
OC20_SPLITS = ("id", "ood_ads", "ood_cat", "ood_both")
SUBMISSION_FIELDS = ("ids", "energy", "forces", "chunk_idx")


def _log(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


# --------------------------------------------------------------------------------------
# 1. data
# --------------------------------------------------------------------------------------


def make_dataset(out_dir: str | os.PathLike, seed: int = 0, size: str = "demo") -> Path:
    """Generate (or reuse) the OC20-EMT dataset in ``out_dir``; returns its root."""
    from escn_plugin.datasets.oc20_emt import generate

    return Path(generate(out_dir, seed=seed, size=size)["root"])


def load_metadata(data_root: Path) -> dict:
    return json.loads((Path(data_root) / "metadata.json").read_text())


#: length of the element-reference table (indexed by atomic number)
N_ELEMENTS = 100


def _composition(records: Sequence) -> np.ndarray:
    counts = [
        np.bincount(d.atomic_numbers.numpy().astype(int), minlength=N_ELEMENTS) for d in records
    ]
    return np.stack(counts).astype(np.float64)


def fit_element_references(data_root: str | os.PathLike, out_file: str | os.PathLike) -> dict:
    """Fit linear per-element energy references on the S2EF train split (least squares of
    the energy on the element counts) and write them as fairchem reads them (an npz with
    ``coeff`` indexed by atomic number, for ``transforms.element_references``).

    Returns ``{"file", "coeff", "residual_mean", "residual_std", "mae": {split: MAE of the
    references alone as an energy prediction}}``; the residual statistics are the energy
    normalizer (fairchem normalises the de-referenced energy).
    """
    data_root = Path(data_root)
    train = _records(data_root / "s2ef" / "train")
    x, y = _composition(train), np.array([float(d.y) for d in train])
    coeff = np.linalg.lstsq(x, y, rcond=None)[0]
    residual = y - x @ coeff
    mae = {}
    for split in ("train", "val", "test"):
        records = _records(data_root / "s2ef" / split)
        energies = np.array([float(d.y) for d in records])
        mae[split] = float(np.abs(energies - _composition(records) @ coeff).mean())
    out_file = Path(out_file).resolve()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out_file, coeff=coeff)
    return {
        "file": out_file,
        "coeff": coeff,
        "residual_mean": float(residual.mean()),
        "residual_std": float(residual.std()),
        "mae": mae,
    }


# --------------------------------------------------------------------------------------
# 2. configs and the fairchem command
# --------------------------------------------------------------------------------------


def s2ef_config(
    data_root: str | os.PathLike,
    model: dict | None = None,
    epochs: int = DEMO_EPOCHS,
    batch_size: int = 8,
    lr: float = DEMO_LR,
    seed: int = 0,
    element_references: dict | None = None,
) -> dict:
    """An OCPTrainer S2EF config on the generated dataset (train + val splits).

    Normalizers come from the train split's statistics in ``metadata.json`` (energy mean
    and std, force rms); with ``element_references`` (from :func:`fit_element_references`)
    the model learns the energy minus the linear references, normalised by the residuals'
    mean and std. The learning rate follows a cosine over all training steps. The test
    split is left out (so training does not predict on it after every improvement);
    ``predict`` points ``dataset.test`` at a split on the command line.
    """
    data_root = Path(data_root).resolve()
    meta = load_metadata(data_root)
    train = meta["s2ef"]["train"]
    normalizer = {
        "energy": {"mean": train["energy"]["mean"], "stdev": train["energy"]["std"]},
        "forces": {"mean": 0.0, "stdev": train["force_rms"]},
    }
    transforms: dict[str, Any] = {"normalizer": normalizer}
    if element_references is not None:
        normalizer["energy"] = {
            "mean": element_references["residual_mean"],
            "stdev": element_references["residual_std"],
        }
        transforms = {
            "element_references": {"energy": {"file": str(element_references["file"])}},
            "normalizer": normalizer,
        }
    steps = epochs * -(-train["n_frames"] // batch_size)

    def split(name: str) -> dict:
        return {"src": str(data_root / "s2ef" / name)}

    return {
        "trainer": "ocp",
        "logger": "tensorboard",
        "seed": seed,
        "outputs": {
            "energy": {"level": "system", "prediction_dtype": "float32"},
            "forces": {
                "level": "atom",
                "train_on_free_atoms": True,
                "eval_on_free_atoms": True,
                "prediction_dtype": "float32",
            },
        },
        "loss_functions": [
            {"energy": {"fn": "mae", "coefficient": 1}},
            {"forces": {"fn": "l2mae", "coefficient": 10}},
        ],
        "evaluation_metrics": {
            "metrics": {"energy": ["mae"], "forces": ["mae", "cosine_similarity"]},
            "primary_metric": "forces_mae",
        },
        "dataset": {
            "train": {
                "format": "lmdb",
                **split("train"),
                "key_mapping": {"y": "energy", "force": "forces"},
                "transforms": transforms,
            },
            "val": split("val"),  # the rest comes from train (use_train_settings)
        },
        "model": copy.deepcopy(DEMO_MODEL if model is None else model),
        "optim": {
            "batch_size": batch_size,
            "eval_batch_size": 12,
            "num_workers": 0,
            "lr_initial": lr,
            "optimizer": "AdamW",
            "optimizer_params": {"amsgrad": True, "weight_decay": 0.0},
            "scheduler": "CosineAnnealingLR",
            "T_max": steps,
            "eta_min": lr / 25,
            "max_epochs": epochs,
            "ema_decay": 0.99,
            "clip_grad_norm": 10,
        },
    }


def relax_config(
    config: dict,
    relax_src: str | os.PathLike,
    traj_dir: str | os.PathLike,
    steps: int = RELAX_STEPS,
    fmax: float = RELAX_FMAX,
    batch_size: int = 8,
    save_full_traj: bool = True,
) -> dict:
    """``config`` plus what ``--mode run-relaxations`` needs on an IS2RE/IS2RS LMDB file.

    ``save_full_traj`` stays True: fairchem stops writing a system's frames once it
    converges, so with False a system converged before its batch finishes keeps only its
    initial frame (see :func:`trajectory_last_frames`)."""
    config = copy.deepcopy(config)
    config["dataset"]["relax"] = {
        "use_train_settings": False,  # no energy/force labels, no normalizer transform
        "format": "lmdb",
        "src": str(Path(relax_src).resolve()),
        "key_mapping": {"y_relaxed": "energy_relaxed"},  # for fairchem's val metrics
    }
    config["task"] = {
        "relaxation_steps": steps,
        "relaxation_fmax": fmax,
        "write_pos": True,
        "save_full_traj": save_full_traj,
        "relax_opt": {**RELAX_OPT, "traj_dir": str(Path(traj_dir).resolve())},
    }
    config["optim"]["eval_batch_size"] = batch_size
    return config


def fairchem_command() -> list[str]:
    """The installed ``fairchem`` console script next to this Python (else ``python -m``)."""
    script = Path(sys.executable).with_name("fairchem")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fairchem.core._cli"]


def run_fairchem(
    config: dict,
    run_dir: str | os.PathLike,
    mode: str,
    *extra: str,
    identifier: str | None = None,
    stream: bool = True,
    print_every: int = 10,
    timeout: float = 3600,
) -> str:
    """Write ``config`` to ``RUN_DIR/<identifier>.yml`` and run the stock
    ``fairchem --mode MODE --cpu`` on it; stream its output (prefixed) while capturing it.
    Returns the combined log; raises ``RuntimeError`` on a non-zero exit."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    identifier = identifier or mode
    path = run_dir / f"{identifier}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        *fairchem_command(),
        "--mode", mode, "--config-yml", str(path), "--cpu",
        "--run-dir", str(run_dir), "--identifier", identifier,
        "--print-every", str(print_every), *extra,
    ]  # fmt: skip
    if stream:
        _log("$ " + " ".join(cmd))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    lines: list[str] = []
    start = time.time()
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if stream:
                print(f"  | {line.rstrip()[-300:]}", flush=True)
            if time.time() - start > timeout:
                proc.kill()
                break
        rc = proc.wait()
    log = "".join(lines)
    if rc != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {rc}:\n{log[-5000:]}")
    return log


def logged(log: str, key: str) -> list[float]:
    """Every value of ``key: <number>`` in a fairchem log, in order."""
    return [float(v) for v in re.findall(rf"\b{key}: ([-+0-9.eE]+)", log)]


def _newest(paths: Sequence[Path], what: str) -> Path:
    paths = sorted(paths, key=lambda p: p.stat().st_mtime)
    if not paths:
        raise FileNotFoundError(f"no {what} found")
    return paths[-1]


def train(config: dict, run_dir: str | os.PathLike, stream: bool = True) -> dict[str, Any]:
    """``fairchem --mode train``; returns ``{"checkpoint", "best_checkpoint", "log", "seconds"}``
    (``checkpoint.pt``: the last epoch, EMA kept separately; ``best_checkpoint.pt``: best
    val forces MAE, EMA weights in place)."""
    start = time.perf_counter()
    log = run_fairchem(config, run_dir, "train", identifier="train", stream=stream)
    ckpt_dir = _newest(list(Path(run_dir).glob("checkpoints/*")), "checkpoint directory")
    return {
        "checkpoint": ckpt_dir / "checkpoint.pt",
        "best_checkpoint": ckpt_dir / "best_checkpoint.pt",
        "log": log,
        "seconds": time.perf_counter() - start,
    }


def validate(
    config: dict, checkpoint: Path, run_dir: str | os.PathLike, stream: bool = True
) -> dict[str, float]:
    """``fairchem --mode validate`` on ``dataset.val``; returns the last logged metrics."""
    log = run_fairchem(
        config, run_dir, "validate", "--checkpoint", str(checkpoint), identifier="validate",
        stream=stream,
    )  # fmt: skip
    metrics = {}
    for key in ("energy_mae", "forces_mae", "forces_cosine_similarity", "loss"):
        values = logged(log, key)
        if values:
            metrics[key] = values[-1]
    if "energy_mae" not in metrics or "forces_mae" not in metrics:
        raise RuntimeError(f"no validation metrics in the log:\n{log[-3000:]}")
    return metrics


def predict(
    config: dict,
    checkpoint: Path,
    src: str | os.PathLike,
    run_dir: str | os.PathLike,
    stream: bool = True,
) -> Path:
    """``fairchem --mode predict`` on the S2EF split ``src`` (``--dataset.test.src``
    override); returns the written ``ocp_predictions.npz``."""
    run_fairchem(
        config, run_dir, "predict", "--checkpoint", str(checkpoint),
        f"--dataset.test.src={Path(src).resolve()}", identifier="predict", stream=stream,
    )  # fmt: skip
    return _newest(list(Path(run_dir).glob("results/*/ocp_predictions.npz")), "predictions")


def run_relaxations(
    config: dict,
    checkpoint: Path,
    relax_src: str | os.PathLike,
    run_dir: str | os.PathLike,
    steps: int = RELAX_STEPS,
    fmax: float = RELAX_FMAX,
    stream: bool = True,
) -> dict[str, Path]:
    """``fairchem --mode run-relaxations`` on one IS2RE/IS2RS LMDB file; returns
    ``{"relaxed_positions": npz, "traj_dir": dir, "log": str}``."""
    run_dir = Path(run_dir).resolve()
    traj_dir = run_dir / "trajectories"
    cfg = relax_config(config, relax_src, traj_dir, steps=steps, fmax=fmax)
    log = run_fairchem(
        cfg, run_dir, "run-relaxations", "--checkpoint", str(checkpoint),
        identifier="relax", stream=stream,
    )  # fmt: skip
    npz = _newest(list(run_dir.glob("results/*/relaxed_positions.npz")), "relaxed positions")
    return {"relaxed_positions": npz, "traj_dir": traj_dir, "log": log}


def fairchem_relaxation_log(log: str) -> dict[str, float]:
    """The IS2RS/IS2RE metrics fairchem logs after a relaxation of a split with
    ``pos_relaxed``/``energy_relaxed`` (its IS2RE ``energy_mae`` is wrong in 1.10)."""
    found = {}
    for key in ("positions_average_distance_within_threshold", "positions_mae", "energy_mae"):
        match = re.search(rf"'{key}': {{[^}}]*'metric': ([-+0-9.eE]+)", log)
        if match:
            found[key] = float(match.group(1))
    return found


def relaxation_steps_taken(log: str) -> int:
    """The last L-BFGS step number fairchem logged (``<step> <fmax> <fmax> ...``)."""
    steps = re.findall(r"lbfgs_torch\.py:\d+: \(INFO\): (\d+) [0-9.]", log)
    return max((int(s) for s in steps), default=0)


# --------------------------------------------------------------------------------------
# 3. submission file
# --------------------------------------------------------------------------------------


def make_submission(
    predictions: dict[str, str | os.PathLike] | str | os.PathLike,
    out_path: str | os.PathLike,
    dataset: str = "OC20",
    is2re_relaxations: bool = False,
    stream: bool = True,
) -> Path:
    """Run ``python -m fairchem.core.scripts.make_submission_file``.

    ``predictions`` maps split names (OC20: id, ood_ads, ood_cat, ood_both; OC22: id, ood)
    to result files (S2EF/IS2RE ``*_predictions.npz``, IS2RS ``relaxed_positions.npz``) or,
    with ``is2re_relaxations``, trajectory directories. A single path is used for every
    split (a stand-in where only one test split exists).
    """
    splits = {"OC20": OC20_SPLITS, "OC22": ("id", "ood")}[dataset]
    if not isinstance(predictions, dict):
        predictions = dict.fromkeys(splits, predictions)
    out_path = Path(out_path).resolve()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fairchem.core.scripts.make_submission_file"]
    cmd += ["--dataset", dataset, "--out-path", str(out_path)]
    for split in splits:
        cmd += [f"--{split.replace('_', '-')}", str(Path(predictions[split]).resolve())]
    if is2re_relaxations:
        cmd.append("--is2re-relaxations")
    if stream:
        _log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    if stream:
        _log(proc.stdout.strip())
    return out_path if out_path.suffix == ".npz" else out_path.with_name(out_path.name + ".npz")


def check_submission(
    path: str | os.PathLike,
    splits: Sequence[str] = OC20_SPLITS,
    fields: Sequence[str] = SUBMISSION_FIELDS,
) -> dict[str, tuple]:
    """Load a submission file; check it has ``<split>_<field>`` for every split and field
    and that the splits agree in size. Returns ``{key: shape}``."""
    with np.load(path, allow_pickle=False) as sub:
        shapes = {key: sub[key].shape for key in sub.files}
    expected = {f"{s}_{f}" for s in splits for f in fields}
    missing = expected - set(shapes)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}; has {sorted(shapes)}")
    for field in fields:
        if len({shapes[f"{s}_{field}"] for s in splits}) != 1:
            raise ValueError(f"{path}: splits disagree in the shape of {field}")
    return shapes


# --------------------------------------------------------------------------------------
# 4. metrics
# --------------------------------------------------------------------------------------


def _records(path: Path) -> list:
    from escn_plugin.datasets.oc20_emt import read_lmdb

    path = Path(path)
    return read_lmdb(path / "data.lmdb" if path.is_dir() else path)


def s2ef_labels(src: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """``{"<sid>_<fid>": {"energy", "forces" (free atoms), "fixed"}}`` from an S2EF LMDB."""
    labels = {}
    for d in _records(Path(src)):
        free = d.fixed.numpy() == 0
        labels[f"{int(d.sid)}_{int(d.fid)}"] = {
            "energy": float(d.y),
            "forces": d.force.numpy().astype(np.float64)[free],
        }
    return labels


def s2ef_metrics(predictions: str | os.PathLike, src: str | os.PathLike) -> dict[str, Any]:
    """Energy MAE and force MAE (free atoms, all components, as fairchem's ``forces_mae``)
    of a predictions npz against the labels of the S2EF split ``src``; also the arrays for
    a parity plot."""
    labels = s2ef_labels(src)
    with np.load(predictions) as pred:
        ids = [str(i) for i in pred["ids"]]
        energy = pred["energy"].astype(np.float64).reshape(len(ids))
        forces = np.split(pred["forces"].astype(np.float64), pred["chunk_idx"])
    if sorted(ids) != sorted(labels):
        raise ValueError(f"{predictions}: ids do not match the frames of {src}")
    e_true = np.array([labels[i]["energy"] for i in ids])
    f_true = np.concatenate([labels[i]["forces"] for i in ids])
    f_pred = np.concatenate(forces)
    if f_pred.shape != f_true.shape:
        raise ValueError(f"force shapes differ: {f_pred.shape} vs {f_true.shape}")
    return {
        "n_frames": len(ids),
        "energy_mae": float(np.abs(energy - e_true).mean()),
        "forces_mae": float(np.abs(f_pred - f_true).mean()),
        "energy_pred": energy,
        "energy_true": e_true,
        "forces_pred": f_pred,
        "forces_true": f_true,
    }


def baseline_metrics(src: str | os.PathLike, train_energy_mean: float) -> dict[str, float]:
    """MAE of predicting the training-mean energy and zero forces (free atoms)."""
    labels = s2ef_labels(src).values()
    energies = np.array([v["energy"] for v in labels])
    forces = np.concatenate([v["forces"] for v in labels])
    return {
        "energy_mae": float(np.abs(energies - train_energy_mean).mean()),
        "forces_mae": float(np.abs(forces).mean()),
    }


def read_relaxed_positions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{sid: [N, 3] positions}`` from fairchem's ``relaxed_positions.npz``."""
    with np.load(path) as npz:
        ids = [str(i) for i in npz["ids"]]
        return dict(zip(ids, np.split(npz["pos"], npz["chunk_idx"])))


def trajectory_last_frames(traj_dir: str | os.PathLike) -> dict[str, Any]:
    """``{sid: last Atoms (energy attached), or None for an empty file}`` from fairchem's
    ``<sid>.traj`` files.

    fairchem 1.10's batched L-BFGS writes a frame only for systems still unconverged
    (``update_mask``): a system that converges before its batch finishes never gets its
    final frame written (with ``save_full_traj: False`` its file then holds only the
    initial frame), and one converged at step 0 gets an empty file.
    """
    from ase.io import Trajectory

    frames = {}
    for path in sorted(Path(traj_dir).glob("*.traj")):
        with Trajectory(path) as traj:
            frames[path.stem] = traj[-1] if len(traj) else None
    return frames


def _atoms(record, positions=None):
    from ase import Atoms
    from ase.constraints import FixAtoms

    atoms = Atoms(
        numbers=record.atomic_numbers.numpy(),
        positions=record.pos.numpy() if positions is None else positions,
        cell=record.cell.numpy().reshape(3, 3),
        pbc=True,
        tags=record.tags.numpy(),
    )
    atoms.set_constraint(FixAtoms(mask=record.fixed.numpy() == 1))
    return atoms


def model_energies(
    checkpoint: str | os.PathLike,
    relax_src: str | os.PathLike,
    positions: dict[str, np.ndarray],
) -> dict[str, float]:
    """The checkpoint's energy of each system of ``relax_src`` at ``positions[sid]`` (the
    relaxed structures), through fairchem's ``OCPCalculator``: the IS2RE prediction of a
    relaxation, independent of which frames fairchem wrote to the trajectories.
    ``OCPCalculator`` applies no EMA: pass ``best_checkpoint.pt`` (EMA weights in place)
    for the model that ``--mode run-relaxations`` used."""
    from fairchem.core.common.relaxation.ase_utils import OCPCalculator

    calc = OCPCalculator(checkpoint_path=str(checkpoint), cpu=True, seed=0)
    energies = {}
    for record in _records(Path(relax_src)):
        sid = str(int(record.sid))
        atoms = _atoms(record, positions[sid])
        atoms.calc = calc
        energies[sid] = float(atoms.get_potential_energy())
    return energies


def is2rs_metrics(
    pred_pos: Sequence[np.ndarray],
    true_pos: Sequence[np.ndarray],
    cells: Sequence[np.ndarray],
    free: Sequence[np.ndarray],
    pbc: Sequence[bool] = (True, True, True),
) -> dict[str, float]:
    """IS2RS metrics over structures, on free atoms, as fairchem's evaluator defines them.

    Per structure d = mean over free atoms of the minimum-image distance |r_pred - r_true|.
    ``adwt`` is fairchem's ``average_distance_within_threshold``: the fraction of
    (structure, threshold) pairs with d < threshold, thresholds 0.01, 0.011, ... 0.499 A,
    i.e. the OC20 ADwT ("average over thresholds of the fraction of structures whose
    mean atom distance is below the threshold"). ``mean_distance``: mean of d.
    ``positions_mae``: mean absolute Cartesian error with the minimum image (fairchem's
    is2rs ``positions_mae`` omits the minimum image). ``dwt_0.1``: fraction with d < 0.1.
    """
    import torch
    from fairchem.core.modules.evaluator import average_distance_within_threshold, min_diff

    pred = [np.asarray(p, np.float64)[np.asarray(m, bool)] for p, m in zip(pred_pos, free)]
    true = [np.asarray(t, np.float64)[np.asarray(m, bool)] for t, m in zip(true_pos, free)]
    cells = [np.asarray(c, np.float64).reshape(3, 3) for c in cells]
    natoms = torch.tensor([len(p) for p in pred])
    adwt = average_distance_within_threshold(
        {"positions": torch.from_numpy(np.concatenate(pred)), "natoms": natoms},
        {
            "positions": torch.from_numpy(np.concatenate(true)),
            "natoms": natoms,
            "cell": torch.from_numpy(np.stack(cells)),
            "pbc": torch.tensor(list(pbc)),
        },
    )["metric"]
    diffs = [min_diff(p, t, c, list(pbc)) for p, t, c in zip(pred, true, cells)]
    distances = np.array([np.linalg.norm(d, axis=1).mean() for d in diffs])
    return {
        "n_systems": len(pred),
        "adwt": float(adwt),
        "mean_distance": float(distances.mean()),
        "positions_mae": float(np.abs(np.concatenate(diffs)).mean()),
        "dwt_0.1": float((distances < 0.1).mean()),
    }


def relaxation_metrics(
    relaxed_positions: str | os.PathLike,
    relax_src: str | os.PathLike,
    relaxed_energies: dict[str, float],
    train_energy_mean: float | None = None,
) -> dict[str, Any]:
    """IS2RE and IS2RS metrics of a ``run-relaxations`` output against the IS2RE/IS2RS
    records (``y_relaxed``, ``pos_relaxed``) of ``relax_src``.

    IS2RE: ``relaxed_energies[sid]`` (see :func:`model_energies`) vs ``y_relaxed``: MAE,
    and EwT, the fraction within 0.02 eV (fairchem's ``energy_within_threshold``).
    IS2RS: see :func:`is2rs_metrics`. Reference rows: the unrelaxed initial structure as
    the IS2RS prediction, and (if given) the train-mean energy as the IS2RE prediction.
    """
    records = {str(int(d.sid)): d for d in _records(Path(relax_src))}
    positions = read_relaxed_positions(relaxed_positions)
    missing = set(records) - set(positions)
    if missing:
        raise ValueError(f"{relaxed_positions} lacks systems {sorted(missing)}")
    missing = set(records) - set(relaxed_energies)
    if missing:
        raise ValueError(f"no relaxed energy for systems {sorted(missing)}")
    sids = sorted(records, key=int)
    recs = [records[s] for s in sids]
    free = [d.fixed.numpy() == 0 for d in recs]
    cells = [d.cell.numpy().reshape(3, 3) for d in recs]
    true = [d.pos_relaxed.numpy() for d in recs]

    e_pred = np.array([relaxed_energies[s] for s in sids], dtype=np.float64)
    e_true = np.array([float(d.y_relaxed) for d in recs])
    err = np.abs(e_pred - e_true)
    out: dict[str, Any] = {
        "n_systems": len(sids),
        "sids": sids,
        "is2re_energy_mae": float(err.mean()),
        "is2re_ewt": float((err < 0.02).mean()),
        "is2rs": is2rs_metrics([positions[s] for s in sids], true, cells, free),
        "initial_as_relaxed": is2rs_metrics([d.pos.numpy() for d in recs], true, cells, free),
        "energy_pred": e_pred,
        "energy_true": e_true,
    }
    if train_energy_mean is not None:
        out["is2re_baseline_mae"] = float(np.abs(e_true - train_energy_mean).mean())
    return out


def trajectory_check(
    traj_dir: str | os.PathLike, relaxed_positions: str | os.PathLike, tol: float = 1e-4
) -> dict[str, Any]:
    """Which trajectories end on the relaxed structure in ``relaxed_positions.npz``?

    Returns ``{"energies": {sid: last-frame energy or None}, "stale": [sids whose last
    frame is missing or is not the final structure]}``: the IS2RE-by-relaxation submission
    (``make_submission_file --is2re-relaxations``) reads those last frames.
    """
    frames = trajectory_last_frames(traj_dir)
    positions = read_relaxed_positions(relaxed_positions)
    energies, stale = {}, []
    for sid, pos in positions.items():
        atoms = frames.get(sid)
        if atoms is None:
            energies[sid] = None
            stale.append(sid)
            continue
        energies[sid] = float(atoms.get_potential_energy())
        if np.abs(atoms.get_positions() - pos).max() > tol:
            stale.append(sid)
    return {"energies": energies, "stale": sorted(stale, key=int)}


# --------------------------------------------------------------------------------------
# 5. report
# --------------------------------------------------------------------------------------


def parity_plot(test: dict[str, Any], path: str | os.PathLike, relax: dict | None = None) -> Path:
    """Predicted vs EMT force components and energies (test split; relaxed energies too)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 3 if relax is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 4.4))

    def panel(ax, x, y, title, unit, **kw):
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        pad = 0.05 * (hi - lo or 1.0)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=0.8)
        ax.scatter(x, y, **kw)
        ax.set(xlabel=f"EMT {unit}", ylabel=f"eSCN {unit}", title=title)
        ax.set_aspect("equal", adjustable="box")

    ft, fp = test["forces_true"], test["forces_pred"]
    for k, (c, name) in enumerate(zip("rgb", "xyz")):
        panel(axes[0], ft[:, k], fp[:, k], "", "force (eV/A)", s=3, alpha=0.4, c=c, label=name)
    axes[0].set_title(f"test forces (free atoms), MAE {test['forces_mae']:.3f} eV/A")
    axes[0].legend(markerscale=3, loc="upper left")
    panel(
        axes[1], test["energy_true"], test["energy_pred"],
        f"test energies, MAE {test['energy_mae']:.3f} eV", "energy (eV)", s=12,
    )  # fmt: skip
    if relax is not None:
        panel(
            axes[2], relax["energy_true"], relax["energy_pred"],
            f"relaxed energies (IS2RE), MAE {relax['is2re_energy_mae']:.3f} eV",
            "relaxed energy (eV)", s=25, c="m",
        )  # fmt: skip
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_report(results: dict[str, Any]) -> str:
    """The markdown report of a demo run (``results`` as :func:`run_demo` builds it)."""
    r = results
    lines = [
        "# eSCN demo report",
        "",
        f"Dataset: OC20-EMT `{r['size']}` (seed {r['seed']}), {r['data_root']}: "
        f"S2EF train/val/test {r['n_frames']['train']}/{r['n_frames']['val']}/"
        f"{r['n_frames']['test']} frames; energies are EMT total energies (eV).",
        f"Model: `{r['model']['name']}` "
        + ", ".join(f"{k}={v}" for k, v in r["model"].items() if k != "name")
        + f"; {r['n_params']:,} parameters.",
        f"Training: {r['epochs']} epochs with `fairchem --mode train --cpu` in "
        f"{r['train_seconds']:.0f} s; total wall time {r['wall_seconds']:.0f} s.",
        "",
        "## S2EF (energy MAE in eV, force MAE in eV/A on free atoms)",
        "",
        "| split | eSCN energy | eSCN forces | train-mean energy | element-reference energy "
        "| zero forces |",
        "|---|---|---|---|---|---|",
    ]
    for split in ("val", "test"):
        m, b = r["s2ef"][split], r["baseline"][split]
        lines.append(
            f"| {split} | {m['energy_mae']:.4f} | {m['forces_mae']:.4f} | "
            f"{b['energy_mae']:.4f} | {b['energy_mae_element_references']:.4f} | "
            f"{b['forces_mae']:.4f} |"
        )
    lines += [
        "",
        f"Baselines: the training-set mean energy ({r['train_energy_mean']:.3f} eV); the "
        "linear per-element references fit on train (least squares on element counts), "
        "which eSCN is trained on top of (fairchem `transforms.element_references`); zero "
        "forces. val: `fairchem --mode validate`; test: computed from `--mode predict`'s npz "
        "against the LMDB labels. The energies are EMT totals of whole systems and the "
        f"training set has {r['n_systems_train']} systems (metal, facet, cell, adsorbate): "
        "systems unlike any training system dominate the energy error.",
    ]
    rel = r.get("relax")
    if rel is not None:
        a, z = rel["is2rs"], rel["initial_as_relaxed"]
        logged = rel.get("fairchem_logged", {})
        lines += [
            "",
            f"## Relaxations ({rel['n_systems']} IS2RS {r['relax_split']} systems, fairchem's "
            f"batched L-BFGS, at most {r['relax_steps']} steps, fmax {r['relax_fmax']} eV/A; "
            f"{r.get('relax_max_steps_taken', '?')} steps taken)",
            "",
            "| | eSCN relaxation | initial structure (no relaxation) |",
            "|---|---|---|",
            f"| IS2RS ADwT (0.01-0.5 A) | {a['adwt']:.3f} | {z['adwt']:.3f} |",
            f"| IS2RS DwT at 0.1 A | {a['dwt_0.1']:.3f} | {z['dwt_0.1']:.3f} |",
            f"| mean free-atom distance to the EMT relaxed structure (A) | "
            f"{a['mean_distance']:.4f} | {z['mean_distance']:.4f} |",
            f"| IS2RE energy MAE (eV) | {rel['is2re_energy_mae']:.4f} | "
            f"train-mean baseline: {rel.get('is2re_baseline_mae', float('nan')):.4f} |",
            f"| IS2RE EwT (0.02 eV) | {rel['is2re_ewt']:.3f} | |",
            "",
            "ADwT as fairchem's `average_distance_within_threshold` (per structure: mean "
            "minimum-image distance over free atoms; the fraction of structures below each "
            "threshold 0.01, 0.011, ..., 0.499 A, averaged)"
            + (
                f"; fairchem's own log after the relaxation says "
                f"{logged['positions_average_distance_within_threshold']:.3f}"
                if "positions_average_distance_within_threshold" in logged
                else ""
            )
            + ". IS2RE: the model's energy (best_checkpoint.pt through OCPCalculator) at "
            "the relaxed positions vs EMT's relaxed energy"
            + (
                f"; the IS2RE MAE fairchem 1.10 logs ({logged['energy_mae']:.4f} eV) is "
                "wrong (it broadcasts (B, 1) against (B,))"
                if "energy_mae" in logged
                else ""
            )
            + ".",
            "Trajectories whose last frame is not the final structure (fairchem stops "
            "writing a system once it converges): "
            + (", ".join(rel["stale_trajectories"]) or "none")
            + ".",
        ]
    lines += [
        "",
        "## Submission file",
        "",
        f"`{r['submission']}` from `python -m fairchem.core.scripts.make_submission_file`: "
        f"keys {', '.join(sorted(r['submission_keys']))}.",
        "**Stand-in:** OC20 S2EF wants predictions on four test splits (id, ood_ads, "
        "ood_cat, ood_both); this dataset has one test split, so the same predictions file "
        "was passed for all four.",
        "",
        "## Files",
        "",
    ]
    lines += [f"- {name}: `{path}`" for name, path in r["files"].items()]
    return "\n".join(lines) + "\n"


def count_parameters(checkpoint: str | os.PathLike) -> int:
    import torch

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return int(sum(v.numel() for v in state.values() if v.dtype.is_floating_point))


def run_demo(
    out: str | os.PathLike = "demo_output",
    seed: int = 0,
    epochs: int = DEMO_EPOCHS,
    size: str = "demo",
    model: dict | None = None,
    relax_split: str = "test",
    relax_steps: int = RELAX_STEPS,
    stream: bool = True,
) -> dict[str, Any]:
    """Run every step; returns the results (also written to ``OUT/report.md`` and
    ``OUT/results.json``)."""
    t0 = time.perf_counter()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_root = out / "runs" / stamp

    _log(f"[1/5] dataset ({size}, seed {seed}) -> {out / 'data'}")
    data_root = make_dataset(out / "data", seed=seed, size=size)
    _log(f"data check: {check_lmdb(data_root / 's2ef' / 'train')['records']} records OK")
    meta = load_metadata(data_root)
    train_mean = meta["s2ef"]["train"]["energy"]["mean"]
    refs = fit_element_references(data_root, out / "element_references.npz")
    _log(
        f"linear element references fit on train -> {refs['file']} (energy MAE of the "
        f"references alone: val {refs['mae']['val']:.3f}, test {refs['mae']['test']:.3f} eV)"
    )

    _log(f"[2/5] training eSCN for {epochs} epochs -> {run_root / 'train'}")
    config = s2ef_config(data_root, model=model, epochs=epochs, seed=seed, element_references=refs)
    trained = train(config, run_root / "train", stream=stream)
    # best_checkpoint.pt: EMA weights in place (what OCPCalculator needs too), chosen on
    # val forces MAE at the end of each epoch (with the cosine schedule: usually the last)
    checkpoint = trained["best_checkpoint"]
    _log(f"trained in {trained['seconds']:.0f} s: {checkpoint}")

    _log("[2/5] validate on val")
    val = validate(config, checkpoint, run_root / "validate", stream=stream)
    _log(f"val: energy MAE {val['energy_mae']:.4f} eV, forces MAE {val['forces_mae']:.4f} eV/A")
    _log("[2/5] predict on test")
    test_src = data_root / "s2ef" / "test"
    pred_path = predict(config, checkpoint, test_src, run_root / "predict", stream=stream)
    test = s2ef_metrics(pred_path, test_src)
    _log(f"test: energy MAE {test['energy_mae']:.4f} eV, forces MAE {test['forces_mae']:.4f} eV/A")

    _log("[3/5] OC20 S2EF submission file (the test predictions stand in for all 4 splits)")
    submission = make_submission(pred_path, out / "submission_s2ef.npz", stream=stream)
    keys = check_submission(submission)
    _log(f"{submission} loads; keys: {', '.join(sorted(keys))}")

    _log(f"[4/5] relaxations on the IS2RS {relax_split} split ({relax_steps} steps max)")
    relax_src = data_root / "is2re" / relax_split / "data.lmdb"
    relaxed = run_relaxations(
        config, checkpoint, relax_src, run_root / "relax", steps=relax_steps, stream=stream
    )
    positions = read_relaxed_positions(relaxed["relaxed_positions"])
    energies = model_energies(checkpoint, relax_src, positions)
    relax = relaxation_metrics(relaxed["relaxed_positions"], relax_src, energies, train_mean)
    trajs = trajectory_check(relaxed["traj_dir"], relaxed["relaxed_positions"])
    relax["stale_trajectories"] = trajs["stale"]
    relax["fairchem_logged"] = fairchem_relaxation_log(relaxed["log"])
    _log(
        f"IS2RE energy MAE {relax['is2re_energy_mae']:.4f} eV, IS2RS ADwT "
        f"{relax['is2rs']['adwt']:.3f} (initial structures: "
        f"{relax['initial_as_relaxed']['adwt']:.3f}); trajectories without the final "
        f"frame: {trajs['stale'] or 'none'}"
    )

    _log("[5/5] report")
    baseline = {
        split: {
            **baseline_metrics(data_root / "s2ef" / split, train_mean),
            "energy_mae_element_references": refs["mae"][split],
        }
        for split in ("val", "test")
    }
    parity = parity_plot(test, out / "parity.png", relax)
    results = {
        "size": size,
        "seed": seed,
        "epochs": epochs,
        "data_root": str(data_root),
        "n_frames": {s: meta["s2ef"][s]["n_frames"] for s in ("train", "val", "test")},
        "n_systems_train": meta["s2ef"]["train"]["n_systems"],
        "model": config["model"],
        "n_params": count_parameters(checkpoint),
        "train_seconds": trained["seconds"],
        "train_energy_mean": train_mean,
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
            "parity plot": str(parity),
            "report": str(out / "report.md"),
            "results (json)": str(out / "results.json"),
        },
    }
    results["wall_seconds"] = time.perf_counter() - t0
    report = format_report(results)
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=_jsonable) + "\n")
    print("\n" + report, flush=True)
    return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


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
    parser.add_argument("--quiet", action="store_true", help="do not stream fairchem's output")
    args = parser.parse_args(argv)
    return run_demo(
        args.out, seed=args.seed, epochs=args.epochs, size=args.size,
        relax_steps=args.relax_steps, stream=not args.quiet,
    )  # fmt: skip


if __name__ == "__main__":
    main()
