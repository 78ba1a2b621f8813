"""fairchem's EquiformerV2 heads on our backbone: the settings and modules they read.

fairchem 1.10's ``equiformerV2_scalar_head`` (deprecated alias ``equiformer_v2_energy_head``)
and ``equiformerV2_vector_head`` (alias ``equiformer_v2_force_head``) are EquiformerV2 blocks
built from attributes of the backbone they are attached to:

* the scalar head: a feed-forward network with S2 activation on ``emb["node_embedding"]``
  (``sphere_channels``, ``ffn_hidden_channels``, ``lmax_list``, ``mmax_list``, ``SO3_grid``,
  ``ffn_activation``, ``use_gate_act``, ``use_grid_mlp``, ``use_sep_s2_act``,
  ``weight_init``; the energy is divided by ``avg_num_nodes`` with ``reduce: sum``);
* the vector head: one SO(2) equivariant graph attention block (``attn_*`` sizes,
  ``num_heads``, ``SO3_rotation`` with the edges' Wigner-D matrices, ``mappingReduced``,
  ``max_num_elements``, ``edge_channels_list``, ...), reading from ``emb["graph"]``
  ``atomic_numbers_full``, ``edge_index``, ``node_offset`` and ``edge_distance``. As in
  EquiformerV2's backbone, ``edge_distance`` there is the *expanded* distance
  ``[E, edge_channels_list[0]]``, not the raw one.

:class:`EqV2HeadSupport` (a mixin of :class:`~escn_plugin.model.eSCNBackbone`) provides them:

* settings: EquiformerV2Backbone's defaults (read from its signature), overridden by the
  optional backbone key ``eqv2_heads: {num_heads: 4, ffn_hidden_channels: 64, ...}``
  (:data:`EQV2_HEAD_SETTINGS`; unknown keys are an error);
* ``SO3_grid``, ``mappingReduced``, ``SO3_rotation``: fairchem's own modules, built the first
  time a head reads them (a model without eqV2 heads builds nothing). They are held by the
  heads, not registered in the backbone: the backbone's ``state_dict`` is the same with or
  without eqV2 heads (old checkpoints load; a head added by fine-tuning finds the backbone
  it expects), and a hydra model built from the same config registers the same buffers
  under its heads;
* ``edge_channels_list = [num_basis, edge_channels, edge_channels]``: the head's radial
  functions read the backbone's own distance expansion ``[E, num_basis]``.

Once a vector head has read ``SO3_rotation``, each forward pass sets its Wigner-D matrices
with fairchem's ``SO3_Rotation.set_wigner`` from rotations in EquiformerV2's convention
(``R @ unit(edge_vec) = +y``): our deterministic edge frames
(:func:`~escn_plugin.so3.edge_frame.edge_frame`, with the backbone's random roll if
``random_roll`` is on) instead of fairchem's random ``init_edge_rot_mat`` roll; and
``emb["graph"]`` becomes a copy whose ``edge_distance`` is the expansion. Our own layers
never see any of this (plain tensors, our rotations). The heads need one resolution
(``lmax_list`` of length 1), as EquiformerV2 itself.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import numbers
from typing import Any

import torch
from fairchem.core.models.base import GraphData
from fairchem.core.models.equiformer_v2.equiformer_v2 import _AVG_NUM_NODES, EquiformerV2Backbone
from fairchem.core.models.equiformer_v2.module_list import ModuleListInfo
from fairchem.core.models.equiformer_v2.so3 import CoefficientMappingModule, SO3_Grid, SO3_Rotation
from torch import nn

from escn_plugin.common.default_dtype import cached_constant, default_dtype, float64_default
from escn_plugin.so3.edge_frame import edge_frame

__all__ = ["EQV2_HEAD_SETTINGS", "EqV2HeadSupport", "eqv2_head_settings"]

# setting -> accepted values (the defaults are EquiformerV2Backbone's)
POSITIVE_INTS = (
    "attn_hidden_channels",
    "num_heads",
    "attn_alpha_channels",
    "attn_value_channels",
    "ffn_hidden_channels",
    "edge_channels",
)
BOOLS = (
    "use_atom_edge_embedding",
    "use_m_share_rad",
    "use_attn_renorm",
    "use_gate_act",
    "use_grid_mlp",
    "use_sep_s2_act",
    "use_s2_act_attn",
)
STRINGS = {"attn_activation": None, "ffn_activation": None, "weight_init": ("normal", "uniform")}
EQV2_HEAD_SETTINGS = (
    *POSITIVE_INTS,
    *BOOLS,
    *STRINGS,
    "grid_resolution",
    "avg_num_nodes",
)


def _eqv2_defaults() -> dict[str, Any]:
    parameters = inspect.signature(EquiformerV2Backbone.__init__).parameters
    defaults = {name: parameters[name].default for name in EQV2_HEAD_SETTINGS}
    defaults["avg_num_nodes"] = defaults["avg_num_nodes"] or _AVG_NUM_NODES
    return defaults


def eqv2_head_settings(config: dict[str, Any] | None) -> dict[str, Any]:
    """EquiformerV2's head settings: its defaults overridden by ``config`` (the backbone's
    ``eqv2_heads`` key); a ValueError names an unknown key or a bad value."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(EQV2_HEAD_SETTINGS))
    if unknown:
        raise ValueError(
            f"eqv2_heads: unknown key(s) {unknown}; the settings of fairchem's EquiformerV2 "
            f"heads are {list(EQV2_HEAD_SETTINGS)}"
        )
    settings = _eqv2_defaults()
    settings.update(config)
    for key in POSITIVE_INTS:
        value = settings[key]
        if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0):
            raise ValueError(f"eqv2_heads.{key} must be a positive integer, got {value!r}")
    for key in BOOLS:
        if not isinstance(settings[key], bool):
            raise ValueError(f"eqv2_heads.{key} must be true or false, got {settings[key]!r}")
    for key, choices in STRINGS.items():
        value = settings[key]
        if not isinstance(value, str) or (choices is not None and value not in choices):
            accepted = f"one of {list(choices)}" if choices else "a string"
            raise ValueError(f"eqv2_heads.{key} must be {accepted}, got {value!r}")
    if settings["use_s2_act_attn"]:
        raise ValueError(
            "eqv2_heads.use_s2_act_attn: True is not supported by fairchem's attention block "
            "(it asserts False); remove the key"
        )
    resolution = settings["grid_resolution"]
    if resolution is not None and not (
        isinstance(resolution, numbers.Integral) and not isinstance(resolution, bool)
    ):
        raise ValueError(
            f"eqv2_heads.grid_resolution must be an integer (both grid axes) or null "
            f"(EquiformerV2's per-degree default), got {resolution!r}"
        )
    avg = settings["avg_num_nodes"]
    if not (isinstance(avg, numbers.Real) and not isinstance(avg, bool) and avg > 0):
        raise ValueError(f"eqv2_heads.avg_num_nodes must be a number > 0, got {avg!r}")
    return settings


@cached_constant
def _so3_grid(lmax: int, resolution: int | None) -> ModuleListInfo:
    """EquiformerV2's ``SO3_grid``: ``[l][m]`` -> fairchem's ``SO3_Grid`` of degree l and
    order m (l, m <= lmax), in float64. Built once per process (about 0.5 s at lmax 3);
    each model gets a copy."""
    grid = ModuleListInfo(f"({lmax}, {lmax})")
    for degree in range(lmax + 1):  # cached_constant: built on the CPU in float64
        grid.append(
            nn.ModuleList(
                SO3_Grid(degree, order, resolution=resolution, normalization="component")
                for order in range(lmax + 1)
            )
        )
    return grid


class EqV2HeadSupport:
    """Mixin for a backbone with ``lmax_list``, ``mmax_list``, ``sphere_channels``,
    ``max_num_elements``, ``activation_checkpoint`` and ``distance_expansion``: the
    attributes and modules fairchem's EquiformerV2 heads read (see the module docstring).
    Set :attr:`eqv2_heads` in ``__init__`` and call :meth:`eqv2_graph` in forward."""

    @property
    def eqv2_heads(self) -> dict[str, Any]:
        """The settings in use. Assigning a dict re-checks it and applies it to the heads
        built afterwards, so fairchem's ``finetune_config: {override: {eqv2_heads: {...}}}``
        sizes eqV2 heads added to a checkpoint (heads built before keep their modules)."""
        return dict(self.eqv2_head_config)

    @eqv2_heads.setter
    def eqv2_heads(self, config: dict[str, Any] | None) -> None:
        settings = eqv2_head_settings(config)
        previous = self.__dict__.get("eqv2_head_config", {})
        self.eqv2_head_config = settings
        for key in EQV2_HEAD_SETTINGS:
            if key not in ("edge_channels", "use_atom_edge_embedding", "grid_resolution"):
                setattr(self, key, settings[key])
        self.block_use_atom_edge_embedding = settings["use_atom_edge_embedding"]
        num_basis = int(self.distance_expansion.num_output)
        self.edge_channels_list = [num_basis] + [settings["edge_channels"]] * 2
        # built on first use, held by the heads (a plain dict: not registered here)
        modules: dict[str, nn.Module] = self.__dict__.setdefault("eqv2_modules", {})
        if previous.get("grid_resolution") != settings["grid_resolution"]:
            modules.pop("SO3_grid", None)  # the rotations stay shared (set each forward)

    def _eqv2_module(self, name: str) -> nn.Module:
        if name not in self.eqv2_modules:
            if len(self.lmax_list) != 1:
                raise ValueError(
                    f"fairchem's EquiformerV2 heads need one resolution, but lmax_list is "
                    f"{self.lmax_list}; use e.g. lmax_list: [{max(self.lmax_list)}]"
                )
            reference = next(self.parameters())  # the backbone's device and dtype
            with float64_default():  # exact constants, then cast to the model's dtype
                module = self._build_eqv2_module(name)
            self.eqv2_modules[name] = module.to(device=reference.device, dtype=reference.dtype)
        return self.eqv2_modules[name]

    def _build_eqv2_module(self, name: str) -> nn.Module:
        lmax = self.lmax_list[0]
        if name == "SO3_grid":
            return copy.deepcopy(_so3_grid(lmax, self.eqv2_head_config["grid_resolution"]))
        if name == "mappingReduced":
            return CoefficientMappingModule(list(self.lmax_list), list(self.mmax_list))
        if name == "SO3_rotation":
            return nn.ModuleList([SO3_Rotation(lmax)])
        raise KeyError(name)

    @property
    def SO3_grid(self) -> ModuleListInfo:  # noqa: N802  (the name fairchem's heads read)
        return self._eqv2_module("SO3_grid")

    @property
    def mappingReduced(self) -> CoefficientMappingModule:  # noqa: N802
        return self._eqv2_module("mappingReduced")

    @property
    def SO3_rotation(self) -> nn.ModuleList:  # noqa: N802
        """Also switches on :meth:`eqv2_graph` (only a vector head reads this)."""
        return self._eqv2_module("SO3_rotation")

    def eqv2_graph(
        self, graph: GraphData, basis: torch.Tensor, roll: torch.Tensor | None
    ) -> GraphData:
        """``graph`` unchanged unless an eqV2 vector head is attached; then set its Wigner-D
        matrices for ``graph.edge_distance_vec [E, 3]`` (frames rolled by ``roll [E]``) and
        return a copy whose ``edge_distance`` is ``basis [E, num_basis]`` (eqV2's meaning)."""
        rotations = self.eqv2_modules.get("SO3_rotation")
        if rotations is None:
            return graph
        vec = graph.edge_distance_vec.detach()
        frames = edge_frame(vec, roll)  # [E, 3, 3], R @ unit(vec) = +y
        with default_dtype(frames.dtype):  # fairchem's set_wigner allocates in it
            for rotation in rotations:
                rotation.set_wigner(frames)  # [E, K, K]
        return dataclasses.replace(graph, edge_distance=basis)
