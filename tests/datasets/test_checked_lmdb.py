"""The checked LMDB datasets (``format: escn_plugin_lmdb`` / ``escn_plugin_oc22_lmdb``):
fairchem's records, read in forked ``DataLoader`` workers where fairchem's own classes crash,
and damaged files named instead of a bus error or a bare ``UnicodeDecodeError``."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
import torch
from fairchem.core.common.registry import registry
from fairchem.core.datasets.lmdb_dataset import data_list_collater
from torch.utils.data import DataLoader
from torch_geometric.data import Data

from escn_plugin.datasets.checked_lmdb import CheckedLmdbDataset, CheckedOC22LmdbDataset
from escn_plugin.datasets.lmdb_io import write_lmdb
from tests.datasets.damage import corrupt_record, truncate

#: enough records for fairchem's LmdbDataset to crash its workers here (40 already do, 8 not)
MANY = 300


def record(i: int, natoms: int = 4) -> Data:
    """A small S2EF record in OC20's layout (the values only need to be distinct)."""
    g = torch.Generator().manual_seed(i)
    return Data(
        pos=torch.rand(natoms, 3, generator=g) * 3.0,
        cell=torch.eye(3).view(1, 3, 3) * 3.0,
        atomic_numbers=torch.full((natoms,), 29.0),
        natoms=natoms,
        tags=torch.zeros(natoms, dtype=torch.long),
        fixed=torch.zeros(natoms, dtype=torch.int32),
        y=float(i),
        force=torch.randn(natoms, 3, generator=g),
        sid=i,
        fid=0,
        oc22=1,  # OC22's marker of a total-energy record (oc22_lmdb requires it)
    )


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """One file of MANY records."""
    return write_lmdb(
        tmp_path_factory.mktemp("many") / "data.lmdb", [record(i) for i in range(MANY)]
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A folder of two files (fairchem's S2EF layout), 200 + 100 records."""
    root = tmp_path_factory.mktemp("folder")
    write_lmdb(root / "a.lmdb", [record(i) for i in range(200)])
    write_lmdb(root / "b.lmdb", [record(i) for i in range(200, 300)])
    return root


def _sids(dataset, workers: int, epochs: int = 1) -> list[list[int]]:
    """The sids each epoch reads through a DataLoader (fairchem's collater)."""
    loader = DataLoader(dataset, batch_size=8, num_workers=workers, collate_fn=data_list_collater)
    return [[int(s) for batch in loader for s in batch.sid] for _ in range(epochs)]


#: fairchem's own class read the same way, in a subprocess (a worker crash ends only it)
PLAIN_IN_WORKERS = """
import sys
from torch.utils.data import DataLoader
from fairchem.core.common.registry import registry
from fairchem.core.datasets.lmdb_dataset import data_list_collater
import fairchem.core.datasets.oc22_lmdb_dataset  # registers oc22_lmdb
dataset = registry.get_dataset_class(sys.argv[1])({"src": sys.argv[2]})
loader = DataLoader(dataset, batch_size=8, num_workers=2, collate_fn=data_list_collater)
print("read", sum(batch.num_graphs for batch in loader))
"""


@pytest.mark.parametrize("fmt", ["lmdb", "oc22_lmdb"])
def test_fairchem_datasets_crash_in_workers(many, fmt):
    """The control: fairchem's classes on the same file, the same loader, crash the worker
    (environments opened in the parent, read in forked children)."""
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_IN_WORKERS, fmt, str(many)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode == 0:
        pytest.skip(f"fairchem's {fmt} read {MANY} records in workers here: no control")
    assert "segmentation fault" in result.stderr.lower(), result.stderr[-3000:]


@pytest.mark.parametrize("cls", [CheckedLmdbDataset, CheckedOC22LmdbDataset])
@pytest.mark.parametrize("layout", ["file", "folder"])
def test_reads_in_workers_like_fairchem_in_the_main_process(cls, layout, many, folder):
    """Workers of a fresh dataset (fairchem's crash: nothing read in the parent yet), then
    the parent, then workers again (they inherit the parent's environments, unused)."""
    src = str(many if layout == "file" else folder)
    dataset = cls({"src": src})
    assert len(dataset) == MANY and dataset._open_pid is None  # nothing open after __init__
    in_workers = _sids(dataset, workers=2, epochs=2)
    assert dataset._open_pid is None  # the workers opened their own
    expected = _sids(dataset, workers=0)[0]
    assert dataset._open_pid == os.getpid()  # read here: opened here
    assert sorted(expected) == list(range(MANY))
    assert in_workers == [expected, expected] == _sids(dataset, workers=2)[:1] * 2
    plain = registry.get_dataset_class("oc22_lmdb" if "OC22" in cls.__name__ else "lmdb")
    reference = plain({"src": src})  # fairchem's class, read in this process
    for i in (0, 150, MANY - 1):
        assert torch.equal(dataset[i].force, reference[i].force)
        assert getattr(dataset[i], "id", None) == getattr(reference[i], "id", None)


def test_pickles_without_environments(many):
    dataset = CheckedLmdbDataset({"src": str(many)})
    first = dataset[5]
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy._open_pid is None and torch.equal(copy[5].pos, first.pos)


def test_short_names_registered_by_importing_the_plugin():
    """``import escn_plugin`` alone (what building ``escn_plugin.eSCN`` does) registers the
    short names, in a fresh interpreter."""
    code = (
        "from fairchem.core.common.registry import registry\n"
        "import escn_plugin\n"
        "for name in ('escn_plugin_lmdb', 'escn_plugin_oc22_lmdb'):\n"
        "    print(name, registry.get_dataset_class(name).__name__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "escn_plugin_lmdb CheckedLmdbDataset" in out
    assert "escn_plugin_oc22_lmdb CheckedOC22LmdbDataset" in out


@pytest.mark.parametrize("cls", [CheckedLmdbDataset, CheckedOC22LmdbDataset])
def test_truncated_file_fails_at_start_naming_it(tmp_path, cls):
    path = write_lmdb(tmp_path / "data.lmdb", [record(i) for i in range(100)])
    size = truncate(path)
    with pytest.raises(ValueError, match=f"{path}: truncated LMDB: the file has {size} bytes"):
        cls({"src": str(path)})
    junk = tmp_path / "junk" / "data.lmdb"
    junk.parent.mkdir()
    junk.write_bytes(b"not an lmdb" * 1000)
    with pytest.raises(ValueError, match=f"{junk}: not a readable LMDB file"):
        cls({"src": str(junk.parent)})


def test_corrupted_record_is_named_in_a_worker(folder, tmp_path):
    root = tmp_path / "s2ef"
    root.mkdir()
    for name in ("a.lmdb", "b.lmdb"):
        (root / name).write_bytes((folder / name).read_bytes())
    corrupt_record(root / "b.lmdb", 7)  # dataset item 207
    dataset = CheckedLmdbDataset({"src": str(root)})
    message = (
        f"{root / 'b.lmdb'}: record 7 cannot be unpickled \\(UnicodeDecodeError.*the entry is "
        f"corrupted; check the whole dataset with: python -m escn_plugin.check_data {root}"
    )
    with pytest.raises(ValueError, match=message):
        dataset[207]
    with pytest.raises(ValueError, match=message):  # re-raised from the worker
        _sids(dataset, workers=2)
    assert dataset[206].sid == 206  # the neighbours still read


def test_missing_record_and_other_errors_are_named(tmp_path):
    path = write_lmdb(tmp_path / "data.lmdb", [record(i) for i in range(3)])
    with lmdb.open(str(path), subdir=False, lock=False) as env:
        with env.begin(write=True) as txn:
            txn.delete(b"1")
            txn.put(b"2", pickle.dumps(5))  # unpickles, but is no Data record
    dataset = CheckedLmdbDataset({"src": str(path)})
    with pytest.raises(ValueError, match=f"{path}: record 1 is missing"):
        dataset[1]
    with pytest.raises(AttributeError) as info:  # fairchem's own error, kept, with a note
        dataset[2]
    assert f"while reading {path}: record 2 (dataset item 2)" in info.value.__notes__
    with pytest.raises(IndexError):
        dataset[3]
