"""fairchem's LMDB datasets, opened in the process that reads them and checked, so that
``DataLoader`` workers and damaged files give a result or a named error, never a
segmentation fault, a bus error or a bare ``UnicodeDecodeError``.

=================================  ==================================  =================
``format:`` (short name)           full path (always resolves)          reads as
=================================  ==================================  =================
``escn_plugin_lmdb``               ``escn_plugin.datasets.checked_lmdb  ``lmdb``
                                   .CheckedLmdbDataset``
``escn_plugin_oc22_lmdb``          ``escn_plugin.datasets.checked_lmdb  ``oc22_lmdb``
                                   .CheckedOC22LmdbDataset``
=================================  ==================================  =================

The short names are registered by ``import escn_plugin``. fairchem 1.10's trainer builds
the model before the datasets (``BaseTrainer.load``), and building ``escn_plugin.eSCN``
(or a hydra model with ``escn_plugin.eSCNBackbone``) imports the plugin, so with this
plugin's models the short names work with the stock ``fairchem`` command; with another
model use the full path.

What differs from fairchem's classes (records, keys, ``length`` entry, transforms,
``key_mapping`` and ``id`` are theirs):

* **Workers.** fairchem opens its LMDB environments in ``__init__``, in the parent
  process; read in forked ``DataLoader`` workers they crash the worker with a
  segmentation fault once a file holds a few dozen records (measured with py-lmdb 1.8.1,
  2 workers: 40 records crash, 8 do not; the children crash on pages the parent has not
  read). Here ``__init__`` reads the lengths and closes its environments; each process
  opens its own on its first ``__getitem__`` (tracked by ``os.getpid()``). A pickled
  dataset carries no environment.
* **Truncated files** fail when the dataset is built, naming the file
  (:func:`escn_plugin.datasets.lmdb_io.check_complete`): a read past the end of a
  memory-mapped file would kill the process with SIGBUS.
* **Bad records** (corrupted bytes, a missing key) raise a ValueError naming the file
  and the record (:func:`escn_plugin.datasets.lmdb_io.read_record`) and the command that
  checks the whole dataset. Any other error while reading a record keeps its type and
  gets a note naming the file and the record.
"""

from __future__ import annotations

import bisect
import os
from pathlib import Path
from typing import Any

import lmdb
from fairchem.core.common.registry import registry
from fairchem.core.datasets.lmdb_dataset import LmdbDataset
from fairchem.core.datasets.oc22_lmdb_dataset import OC22LmdbDataset

from escn_plugin.datasets.lmdb_io import open_env, read_record

__all__ = ["CheckedLmdbDataset", "CheckedOC22LmdbDataset"]

#: the command that checks every record of a dataset (named in read errors)
CHECK_COMMAND = "python -m escn_plugin.check_data"


class _PerProcessEnvironments:
    """Mixin for fairchem's LMDB datasets (``self.env`` for one file, ``self.envs`` for a
    folder of ``*.lmdb``; ``self._keys``, ``self._keylen_cumulative``): environments are
    opened per process, files checked, read errors named. Put it before the fairchem class
    in the bases."""

    path: Path
    _keys: list
    _keylen_cumulative: list[int]

    def __init__(self, config: dict) -> None:
        self._open_pid: int | None = None
        super().__init__(config)  # opens every file (checked) and reads its length
        single = self.path.is_file()
        self._db_paths = [self.path] if single else sorted(self.path.glob("*.lmdb"))
        self._close()

    def connect_db(self, lmdb_path: Path | None = None) -> lmdb.Environment:
        """fairchem's options (read-only, no lock, readahead), after a completeness check."""
        return open_env(lmdb_path, readahead=True)

    def _close(self) -> None:
        """Close this process's environments (a no-op if none are open)."""
        envs = getattr(self, "envs", None) or []
        env = getattr(self, "env", None)
        for each in [*envs, *([env] if env is not None else [])]:
            each.close()
        self.envs, self.env, self._open_pid = [], None, None

    def _open_here(self) -> None:
        """Give this process its own environments. Ones inherited through a fork are
        dropped unread: closing them in the child only unmaps the child's copy."""
        if self._open_pid == os.getpid():
            return
        self.envs, self.env = [], None  # inherited (or none): never read here
        envs = [self.connect_db(path) for path in self._db_paths]
        if self.path.is_file():
            self.env = envs[0]
        else:
            self.envs = envs
        self._open_pid = os.getpid()

    def _locate(self, idx: int) -> tuple[Path, int]:
        """(file, key) of dataset item ``idx``, as fairchem's ``__getitem__`` finds it."""
        if self.path.is_file():
            return self.path, self._keys[idx]
        db_idx = bisect.bisect(self._keylen_cumulative, idx)
        start = self._keylen_cumulative[db_idx - 1] if db_idx else 0
        return self._db_paths[db_idx], self._keys[db_idx][idx - start]

    def _item_index(self, idx: int) -> int:
        """The index fairchem's ``__getitem__`` looks up for item ``idx``."""
        return idx

    def __getitem__(self, idx: int) -> Any:
        self._open_here()
        try:
            return super().__getitem__(idx)
        except IndexError:
            raise
        except Exception as err:
            self._name_the_record(idx, err)
            raise

    def _name_the_record(self, idx: int, err: Exception) -> None:
        """Raise a ValueError naming the file and record if the record itself is bad;
        else add a note naming them to ``err`` (the caller re-raises it)."""
        try:
            path, key = self._locate(self._item_index(idx))
        except IndexError:
            return
        env = self.env if self.path.is_file() else self.envs[self._db_paths.index(path)]
        try:
            with env.begin() as txn:
                read_record(txn, key, path)
        except ValueError as bad:
            hint = f"check the whole dataset with: {CHECK_COMMAND} {self.path}"
            raise ValueError(f"{bad}; {hint}") from err
        err.add_note(f"while reading {path}: record {key} (dataset item {idx})")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(envs=[], env=None, _open_pid=None)
        return state

    def __del__(self) -> None:
        if getattr(self, "_open_pid", None) == os.getpid():
            self._close()


@registry.register_dataset("escn_plugin_lmdb")
class CheckedLmdbDataset(_PerProcessEnvironments, LmdbDataset):
    """fairchem's ``format: lmdb`` (``LmdbDataset``), opened per process and checked."""

    def _item_index(self, idx: int) -> int:
        return int(self.indices[idx])  # fairchem's sharding map (identity if unsharded)


@registry.register_dataset("escn_plugin_oc22_lmdb")
class CheckedOC22LmdbDataset(_PerProcessEnvironments, OC22LmdbDataset):
    """fairchem's ``format: oc22_lmdb`` (``OC22LmdbDataset``: total energies),
    opened per process and checked."""
