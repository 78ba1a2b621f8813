"""Write, open and read fairchem-format LMDB files. Reading is safe: a damaged file gives
a ValueError that names it (and the record), never a bus error or a bare
``UnicodeDecodeError``.

py-lmdb maps the whole file into memory. If the file is shorter than the database it
describes (a truncated copy or download), the first read of a page past the end of the
file kills the process with SIGBUS. LMDB's meta page, read with ``pread`` when the file is
opened, records the last page in use; so before any record is read::

    file size  >=  (last_pgno + 1) * page_size          (else: truncated)

Pages beyond ``last_pgno`` are never followed (LMDB refuses page numbers past it), so
after this check every read stays inside the file. A record whose bytes are damaged fails
in ``pickle.loads`` (``UnicodeDecodeError``, ``UnpicklingError``, ...): re-raised as a
ValueError naming the file and the key.

The layout is fairchem's ``LmdbDataset`` (``format: lmdb``): ASCII keys ``"0"`` ..
``"n-1"`` hold pickled PyG ``Data`` records; an optional ``"length"`` key holds n.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb
import numpy as np

__all__ = [
    "LMDB_MAP_SIZE",
    "check_complete",
    "iter_records",
    "lmdb_files",
    "num_records",
    "open_env",
    "open_lmdb",
    "read_lmdb",
    "read_record",
    "write_lmdb",
]

LMDB_MAP_SIZE = 1 << 30  # an upper bound; the file grows only as written (sparse on Linux)


def lmdb_files(path: str | os.PathLike) -> list[Path]:
    """``path`` itself if it is a file, else the ``*.lmdb`` files of the folder, sorted
    (fairchem's ``LmdbDataset`` rule)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValueError(f"{path}: no such LMDB file or folder")
    files = sorted(path.glob("*.lmdb"))
    if not files:
        raise ValueError(f"{path}: folder holds no *.lmdb file")
    return files


def open_env(path: str | os.PathLike, readahead: bool = False) -> lmdb.Environment:
    """Open one LMDB file read-only, as fairchem's datasets do, after checking it is
    complete (see the module doc); the caller closes it. ValueError naming the file if it
    is not a readable LMDB or is truncated.

    Open it in the process that reads it: an environment opened before a fork and read in
    the child (a ``DataLoader`` worker) can crash the child
    (:mod:`escn_plugin.datasets.checked_lmdb`)."""
    path = Path(path)
    try:
        size = path.stat().st_size  # before the map is made
        env = lmdb.open(
            str(path),
            subdir=False,
            readonly=True,
            lock=False,
            readahead=readahead,
            meminit=False,
            max_readers=1,
        )
    except (OSError, lmdb.Error) as err:
        raise ValueError(
            f"{path}: not a readable LMDB file ({type(err).__name__}: {err}); "
            "the file is missing, damaged or not an LMDB"
        ) from err
    try:
        check_complete(env, path, size)
    except BaseException:
        env.close()
        raise
    return env


@contextmanager
def open_lmdb(path: str | os.PathLike) -> Iterator[lmdb.Environment]:
    """:func:`open_env` as a context manager (closes the environment)."""
    env = open_env(path)
    try:
        yield env
    finally:
        env.close()


def check_complete(env: lmdb.Environment, path: str | os.PathLike, size: int | None = None) -> None:
    """ValueError unless the file holds every page the database uses (see the module doc).

    ``size``: the file size taken before the file was opened (default: now)."""
    size = Path(path).stat().st_size if size is None else size
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    if size < needed:
        raise ValueError(
            f"{path}: truncated LMDB: the file has {size} bytes but its database needs "
            f"{needed}; copy or regenerate the file"
        )


def num_records(env: lmdb.Environment, path: str | os.PathLike) -> int:
    """Number of records: the ``"length"`` key if present, else the number of entries
    (fairchem's rule)."""
    with env.begin() as txn:
        raw = txn.get(b"length")
        if raw is None:
            return int(txn.stat()["entries"])
    try:
        length = pickle.loads(raw)
    except Exception as err:
        raise ValueError(
            f"{path}: the 'length' entry cannot be unpickled ({type(err).__name__}: {err})"
        ) from err
    if not isinstance(length, int) or length < 0:
        raise ValueError(f"{path}: the 'length' entry is {length!r}, not a record count")
    return length


def read_record(txn: lmdb.Transaction, index: int, path: str | os.PathLike) -> Any:
    """Record ``index`` (key ``"index"``), unpickled; ValueError naming file and key."""
    key = f"{index}".encode("ascii")
    try:
        raw = txn.get(key)
    except lmdb.Error as err:
        raise ValueError(
            f"{path}: record {index} cannot be read ({type(err).__name__}: {err}); "
            "the LMDB is corrupted"
        ) from err
    if raw is None:
        raise ValueError(f"{path}: record {index} is missing (keys must be '0'..'n-1')")
    try:
        return pickle.loads(raw)
    except Exception as err:
        raise ValueError(
            f"{path}: record {index} cannot be unpickled ({type(err).__name__}: {err}); "
            "the entry is corrupted"
        ) from err


def iter_records(path: str | os.PathLike) -> Iterator[tuple[Path, int, Any]]:
    """``(file, index, record)`` for every record of an LMDB file or folder, in order."""
    for file in lmdb_files(path):
        with open_lmdb(file) as env:
            length = num_records(env, file)
            with env.begin() as txn:
                for index in range(length):
                    yield file, index, read_record(txn, index, file)


def write_lmdb(path: str | os.PathLike, records: Sequence[Any]) -> Path:
    """Write ``records`` as fairchem's ``LmdbDataset`` reads them, plus ``metadata.npz``.

    Replaces an existing file. No lock file is made (single writer).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    env = lmdb.open(
        str(path),
        map_size=LMDB_MAP_SIZE,
        subdir=False,
        meminit=False,
        map_async=True,
        lock=False,
    )
    try:
        with env.begin(write=True) as txn:
            for index, data in enumerate(records):
                txn.put(f"{index}".encode("ascii"), pickle.dumps(data, protocol=-1))
            txn.put(b"length", pickle.dumps(len(records), protocol=-1))
        env.sync()
    finally:
        env.close()
    natoms = np.array([int(data.natoms) for data in records], dtype=np.int64)
    np.savez(path.parent / "metadata.npz", natoms=natoms)
    return path


def read_lmdb(path: str | os.PathLike) -> list[Any]:
    """All records of one LMDB file written by :func:`write_lmdb`, in key order; a
    truncated or corrupted file raises a ValueError naming it (and the record)."""
    return [record for _, _, record in iter_records(path)]
