"""Data loading through the stock ``fairchem`` command: a few hundred records read by two
``DataLoader`` workers (``format: escn_plugin_lmdb``; fairchem's ``format: lmdb`` crashes
its workers on the same file), and a truncated or corrupted train file stopping the run
with the file and record named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from escn_plugin.datasets.emt_stress import generate
from escn_plugin.datasets.lmdb_io import read_lmdb, write_lmdb
from tests.datasets.damage import corrupt_record, truncate
from tests.helpers.fairchem_run import SMALL_MODEL, logged, only, run_fairchem

NUM_TRAIN = 300
BATCH = 50  # 6 steps per epoch


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """EMT bulk/slab frames: 300 train (one LMDB file), 8 val."""
    root = tmp_path_factory.mktemp("emt_300")
    return generate(root, seed=0, num_train=NUM_TRAIN, num_val=8, num_test=4, verbose=False)


def config(data_root: Path, train_src: Path, fmt: str = "escn_plugin_lmdb") -> dict:
    """Energy + forces on ``train_src``, validated on the 8 val frames, 2 workers, one epoch
    of 6 steps."""
    stats = json.loads((data_root / "metadata.json").read_text())["train"]
    split = {
        "format": fmt,
        "src": str(train_src),
        "key_mapping": {"y": "energy", "force": "forces"},
        "transforms": {
            "normalizer": {
                "energy": {"mean": stats["energy"]["mean"], "rmsd": stats["energy"]["std"]},
                "forces": {"mean": 0.0, "rmsd": stats["force_rms"]},
            }
        },
    }
    return {
        "trainer": "ocp",
        "logger": "tensorboard",
        "outputs": {
            "energy": {"level": "system"},
            "forces": {"level": "atom", "train_on_free_atoms": True, "eval_on_free_atoms": True},
        },
        "loss_functions": [
            {"energy": {"fn": "mae", "coefficient": 1}},
            {"forces": {"fn": "l2mae", "coefficient": 10}},
        ],
        "evaluation_metrics": {
            "metrics": {"energy": ["mae"], "forces": ["mae"]},
            "primary_metric": "forces_mae",
        },
        "dataset": {
            "train": split,
            "val": {"src": str(data_root / "val"), "format": fmt},
            "test": {"format": fmt},  # as the shipped configs: kept with --dataset.train=None
        },
        "model": dict(SMALL_MODEL, name="escn_plugin.eSCN"),
        "optim": {
            "batch_size": BATCH,
            "eval_batch_size": 8,
            "num_workers": 2,
            "lr_initial": 0.005,
            "optimizer": "AdamW",
            "scheduler": "Null",
            "max_epochs": 1,
        },
    }


def _failed_run(cfg: dict, workdir: Path) -> str:
    """The log of a fairchem run that must fail."""
    with pytest.raises(RuntimeError, match="failed with exit code") as info:
        run_fairchem(cfg, workdir, "train")
    return str(info.value)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> tuple[dict, str, Path]:
    """(config, log, checkpoint.pt) of one epoch on the 300 frames."""
    work = tmp_path_factory.mktemp("train_300")
    cfg = config(data_root, data_root / "train")
    log = run_fairchem(cfg, work, "train")
    return cfg, log, only(list(work.glob("checkpoints/*/checkpoint.pt")))


def test_300_records_train_and_validate_in_workers(trained):
    _, log, checkpoint = trained
    assert logged(log, "step") and np.isfinite(logged(log, "loss")).all(), log[-3000:]
    assert "Evaluating on val" in log and logged(log, "forces_mae"), log[-3000:]
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["step"] == NUM_TRAIN // BATCH
    assert (checkpoint.parent / "best_checkpoint.pt").stat().st_size > 0


def test_predict_300_records_in_workers_without_train_split(trained, data_root, tmp_path):
    """The documented predict command (train and val dropped): the test split keeps the
    checked format because the config's test split names it."""
    cfg, _, checkpoint = trained
    run_fairchem(
        cfg, tmp_path, "predict", "--checkpoint", str(checkpoint), "--dataset.train=None",
        "--dataset.val=None", f"--dataset.test.src={data_root / 'train'}",
    )  # fmt: skip
    pred = np.load(only(list(tmp_path.glob("results/*/ocp_predictions.npz"))))
    assert len(pred["energy"]) == NUM_TRAIN and np.isfinite(pred["energy"]).all()


def test_fairchem_lmdb_crashes_its_workers_on_the_same_run(data_root, tmp_path):
    """The control of the test above: only the format differs."""
    log = _failed_run(config(data_root, data_root / "train", fmt="lmdb"), tmp_path)
    assert "segmentation fault" in log.lower(), log[-3000:]


def test_oc22_format_300_records_in_workers(data_root, tmp_path):
    """``format: escn_plugin_oc22_lmdb``: OC22's total-energy records (``oc22`` set)."""
    for split in ("train", "val"):
        records = read_lmdb(data_root / split / "data.lmdb")
        for record in records:
            record.oc22 = 1
        write_lmdb(tmp_path / "oc22" / split / "data.lmdb", records)
    cfg = config(data_root, tmp_path / "oc22" / "train", fmt="escn_plugin_oc22_lmdb")
    cfg["dataset"]["val"]["src"] = str(tmp_path / "oc22" / "val")
    log = run_fairchem(cfg, tmp_path / "run", "train")
    assert logged(log, "step") and "Evaluating on val" in log, log[-3000:]
    assert list((tmp_path / "run").glob("checkpoints/*/checkpoint.pt"))


def _copy_train(data_root: Path, to: Path) -> Path:
    to.mkdir()
    shutil.copy(data_root / "train" / "data.lmdb", to / "data.lmdb")
    shutil.copy(data_root / "train" / "metadata.npz", to / "metadata.npz")
    return to / "data.lmdb"


def test_truncated_train_file_is_named(data_root, tmp_path):
    path = _copy_train(data_root, tmp_path / "train")
    size = truncate(path)
    log = _failed_run(config(data_root, path.parent), tmp_path / "run")
    assert f"ValueError: {path}: truncated LMDB: the file has {size} bytes" in log, log[-3000:]
    assert "bus error" not in log.lower() and "signal" not in log.lower()


def test_corrupted_record_is_named_from_a_worker(data_root, tmp_path):
    path = _copy_train(data_root, tmp_path / "train")
    corrupt_record(path, 123)
    log = _failed_run(config(data_root, path.parent), tmp_path / "run")
    assert "Caught ValueError in DataLoader worker process" in log, log[-3000:]
    assert f"ValueError: {path}: record 123 cannot be unpickled (UnicodeDecodeError" in log
    assert f"check the whole dataset with: python -m escn_plugin.check_data {path.parent}" in log
