"""Running the stock ``fairchem`` command: train, validate, predict, run-relaxations, and
reading what it logs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from escn_plugin.common.progress import log as _log
from escn_plugin.workflows.configs import RELAX_FMAX, RELAX_STEPS, relax_config
from escn_plugin.workflows.data import records as read_records


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
    show: Callable[[str], str | None] | None = None,
    cpu: bool = True,
) -> str:
    """Write ``config`` to ``RUN_DIR/<identifier>.yml`` and run the stock
    ``fairchem --mode MODE [--cpu]`` on it (``cpu=False``: fairchem's GPU default);
    stream its output (prefixed) while capturing it.
    ``config["seed"]`` (0 if absent) goes on the command line as ``--seed``: fairchem 1.10
    replaces the config's seed with the command line's (default 0).
    ``show(line)``, if given, decides what a streamed line prints as (None: nothing).
    Returns the combined log; raises ``RuntimeError`` on a non-zero exit."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    identifier = identifier or mode
    path = run_dir / f"{identifier}.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [
        *fairchem_command(),
        "--mode", mode, "--config-yml", str(path), *(["--cpu"] if cpu else []),
        "--run-dir", str(run_dir), "--identifier", identifier,
        "--print-every", str(print_every), "--seed", str(config.get("seed", 0)), *extra,
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
            shown = line.rstrip()[-300:] if show is None else show(line)
            if stream and shown is not None:
                print(f"  | {shown}", flush=True)
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


def newest_file(paths: Sequence[Path], what: str) -> Path:
    """The most recently modified of ``paths``; FileNotFoundError if there is none."""
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
    ckpt_dir = newest_file(list(Path(run_dir).glob("checkpoints/*")), "checkpoint directory")
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
    return newest_file(list(Path(run_dir).glob("results/*/ocp_predictions.npz")), "predictions")


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
    n_systems = len(read_records(relax_src))
    batch_size = cfg["optim"]["eval_batch_size"]
    progress = RelaxationProgress(-(-n_systems // batch_size), steps)
    log = run_fairchem(
        cfg, run_dir, "run-relaxations", "--checkpoint", str(checkpoint),
        identifier="relax", stream=stream, show=progress,
    )  # fmt: skip
    npz = newest_file(list(run_dir.glob("results/*/relaxed_positions.npz")), "relaxed positions")
    return {"relaxed_positions": npz, "traj_dir": traj_dir, "log": log}


class RelaxationProgress:
    """A line filter for ``run-relaxations`` output: fairchem's L-BFGS logs one line per
    step (``<step> <fmax per system>``); every ``every``-th step becomes one progress line
    (batch b/B, step s/S, the largest force still above fmax) and the rest is hidden."""

    def __init__(self, n_batches: int, steps: int, every: int = 10) -> None:
        self.n_batches, self.steps, self.every = n_batches, steps, every
        self.batch, self.last_step = 0, None

    def __call__(self, line: str) -> str | None:
        match = re.search(r"lbfgs_torch\.py:\d+: \(INFO\): (\d+) ([-+0-9.eE ]+)$", line)
        if match is None:
            return line.rstrip()[-300:]
        step = int(match.group(1))
        if self.last_step is None or step < self.last_step:
            self.batch += 1
        self.last_step = step
        if step % self.every:
            return None
        fmax = max(float(v) for v in match.group(2).split())
        done = (self.batch - 1 + step / self.steps) / self.n_batches
        bar = "#" * int(20 * done)
        return (
            f"relaxations [{bar:<20}] batch {self.batch}/{self.n_batches}, step "
            f"{step}/{self.steps}, largest per-system fmax {fmax:.3f} eV/A"
        )


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


def learning_curve(log: str) -> dict[str, dict[str, list[float]]]:
    """Train and val metrics against the optimizer step from a ``fairchem --mode train`` log.

    ``train``: the lines fairchem prints every ``--print-every`` steps (running means of
    ``loss``, ``energy_mae``, ``forces_mae`` since the previous line) with their ``step``;
    ``val``: the metrics of each ``Evaluating on val`` pass, at its epoch times the steps
    per epoch of the train lines (its epoch if there is no train line yet). Returns
    ``{"train": {"step", "loss", "energy_mae", "forces_mae"},
    "val": {...}}`` (lists, in log order).
    """
    keys = ("loss", "energy_mae", "forces_mae")
    curve = {split: {key: [] for key in ("step", *keys)} for split in ("train", "val")}
    steps_per_epoch = 1.0
    evaluating = False
    for line in log.splitlines():
        if "Evaluating on val" in line:
            evaluating = True
            continue
        values = {key: logged(line, key) for key in (*keys, "step", "epoch")}
        if not all(values[key] for key in keys):
            continue
        if values["step"]:  # a training line
            step = values["step"][-1]
            if values["epoch"] and values["epoch"][-1] > 0:
                steps_per_epoch = step / values["epoch"][-1]
            split = "train"
        elif evaluating and values["epoch"]:
            step = float(round(values["epoch"][-1] * steps_per_epoch))
            split, evaluating = "val", False
        else:
            continue
        curve[split]["step"].append(step)
        for key in keys:
            curve[split][key].append(values[key][-1])
    return curve
