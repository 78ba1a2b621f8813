"""The main job's dataset: generate (or reuse) it, read its metadata and records."""

from __future__ import annotations

import json
import os
from pathlib import Path


def make_dataset(
    out_dir: str | os.PathLike, seed: int = 0, size: str = "demo", workers: int = 1
) -> Path:
    """Generate (or reuse) the OC20-EMT dataset in ``out_dir`` (``workers`` processes);
    returns its root."""
    from escn_plugin.datasets.oc20_emt import generate

    return Path(generate(out_dir, seed=seed, size=size, workers=workers)["root"])


def load_metadata(data_root: str | os.PathLike) -> dict:
    """The generator's ``metadata.json`` (counts, per-split statistics, systems)."""
    return json.loads((Path(data_root) / "metadata.json").read_text())


def records(path: str | os.PathLike) -> list:
    """Every record of an LMDB file, or of ``DIR/data.lmdb`` for a directory ``path``."""
    from escn_plugin.datasets.oc20_emt import read_lmdb

    path = Path(path)
    return read_lmdb(path / "data.lmdb" if path.is_dir() else path)
