"""Checks on the model's constructor arguments (the ``model:`` block of a fairchem config).

A wrong type or value raises a ValueError that names the key, the value and what is
accepted, instead of a TypeError deep inside the build. ``lmax_list`` and ``mmax_list``
accept one int as the one-element list (``lmax_list: 6`` means ``[6]``), as ``resolution``
already accepts one int for both grid axes. Keys this module does not know are left to
their own code (registries, grid and layout checks).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np

from escn_plugin.so3.s2_grid import check_quadrature, grid_resolution, is_int
from escn_plugin.so3.wigner import MAX_LMAX

__all__ = ["check_backbone_config", "int_list"]

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
)
POSITIVE_INT_KEYS = (
    "num_layers",
    "sphere_channels",
    "hidden_channels",
    "edge_channels",
    "num_sphere_samples",
    "max_neighbors",
    "max_num_elements",
)
POSITIVE_FLOAT_KEYS = ("cutoff", "distance_resolution", "basis_width_scalar")
DEFAULT_LISTS = {"lmax_list": [6], "mmax_list": [2]}


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


def check_backbone_config(
    config: dict[str, Any], distance_functions: Iterable[str]
) -> tuple[list[int], list[int]]:
    """Check the backbone's arguments (``config``: name -> value; unknown names are
    ignored); returns ``(lmax_list, mmax_list)`` as lists."""
    for key in BOOL_KEYS:
        value = config.get(key)
        if key in config and not isinstance(value, bool) and value not in (0, 1):
            raise ValueError(f"{key} must be true or false, got {value!r}")
    checkpointing = config.get("activation_checkpoint")
    if checkpointing is not None and not isinstance(checkpointing, bool):
        raise ValueError(f"activation_checkpoint must be true or false, got {checkpointing!r}")
    for key in POSITIVE_INT_KEYS:
        value = config.get(key)
        if key in config and not (is_int(value) and value >= 1):
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    for key in POSITIVE_FLOAT_KEYS:
        value = config.get(key)
        if key in config and not (
            isinstance(value, numbers.Real)
            and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value)
            and value > 0
        ):
            raise ValueError(f"{key} must be a number > 0, got {value!r}")
    lmax_list = int_list("lmax_list", config.get("lmax_list"), DEFAULT_LISTS["lmax_list"])
    mmax_list = int_list("mmax_list", config.get("mmax_list"), DEFAULT_LISTS["mmax_list"])
    if max(lmax_list) > MAX_LMAX:
        raise ValueError(f"lmax_list {lmax_list}: lmax above {MAX_LMAX} is not supported")
    lmax = max(lmax_list)
    for key, degree in (("resolution", lmax), ("node_resolution", lmax), ("readout_grid", 0)):
        grid_resolution(degree, degree, config.get(key), name=key)
    check_quadrature(config.get("grid_quadrature", "equiangular"))
    distance_function = config.get("distance_function", "gaussian")
    if distance_function not in distance_functions:
        raise ValueError(
            f"unknown distance_function {distance_function!r}; choose one of "
            f"{', '.join(distance_functions)}"
        )
    return lmax_list, mmax_list
