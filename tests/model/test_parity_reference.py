"""Our eSCN against the reference eSCN shipped in fairchem-core (the oracle), float64.

Both models get the same weights (through escn_plugin.convert), the same batch with a
precomputed graph, and the same edge frames: the reference draws a random frame roll on
every call, so the test replaces its frame by ours.
"""

from __future__ import annotations

import copy

import fairchem.core.models.base  # noqa: F401  (registers "hydra")
import fairchem.core.models.escn.escn  # noqa: F401  (registers the reference "escn")
import pytest
import torch
from fairchem.core.common.registry import registry

import escn_plugin
from escn_plugin.cli.convert import convert_state_dict
from escn_plugin.common.implementations import SO2_IMPLEMENTATIONS
from tests.helpers.reference import SMALL, _ours_frame, randomize_
from tests.helpers.structures import GENERIC_ROTATION, make_batch, rotate_atoms, slabs


def build_pair(config: dict, hydra: bool, seed: int = 0, so2_impl: str = "factored"):
    torch.manual_seed(seed)
    if hydra:
        backbone = dict(config, model="escn_backbone")
        ref = registry.get_model_class("hydra")(
            backbone=backbone,
            heads={
                "energy": {"module": "escn_energy_head"},
                "forces": {"module": "escn_force_head"},
            },
        )
        ours = registry.get_model_class("hydra")(
            backbone=dict(config, model="escn_plugin.eSCNBackbone"),
            heads={
                "energy": {"module": "escn_plugin.eSCNEnergyHead"},
                "forces": {"module": "escn_plugin.eSCNForceHead"},
            },
        )
    else:
        ref = registry.get_model_class("escn")(**config)
        ours = escn_plugin.eSCN(**config, so2_impl=so2_impl)
    randomize_(ref, seed)
    ref.double()
    ours.double()
    missing = ours.load_state_dict(convert_state_dict(ref.state_dict()), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    return ref.eval(), ours.eval()


def outputs(model, batch, hydra):
    out = model(batch)
    if hydra:
        return out["energy"]["energy"], out["forces"]["forces"]
    return out["energy"], out["forces"]


CASES = [
    ([2], [1], None),
    ([4], [2], None),
    ([6], [3], None),
    ([4, 3], [2, 1], None),
    ([3, 2], [2, 2], None),
    ([4], [2], 10),
]


@pytest.mark.parametrize("lmax_list,mmax_list,resolution", CASES)
def test_plain_model_matches_reference(
    float64_default, monkeypatch, lmax_list, mmax_list, resolution
):
    _check_plain_model(monkeypatch, lmax_list, mmax_list, resolution, so2_impl="factored")


@pytest.mark.parametrize("so2_impl", SO2_IMPLEMENTATIONS.names())
@pytest.mark.parametrize("lmax_list,mmax_list", [([4], [2]), ([4, 3], [2, 1])])
def test_every_so2_impl_matches_reference(
    float64_default, monkeypatch, lmax_list, mmax_list, so2_impl
):
    _check_plain_model(monkeypatch, lmax_list, mmax_list, None, so2_impl)


def _check_plain_model(monkeypatch, lmax_list, mmax_list, resolution, so2_impl):
    config = dict(SMALL, lmax_list=lmax_list, mmax_list=mmax_list, resolution=resolution)
    ref, ours = build_pair(config, hydra=False, so2_impl=so2_impl)
    assert type(ours.layers[-1].message.so2_source) is SO2_IMPLEMENTATIONS.get(so2_impl)
    monkeypatch.setattr(type(ref), "_init_edge_rot_mat", _ours_frame)
    batch = make_batch([rotate_atoms(a, GENERIC_ROTATION) for a in slabs()])
    e_ref, f_ref = outputs(ref, copy.deepcopy(batch), False)
    e_ours, f_ours = outputs(ours, batch, False)
    assert e_ref.abs().min() > 1e-6 and f_ref.abs().max() > 1e-4  # a non-trivial comparison
    torch.testing.assert_close(e_ours, e_ref, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(f_ours, f_ref, rtol=1e-6, atol=1e-10 * f_ref.abs().max().item())


@pytest.mark.parametrize("lmax_list,mmax_list", [([4], [2]), ([4, 3], [2, 1])])
def test_hydra_model_matches_reference(float64_default, monkeypatch, lmax_list, mmax_list):
    config = dict(SMALL, lmax_list=lmax_list, mmax_list=mmax_list)
    ref, ours = build_pair(config, hydra=True, seed=1)
    monkeypatch.setattr(type(ref.backbone), "_init_edge_rot_mat", _ours_frame)
    batch = make_batch([rotate_atoms(a, GENERIC_ROTATION) for a in slabs()])
    e_ref, f_ref = outputs(ref, copy.deepcopy(batch), True)
    e_ours, f_ours = outputs(ours, batch, True)
    torch.testing.assert_close(e_ours, e_ref, rtol=1e-6, atol=1e-10)
    torch.testing.assert_close(f_ours, f_ref, rtol=1e-6, atol=1e-10 * f_ref.abs().max().item())
