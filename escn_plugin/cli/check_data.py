"""Check an LMDB dataset before training: every record readable and holding what fairchem
needs for the task, with the right shapes, dtypes, element range and finite values.

::

    python -m escn_plugin.check_data PATH [--task s2ef|is2re|relax] [--max-num-elements 90]

PATH is one LMDB file or a folder of ``*.lmdb`` files (as a fairchem ``src``). The first
problem raises a ValueError naming the file and the record (the command prints it and
exits with status 1); a truncated or corrupted file gives that message too, not a bus
error (:mod:`escn_plugin.datasets.lmdb_io`). Fields per record (N atoms), after
fairchem's names (docs/fairchem_notes.md §5):

=========  ============================================================================
all tasks  ``pos`` [N, 3] float, ``atomic_numbers`` [N] integral in 1..max_num_elements-1,
           ``natoms`` = N, ``cell`` [1, 3, 3] float (non-degenerate where ``pbc`` says
           periodic), ``sid``; if present: ``tags`` [N] integral, ``fixed`` [N] 0/1
s2ef       energy ``y`` (or ``energy``), forces ``force`` (or ``forces``) [N, 3], ``fixed``
is2re      relaxed energy ``y_relaxed`` (or ``energy_relaxed``)
relax      ``pos_relaxed`` [N, 3], ``fixed``
=========  ============================================================================

Every float must be finite.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from escn_plugin.datasets.lmdb_io import iter_records

__all__ = ["TASKS", "check_lmdb", "check_record", "main"]

#: per task: (what, accepted names) of the fields fairchem needs beyond the common ones
TASKS: dict[str, tuple[tuple[str, tuple[str, ...]], ...]] = {
    "s2ef": (("energy", ("y", "energy")), ("forces", ("force", "forces")), ("fixed", ("fixed",))),
    "is2re": (("relaxed energy", ("y_relaxed", "energy_relaxed")),),
    "relax": (("relaxed positions", ("pos_relaxed",)), ("fixed", ("fixed",))),
}
COMMON = (
    ("positions", ("pos",)),
    ("atomic numbers", ("atomic_numbers",)),
    ("atom count", ("natoms",)),
    ("cell", ("cell",)),
    ("system id", ("sid",)),
)
PER_ATOM_VECTORS = ("pos", "force", "forces", "pos_relaxed")
SCALARS = ("y", "energy", "y_relaxed", "energy_relaxed", "y_init")


def _fields(record: Any) -> dict[str, Any]:
    """Attributes of a PyG ``Data`` (also one pickled by PyG 1.x, whose attributes sit in
    ``__dict__`` instead of ``_store``), or of a plain dict."""
    if isinstance(record, dict):
        return record
    store = record.__dict__.get("_store")
    if store is not None:
        return dict(store)
    return {k: v for k, v in record.__dict__.items() if v is not None}


def _tensor(value: Any, name: str) -> torch.Tensor:
    try:
        return torch.as_tensor(value)
    except Exception as err:
        raise ValueError(f"'{name}' is a {type(value).__name__}, not a number/tensor") from err


def _check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and not torch.isfinite(t).all():
        if t.dim() == 0:
            raise ValueError(f"'{name}' is not finite ({t.item()})")
        row = int((~torch.isfinite(t.reshape(t.shape[0], -1))).any(dim=1).nonzero()[0])
        raise ValueError(f"'{name}' is not finite (first in row {row}: {t[row].tolist()})")


def _check_float(t: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    if not t.is_floating_point():
        raise ValueError(f"'{name}' has dtype {t.dtype}; a floating-point dtype is needed")
    if tuple(t.shape) != shape:
        raise ValueError(f"'{name}' has shape {tuple(t.shape)}, expected {list(shape)}")
    _check_finite(t, name)


def _check_integral(t: torch.Tensor, name: str, num_atoms: int) -> None:
    if tuple(t.shape) != (num_atoms,):
        raise ValueError(f"'{name}' has shape {tuple(t.shape)}, expected [{num_atoms}]")
    if t.dtype == torch.bool:
        return
    if t.is_floating_point() and not (torch.isfinite(t).all() and (t == t.round()).all()):
        raise ValueError(f"'{name}' holds non-integer values")


def check_record(record: Any, task: str, max_num_elements: int = 90) -> int:
    """Check one record for ``task``; returns its number of atoms.

    Raises ValueError naming the field (the caller adds file and record).
    """
    fields = _fields(record)
    for what, names in COMMON + TASKS[task]:
        if not any(fields.get(n) is not None for n in names):
            raise ValueError(f"no {what} field ({' or '.join(repr(n) for n in names)})")

    pos = _tensor(fields["pos"], "pos")
    num_atoms = pos.shape[0] if pos.dim() == 2 else -1
    if num_atoms == 0:
        raise ValueError("the structure has no atoms ('pos' has shape (0, 3)): remove it")
    if num_atoms < 1:
        raise ValueError(f"'pos' has shape {tuple(pos.shape)}, expected [N >= 1, 3]")
    for name in PER_ATOM_VECTORS:
        if fields.get(name) is not None:
            _check_float(_tensor(fields[name], name), name, (num_atoms, 3))
    for name in SCALARS:
        if fields.get(name) is not None:
            value = _tensor(fields[name], name)
            if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
                shape = list(value.shape)
                raise ValueError(f"'{name}' must be one number, got {value.dtype} {shape}")
            _check_finite(value, name)

    natoms = _tensor(fields["natoms"], "natoms")
    if natoms.numel() != 1 or int(natoms) != num_atoms:
        raise ValueError(f"'natoms' is {natoms.tolist()} but 'pos' has {num_atoms} atoms")

    numbers = _tensor(fields["atomic_numbers"], "atomic_numbers")
    _check_integral(numbers, "atomic_numbers", num_atoms)
    bad = (numbers < 1) | (numbers >= max_num_elements)
    if bad.any():
        atom = int(bad.nonzero()[0])
        raise ValueError(
            f"atom {atom} has atomic number {numbers[atom].item():g}, outside "
            f"1..{max_num_elements - 1} (max_num_elements={max_num_elements})"
        )

    cell = _tensor(fields["cell"], "cell")
    _check_float(cell, "cell", (1, 3, 3))
    pbc = fields.get("pbc")
    if pbc is not None and bool(_tensor(pbc, "pbc").any()):
        lattice = cell[0].double()  # [3, 3], rows are lattice vectors
        volume = torch.linalg.det(lattice).abs()
        scale = lattice.norm(dim=1).prod()
        if not volume > 1e-6 * scale:
            raise ValueError(f"'cell' is degenerate (volume {float(volume):.3g} A^3) with pbc")

    for name in ("tags", "fixed"):
        if fields.get(name) is not None:
            _check_integral(_tensor(fields[name], name), name, num_atoms)
    if fields.get("fixed") is not None:
        fixed = _tensor(fields["fixed"], "fixed")
        if not ((fixed == 0) | (fixed == 1)).all():
            raise ValueError("'fixed' must hold 0/1 per atom")
    return num_atoms


def check_lmdb(
    path: str | os.PathLike, task: str = "s2ef", max_num_elements: int = 90
) -> dict[str, Any]:
    """Read and check every record of an LMDB file or folder; returns a summary
    ``{"path", "task", "files": {file: records}, "records", "atoms", "elements"}``.

    Raises ValueError naming the first bad file and record.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")
    files: dict[str, int] = {}
    atoms, elements = 0, set()
    for file, index, record in iter_records(path):
        try:
            atoms += check_record(record, task, max_num_elements)
        except ValueError as err:
            raise ValueError(f"{file}: record {index}: {err}") from err
        files[str(file)] = files.get(str(file), 0) + 1
        elements.update(int(z) for z in torch.as_tensor(_fields(record)["atomic_numbers"]))
    if not files:
        raise ValueError(f"{path}: no records")
    return {
        "path": str(Path(path)),
        "task": task,
        "files": files,
        "records": sum(files.values()),
        "atoms": atoms,
        "elements": sorted(elements),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m escn_plugin.check_data", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("path", help="an LMDB file or a folder of *.lmdb files")
    parser.add_argument("--task", choices=sorted(TASKS), default="s2ef")
    parser.add_argument(
        "--max-num-elements", type=int, default=90, help="the model's max_num_elements"
    )
    args = parser.parse_args(argv)
    try:
        summary = check_lmdb(args.path, args.task, args.max_num_elements)
    except ValueError as err:
        print(f"check_data: {err}", file=sys.stderr)
        return 1
    print(
        f"{summary['path']}: {summary['records']} {args.task} records in "
        f"{len(summary['files'])} file(s), {summary['atoms']} atoms, elements "
        f"{summary['elements']}: OK"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
