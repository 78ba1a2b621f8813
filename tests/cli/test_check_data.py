"""``python -m escn_plugin.check_data``: every record checked for the task's fields, shapes,
dtypes, elements and finite values; damaged files named, never a bus error."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import lmdb
import pytest
import torch
from torch_geometric.data import Data

from escn_plugin.cli.check_data import check_lmdb, main
from escn_plugin.datasets.oc20_emt import read_lmdb, write_lmdb
from tests.helpers.structures import slabs


def s2ef_record(atoms, sid: int) -> Data:
    n = len(atoms)
    g = torch.Generator().manual_seed(sid)
    return Data(
        pos=torch.tensor(atoms.get_positions(), dtype=torch.float32),
        cell=torch.tensor(atoms.get_cell()[:], dtype=torch.float32).view(1, 3, 3),
        atomic_numbers=torch.tensor(atoms.get_atomic_numbers(), dtype=torch.float32),
        natoms=n,
        tags=torch.tensor(atoms.get_tags(), dtype=torch.long),
        fixed=torch.zeros(n, dtype=torch.int32),
        pbc=torch.tensor(atoms.pbc),
        y=-1.5 * sid,
        force=torch.randn(n, 3, generator=g),
        sid=sid,
        fid=0,
    )


N = len(slabs()[0])  # atoms of record 2, the one the tests break


def records(count: int = 4) -> list[Data]:
    return [s2ef_record(slabs()[i % 2], i) for i in range(count)]


def test_good_folder_passes_and_summarises(tmp_path, capsys):
    write_lmdb(tmp_path / "a.lmdb", records(3))
    write_lmdb(tmp_path / "b.lmdb", records(2))
    summary = check_lmdb(tmp_path, "s2ef")
    assert summary["records"] == 5 and len(summary["files"]) == 2
    assert summary["elements"] == [6, 8, 29, 78]
    assert main([str(tmp_path / "a.lmdb"), "--task", "s2ef"]) == 0
    assert "3 s2ef records in 1 file(s)" in capsys.readouterr().out


def _broken(field: str, value) -> list[Data]:
    recs = records()
    setattr(recs[2], field, value)
    return recs


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("force", None, "no forces field \\('force' or 'forces'\\)"),
        ("force", torch.full((3, 3), 0.0), f"'force' has shape \\(3, 3\\), expected \\[{N}, 3\\]"),
        ("pos", torch.full((N, 3), float("nan")), "'pos' is not finite \\(first in row 0: \\[nan"),
        ("y", float("inf"), "'y' is not finite"),
        ("atomic_numbers", torch.zeros(N), "atom 0 has atomic number 0, outside 1..89"),
        ("natoms", 5, f"'natoms' is 5 but 'pos' has {N} atoms"),
        ("fixed", torch.full((N,), 2), "'fixed' must hold 0/1"),
        ("cell", torch.zeros(1, 3, 3), "'cell' is degenerate"),
        ("pos", torch.zeros(N, 3, dtype=torch.long), "'pos' has dtype torch.int64"),
    ],
)
def test_bad_record_names_file_record_and_field(tmp_path, field, value, message):
    write_lmdb(tmp_path / "data.lmdb", _broken(field, value))
    with pytest.raises(ValueError, match=f"data.lmdb: record 2: {message}"):
        check_lmdb(tmp_path, "s2ef")


def test_task_fields(tmp_path):
    path = write_lmdb(tmp_path / "data.lmdb", records(2))
    with pytest.raises(ValueError, match="record 0: no relaxed positions field"):
        check_lmdb(path, "relax")
    with pytest.raises(ValueError, match="unknown task 'is2rs'"):
        check_lmdb(path, "is2rs")


#: run in a subprocess: a bus error there shows as a signal, not a dead test session
READ_THREE_WAYS = """
import sys
from escn_plugin.cli.check_data import main
from escn_plugin.datasets.checked_lmdb import CheckedLmdbDataset
from escn_plugin.datasets.oc20_emt import read_lmdb

path = sys.argv[1]
print("check_data exit status", main([path]))
for name, read in (("read_lmdb", read_lmdb), ("dataset", CheckedLmdbDataset)):
    try:
        read({"src": path} if name == "dataset" else path)
        print(name, "read it")
    except ValueError as err:
        print(name, "ValueError:", err)
"""


def test_truncated_lmdb_gives_a_message_not_a_bus_error(tmp_path):
    """check_data, the plugin's own reader (used by the main job) and the checked fairchem
    dataset all name the truncated file."""
    path = write_lmdb(tmp_path / "data.lmdb", records(40))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    result = subprocess.run(
        [sys.executable, "-c", READ_THREE_WAYS, str(path)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)),
        timeout=300,
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    message = f"{path}: truncated LMDB: the file has {size // 2} bytes"
    assert f"check_data: {message}" in result.stderr
    assert "check_data exit status 1" in result.stdout
    assert f"read_lmdb ValueError: {message}" in result.stdout
    assert f"dataset ValueError: {message}" in result.stdout


def test_corrupted_entry_names_file_and_record(tmp_path):
    path = write_lmdb(tmp_path / "data.lmdb", records(4))
    with lmdb.open(str(path), subdir=False, readonly=True, lock=False) as env:
        with env.begin() as txn:
            value = txn.get(b"1")
    raw = bytearray(path.read_bytes())
    where = raw.find(value)  # large values sit contiguously in overflow pages
    assert where > 0 and raw.count(value) == 1
    # damage record 1's pickled field name "atomic_numbers", as a flipped disk block
    # would: unpickling then fails in the middle of a string
    where += value.find(b"atomic_numbers")
    raw[where : where + 4] = b"\xff\xfe\xfd\xfc"
    path.write_bytes(bytes(raw))
    with lmdb.open(str(path), subdir=False, readonly=True, lock=False) as env:
        with env.begin() as txn:
            with pytest.raises(UnicodeDecodeError):  # what users saw, naming nothing
                pickle.loads(txn.get(b"1"))
    with pytest.raises(ValueError, match="data.lmdb: record 1 cannot be unpickled"):
        check_lmdb(path)
    with pytest.raises(ValueError, match="record 1 cannot be unpickled"):
        read_lmdb(path)


def test_not_an_lmdb(tmp_path):
    path = tmp_path / "data.lmdb"
    path.write_bytes(b"not an lmdb" * 1000)
    with pytest.raises(ValueError, match="not a readable LMDB file"):
        check_lmdb(path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no \\*.lmdb"):
        check_lmdb(empty)


def test_checked_lmdb_dataset_reads_what_fairchem_reads(tmp_path):
    """``format: escn_plugin_lmdb`` in a fairchem config: the records of ``format: lmdb``;
    a damaged record is named (more in tests/datasets/test_checked_lmdb.py)."""
    from fairchem.core.common.registry import registry

    good = write_lmdb(tmp_path / "data.lmdb", records(3))
    cls = registry.get_dataset_class("escn_plugin.datasets.checked_lmdb.CheckedLmdbDataset")
    assert cls is registry.get_dataset_class("escn_plugin_lmdb")
    plain = registry.get_dataset_class("lmdb")({"src": str(good)})
    checked = cls({"src": str(good)})
    assert len(checked) == 3 and torch.equal(checked[1].force, plain[1].force)
    with lmdb.open(str(good), subdir=False, lock=False) as env:
        with env.begin(write=True) as txn:
            txn.put(b"2", b"\x80\x05garbage")
    with pytest.raises(ValueError, match="data.lmdb: record 2 cannot be unpickled .*Unpickling"):
        cls({"src": str(good)})[2]


def empty_record(sid: int) -> Data:
    """A record with zero atoms (every per-atom field empty, natoms 0)."""
    return Data(
        pos=torch.zeros(0, 3),
        cell=torch.eye(3).view(1, 3, 3) * 10.0,
        atomic_numbers=torch.zeros(0),
        natoms=0,
        tags=torch.zeros(0, dtype=torch.long),
        fixed=torch.zeros(0, dtype=torch.int32),
        pbc=torch.tensor([True, True, True]),
        y=0.0,
        force=torch.zeros(0, 3),
        sid=sid,
        fid=0,
    )


def test_zero_atom_record_is_named(tmp_path, capsys):
    """check_data names the record with no atoms; the model would refuse the system only
    in training (escn_plugin.model.inputs.check_atoms), naming the batch's system."""
    from fairchem.core.datasets.lmdb_dataset import data_list_collater

    from escn_plugin.model.inputs import check_atoms

    recs = records(4)
    recs[2] = empty_record(2)
    path = write_lmdb(tmp_path / "data.lmdb", recs)
    assert read_lmdb(path)[2].natoms == 0  # the file really holds an empty structure
    batch = data_list_collater(read_lmdb(path)[1:3], otf_graph=True)
    with pytest.raises(ValueError, match=r"system 1 \(sid .*\) of the batch has no atoms"):
        check_atoms(batch, max_num_elements=90)
    message = f"{path}: record 2: the structure has no atoms ('pos' has shape (0, 3)): remove it"
    with pytest.raises(ValueError) as info:
        check_lmdb(path, "s2ef")
    assert str(info.value) == message
    assert main([str(path)]) == 1
    assert f"check_data: {message}" in capsys.readouterr().err
