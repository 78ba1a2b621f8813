"""Damaging LMDB files the way disks and copies do, for tests of the named errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import lmdb


def truncate(path: Path) -> int:
    """Cut ``path`` to half its size (an interrupted copy); returns the new size."""
    size = path.stat().st_size // 2
    with open(path, "r+b") as f:
        f.truncate(size)
    return size


def corrupt_record(path: Path, key: int) -> None:
    """Overwrite 4 bytes of record ``key``'s pickled field name ``atomic_numbers`` in place,
    as a flipped disk block would, and check that unpickling it now fails with a bare
    ``UnicodeDecodeError`` (what fairchem's datasets show, naming nothing)."""
    name = f"{key}".encode("ascii")
    with lmdb.open(str(path), subdir=False, readonly=True, lock=False) as env:
        with env.begin() as txn:
            value = txn.get(name)
    raw = bytearray(path.read_bytes())
    where = raw.find(value)  # a value longer than a page sits contiguously in overflow pages
    if where < 0 or raw.count(value) != 1 or b"atomic_numbers" not in value:
        raise ValueError(f"{path}: record {key} is not stored as one overflow run")
    where += value.find(b"atomic_numbers")
    raw[where : where + 4] = b"\xff\xfe\xfd\xfc"
    path.write_bytes(bytes(raw))
    with lmdb.open(str(path), subdir=False, readonly=True, lock=False) as env:
        with env.begin() as txn:
            try:
                pickle.loads(txn.get(name))
            except UnicodeDecodeError:
                return
    raise AssertionError(f"{path}: record {key} still unpickles after the damage")
