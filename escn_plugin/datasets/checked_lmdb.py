"""fairchem's ``LmdbDataset`` with named errors instead of a bus error or a bare
``UnicodeDecodeError``.

Use it in a fairchem config by its full path (the stock CLI imports it)::

    dataset:
      train:
        format: escn_plugin.datasets.checked_lmdb.CheckedLmdbDataset
        src: data/s2ef/train

Everything else is fairchem's ``format: lmdb``. Each file is checked to hold every page
its database uses when the dataset opens it (a truncated file fails at start-up, naming
it: :func:`escn_plugin.datasets.lmdb_file.check_complete`), and a record that cannot be
unpickled raises a ValueError naming the dataset path and the index.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import lmdb
from fairchem.core.common.registry import registry
from fairchem.core.datasets.lmdb_dataset import LmdbDataset

from escn_plugin.datasets.lmdb_file import check_complete

__all__ = ["CheckedLmdbDataset"]

#: what reading and unpickling a damaged record raises (TypeError: a missing key's None)
UNREADABLE = (lmdb.Error, pickle.UnpicklingError, UnicodeDecodeError, EOFError, TypeError)


@registry.register_dataset("escn_plugin_lmdb")
class CheckedLmdbDataset(LmdbDataset):
    """``format: lmdb`` that checks each file's size and names bad records."""

    def connect_db(self, lmdb_path: Path | None = None) -> lmdb.Environment:
        size = Path(lmdb_path).stat().st_size  # before the map is made
        env = super().connect_db(lmdb_path)
        try:
            check_complete(env, lmdb_path, size)
        except ValueError:
            env.close()
            raise
        return env

    def __getitem__(self, idx: int):
        try:
            return super().__getitem__(idx)
        except UNREADABLE as err:
            raise ValueError(
                f"{self.path}: record {idx} cannot be read ({type(err).__name__}: {err}); "
                f"check the data with: python -m escn_plugin.check_data {self.path}"
            ) from err
