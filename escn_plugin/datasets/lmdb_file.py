"""Open and read fairchem-format LMDB files safely: a damaged file gives a ValueError that
names it (and the record), never a bus error or a bare ``UnicodeDecodeError``.

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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lmdb

__all__ = [
    "check_complete",
    "iter_records",
    "lmdb_files",
    "num_records",
    "open_lmdb",
    "read_record",
]


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


@contextmanager
def open_lmdb(path: str | os.PathLike) -> Iterator[lmdb.Environment]:
    """Open one LMDB file read-only after checking it is complete (see the module doc)."""
    path = Path(path)
    size = path.stat().st_size
    try:
        env = lmdb.open(
            str(path),
            subdir=False,
            readonly=True,
            lock=False,
            readahead=False,
            meminit=False,
            max_readers=1,
        )
    except lmdb.Error as err:
        raise ValueError(
            f"{path}: not a readable LMDB file ({type(err).__name__}: {err}); "
            "the file is damaged or not an LMDB"
        ) from err
    try:
        check_complete(env, path, size)
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
