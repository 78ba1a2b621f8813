"""The backbone's constructor arguments: one table (name, default, meaning) and one check.

The table :data:`ARGUMENTS` is the single source of what the model accepts: the
constructor's signature is tested against it and README's argument table is generated
from it (:func:`markdown_table`). :func:`check_arguments` checks a whole ``model:`` block
(or the constructor's ``locals()``) and raises a ValueError that names the key, the value
and what is accepted, instead of a TypeError deep inside the build. ``lmax_list`` and
``mmax_list`` accept one int as the one-element list (``lmax_list: 6`` means ``[6]``), as
``resolution`` accepts one int for both grid axes.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from escn_plugin.common.implementations import ROTATION_BACKENDS, SO2_IMPLEMENTATIONS
from escn_plugin.model.neighbors import METHODS as NEIGHBOR_SEARCHES
from escn_plugin.so3.s2_grid import check_quadrature, grid_resolution, is_int
from escn_plugin.so3.wigner import MAX_LMAX

__all__ = ["ARGUMENTS", "Argument", "check_arguments", "check_num_layers", "int_list"]


@dataclass(frozen=True)
class Argument:
    """One constructor argument: its default, what it means, and where it comes from
    (``"reference"``: fairchem's ``escn`` has it with the same meaning and default)."""

    name: str
    default: Any
    meaning: str
    origin: str = "plugin"


_R = "reference"
ARGUMENTS: tuple[Argument, ...] = (
    # fairchem's reference eSCN, same names, meanings and defaults
    Argument("use_pbc", True, "periodic boundary conditions (per axis from the record's `pbc`)", _R),
    Argument("use_pbc_single", False, "build the graph one system at a time", _R),
    Argument("regress_forces", True, "predict forces", _R),
    Argument("otf_graph", False, "build the radius graph on the fly (needed for OC20 LMDBs at 12 Å)", _R),
    Argument("max_neighbors", 40, "neighbours kept per atom, nearest first", _R),
    Argument("cutoff", 8.0, "radius of the graph (Å)", _R),
    Argument("max_num_elements", 90, "atomic numbers 1 .. max_num_elements - 1", _R),
    Argument("num_layers", 8, "interaction layers", _R),
    Argument("lmax_list", None, "maximum degree L per resolution (`None`: `[6]`)", _R),
    Argument("mmax_list", None, "maximum order M kept in the edge frame (`None`: `[2]`)", _R),
    Argument("sphere_channels", 128, "C, channels per coefficient", _R),
    Argument("hidden_channels", 256, "H, width of the SO(2) blocks' bottleneck", _R),
    Argument("edge_channels", 128, "width of the edge features", _R),
    Argument("num_sphere_samples", 128, "Fibonacci points the output heads read", _R),
    Argument("distance_function", "gaussian", "`gaussian`, `sigmoid`, `linearsigmoid` or `silu`", _R),
    Argument("basis_width_scalar", 1.0, "width of the distance basis functions", _R),
    Argument("distance_resolution", 0.02, "spacing of the distance basis (Å)", _R),
    Argument("show_timing_info", False, "accepted and ignored", _R),
    Argument("resolution", None, "S2 grids: one int as the reference, or `[res_beta, res_alpha]`", _R),
    Argument("activation_checkpoint", False, "recompute each layer in the backward (memory for time)", _R),
    # this plugin
    Argument("node_resolution", None, "the node-update grid alone (`None`: as `resolution`): the grid that limits a trained model's equivariance"),
    Argument("rotation_backend", "polynomial", "Wigner-D rows from sampled harmonics, no angles; `euler`: e3nn's Euler-angle path (comparison only)"),
    Argument("so2_impl", "factored", "the SO(2) block; `escn` and `explicit` are oracles for tests and parity (slow)"),
    Argument("random_roll", False, "random roll of the edge frames in training, as the reference always does"),
    Argument("random_grid_rotation", False, "in training, turn the node-update grids and readout points at random each step"),
    Argument("recompute_node_grid", True, "recompute the node-update grid activations in the backward (less memory; `False` is ~30 % faster for small models)"),
    Argument("validate_inputs", True, "named errors for bad atomic numbers, positions, cells, overlaps"),
    Argument("readout_grid", None, "`[res_beta, res_alpha]`: the heads read an S2 grid with quadrature weights instead of Fibonacci points"),
    Argument("grid_quadrature", "equiangular", "polar rule of the node grid and `readout_grid`; `gauss_legendre`: the same exactness with half the points"),
    Argument("compile_layers", False, "`torch.compile` the interaction layers (direct forces only)"),
    Argument("direct_forces", True, "`False`: forces = -dE/dpos, no force head"),
    Argument("regress_stress", False, "stress [B, 3, 3] = (1/V) dE/dε (eV/Å³, ASE's sign); needs `direct_forces: False` and periodic systems"),
    Argument("envelope_exponent", None, "p: scale each message by a polynomial envelope that vanishes smoothly at the cutoff"),
    Argument("enforce_max_neighbors_strictly", True, "fairchem's: `False` keeps every neighbour tied at the cap"),
    Argument("neighbor_search", "vesin", "on-the-fly neighbour list: `vesin` cell lists (linear cost); `fairchem`: its `radius_graph_pbc` (quadratic, for comparison)"),
    Argument("eqv2_heads", None, "settings of fairchem's EquiformerV2 heads on this backbone, e.g. `{num_heads: 4}`"),
    Argument("inference_block_edges", None, "without gradients and with direct forces (validate, predict, relaxations): layers and heads run in blocks of target atoms holding at most this many edges, so memory per atom stays flat; `None`: sized from a memory budget; `0`: off"),
)  # fmt: skip
#: the plain model's argument beside the backbone's
MODEL_ARGUMENTS: tuple[Argument, ...] = (
    Argument("energy_scale", 0.001, "multiplies the summed per-atom energies (the reference's 0.001)"),
)  # fmt: skip

BOOL_KEYS = (
    "use_pbc",
    "use_pbc_single",
    "regress_forces",
    "otf_graph",
    "show_timing_info",
    "random_roll",
    "validate_inputs",
    "compile_layers",
    "random_grid_rotation",
    "recompute_node_grid",
    "direct_forces",
    "regress_stress",
    "enforce_max_neighbors_strictly",
)
POSITIVE_INT_KEYS = (
    "sphere_channels",
    "hidden_channels",
    "edge_channels",
    "num_sphere_samples",
    "max_neighbors",
    "max_num_elements",
)
POSITIVE_FLOAT_KEYS = ("cutoff", "distance_resolution", "basis_width_scalar")
DEFAULT_LISTS = {"lmax_list": [6], "mmax_list": [2]}
DISTANCE_FUNCTIONS = ("gaussian", "sigmoid", "linearsigmoid", "silu")


def markdown_table(arguments: tuple[Argument, ...] = ARGUMENTS) -> str:
    """README's argument table, one row per argument."""
    rows = ["| argument | default | meaning |", "|---|---|---|"]
    for a in arguments:
        default = "`None`" if a.default is None else f"`{a.default}`"
        rows.append(f"| `{a.name}` | {default} | {a.meaning} |")
    return "\n".join(rows)


def int_list(name: str, value: Any, default: list[int]) -> list[int]:
    """``None`` -> default, one int -> ``[int]``, a sequence of ints -> list; else a
    ValueError naming ``name``."""
    if value is None:
        return list(default)
    if is_int(value):
        value = [value]
    if isinstance(value, (list, tuple)) and value and all(is_int(v) and v >= 0 for v in value):
        return [int(v) for v in value]
    raise ValueError(
        f"{name} must be a non-negative int or a non-empty list of them (one per "
        f"resolution, e.g. {name}: {default}), got {value!r}"
    )


def _check_types(config: dict[str, Any]) -> None:
    for key in BOOL_KEYS:
        value = config.get(key)
        if key in config and not isinstance(value, (bool, np.bool_)) and value not in (0, 1):
            raise ValueError(f"{key} must be true or false, got {value!r}")
    checkpointing = config.get("activation_checkpoint")
    if checkpointing is not None and not isinstance(checkpointing, bool):
        raise ValueError(f"activation_checkpoint must be true or false, got {checkpointing!r}")
    for key in (*POSITIVE_INT_KEYS, "num_layers"):
        value = config.get(key)
        if key in config and not (is_int(value) and value >= 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    block = config.get("inference_block_edges")
    if block is not None and not (is_int(block) and block >= 0):
        raise ValueError(
            f"inference_block_edges must be None (automatic), 0 (off) or a positive number "
            f"of edges, got {block!r}"
        )
    for key in POSITIVE_FLOAT_KEYS:
        value = config.get(key)
        if key in config and not (
            isinstance(value, numbers.Real)
            and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value)
            and value > 0
        ):
            raise ValueError(f"{key} must be a number > 0, got {value!r}")


def _check_lists(config: dict[str, Any]) -> tuple[list[int], list[int]]:
    lmax_list = int_list("lmax_list", config.get("lmax_list"), DEFAULT_LISTS["lmax_list"])
    mmax_list = int_list("mmax_list", config.get("mmax_list"), DEFAULT_LISTS["mmax_list"])
    if len(lmax_list) != len(mmax_list):
        raise ValueError(
            f"lmax_list {lmax_list} and mmax_list {mmax_list} must have the same length "
            "(one entry per resolution)"
        )
    if max(lmax_list) > MAX_LMAX:
        raise ValueError(f"lmax_list {lmax_list}: lmax above {MAX_LMAX} is not supported")
    for lmax, mmax in zip(lmax_list, mmax_list):
        if mmax > lmax:
            raise ValueError(f"mmax ({mmax}) must not exceed lmax ({lmax}) in mmax_list")
    return lmax_list, mmax_list


def _check_choices(config: dict[str, Any], lmax: int) -> None:
    for key, degree in (("resolution", lmax), ("node_resolution", lmax), ("readout_grid", 0)):
        grid_resolution(degree, degree, config.get(key), name=key)
    check_quadrature(config.get("grid_quadrature", "equiangular"))
    distance_function = config.get("distance_function", "gaussian")
    if distance_function not in DISTANCE_FUNCTIONS:
        raise ValueError(
            f"unknown distance_function {distance_function!r}; choose one of "
            f"{', '.join(DISTANCE_FUNCTIONS)}"
        )
    search = config.get("neighbor_search", "vesin")
    if search not in NEIGHBOR_SEARCHES:
        raise ValueError(
            f"unknown neighbor_search {search!r}; choose one of {', '.join(NEIGHBOR_SEARCHES)}"
        )
    ROTATION_BACKENDS.get(config.get("rotation_backend", "polynomial"))  # names the choices
    SO2_IMPLEMENTATIONS.get(config.get("so2_impl", "factored"))
    exponent = config.get("envelope_exponent")
    if exponent is not None and not (is_int(exponent) and exponent >= 1):
        raise ValueError(f"envelope_exponent must be a positive integer or None, got {exponent!r}")


def _check_combinations(config: dict[str, Any]) -> None:
    direct = config.get("direct_forces", True)
    if config.get("regress_stress", False) and direct:
        raise ValueError(
            "regress_stress: True needs direct_forces: False (stress is the strain "
            "derivative of the energy, and forces are then -dE/dpos too)"
        )
    if config.get("regress_stress", False) and not config.get("use_pbc", True):
        raise ValueError("regress_stress needs periodic systems: set use_pbc: True")
    if config.get("compile_layers", False) and not direct:
        raise ValueError(
            "compile_layers: True cannot train with direct_forces: False (torch.compile "
            "has no double backward); set compile_layers: False"
        )


def check_arguments(config: dict[str, Any]) -> tuple[list[int], list[int]]:
    """Check the backbone's arguments (``config``: name -> value; names not in
    :data:`ARGUMENTS` are ignored); returns ``(lmax_list, mmax_list)`` as lists."""
    _check_types(config)
    lmax_list, mmax_list = _check_lists(config)
    _check_choices(config, max(lmax_list))
    _check_combinations(config)
    return lmax_list, mmax_list


def check_num_layers(num_layers: Any, built: int) -> int:
    """``num_layers`` set on a built model (fairchem's tests set ``model.num_layers = 1``
    to run the first layer only): an int in ``0..built``."""
    if not (is_int(num_layers) and 0 <= num_layers <= built):
        raise ValueError(
            f"num_layers is {num_layers!r} but the model was built with {built} layers; "
            f"set it between 0 and {built}"
        )
    return int(num_layers)


#: arguments a checkpoint may be loaded under with another value without changing what the
#: model computes in evaluation (speed, memory, checks, training-only randomness, oracles)
OUTPUT_NEUTRAL = frozenset(
    {
        "activation_checkpoint",
        "compile_layers",
        "eqv2_heads",
        "inference_block_edges",
        "neighbor_search",
        "random_grid_rotation",
        "random_roll",
        "recompute_node_grid",
        "rotation_backend",
        "show_timing_info",
        "so2_impl",
        "use_pbc_single",
        "validate_inputs",
    }
)


def resolved_arguments(config: dict[str, Any]) -> dict[str, Any]:
    """Every argument of :data:`ARGUMENTS` with its value in ``config`` (default where
    absent; ``lmax_list``/``mmax_list`` as lists): what a checkpoint stores."""
    out = {a.name: config.get(a.name, a.default) for a in ARGUMENTS}
    out["lmax_list"] = int_list("lmax_list", out["lmax_list"], DEFAULT_LISTS["lmax_list"])
    out["mmax_list"] = int_list("mmax_list", out["mmax_list"], DEFAULT_LISTS["mmax_list"])
    for key in ("resolution", "node_resolution", "readout_grid"):
        if isinstance(out[key], tuple):
            out[key] = list(out[key])
    return out


def argument_differences(
    stored: dict[str, Any], current: dict[str, Any]
) -> tuple[list[str], list[str]]:
    """``(changes outputs, does not)``: one line per argument whose value differs between
    a checkpoint (``stored``) and the model it is loaded into (``current``)."""
    errors, notes = [], []
    for name in sorted(set(stored) | set(current)):
        old, new = stored.get(name), current.get(name)
        if old == new:
            continue
        line = f"{name}: checkpoint {old!r}, config {new!r}"
        (notes if name in OUTPUT_NEUTRAL else errors).append(line)
    return errors, notes
