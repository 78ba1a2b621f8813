"""fairchem's EquiformerV2 heads on our backbone (hydra): ``equiformerV2_scalar_head`` for
the energy and ``equiformerV2_vector_head`` for the forces (and the deprecated aliases
``equiformer_v2_energy_head`` / ``equiformer_v2_force_head``).

* they build, run, train (every head parameter gets a gradient) and round-trip through a
  state_dict into a freshly built hydra model;
* energy invariant and forces equivariant under a random rotation (float64, exact periodic
  edge vectors from our on-the-fly graph): measured 1e-15 (energy) and 1e-11 (forces) with
  ``eqv2_heads.grid_resolution: 16``; 4e-5 (forces) with EquiformerV2's default head grid
  (8 x 5 points at L = 3, M = 2: its S2 activation in the edge frame is then not exactly
  roll-equivariant, as in EquiformerV2 itself);
* a model without eqV2 heads builds none of their modules and returns what it did before.
"""

from __future__ import annotations

import copy

import fairchem.core.models.base  # noqa: F401  (registers "hydra")
import fairchem.core.models.equiformer_v2.equiformer_v2  # noqa: F401  (registers the heads)
import numpy as np
import pytest
import torch
from fairchem.core.common.registry import registry
from scipy.spatial.transform import Rotation

from tests.helpers.reference import SMALL, randomize_
from tests.helpers.structures import make_batch, rotate_atoms, slabs

EQV2_HEADS = {
    "energy": {"module": "equiformerV2_scalar_head"},
    "forces": {"module": "equiformerV2_vector_head"},
}
OUR_HEADS = {
    "energy": {"module": "escn_plugin.eSCNEnergyHead"},
    "forces": {"module": "escn_plugin.eSCNForceHead"},
}
SMALL_EQV2 = {  # small sizes for the heads' blocks (EquiformerV2's defaults are 128..512)
    "num_heads": 2,
    "attn_hidden_channels": 8,
    "attn_alpha_channels": 4,
    "attn_value_channels": 4,
    "ffn_hidden_channels": 8,
    "edge_channels": 8,
}
# our side: exact PBC edge vectors (on-the-fly graph), fine node grid, all neighbours
BACKBONE = dict(
    SMALL,
    model="escn_plugin.eSCNBackbone",
    num_layers=2,
    lmax_list=[3],
    mmax_list=[2],
    otf_graph=True,
    max_neighbors=200,  # every neighbour in the cutoff: no ties to break differently
    resolution=[12, 13],
    node_resolution=[16, 17],
    eqv2_heads=SMALL_EQV2,
)


def hydra(backbone: dict, heads: dict) -> torch.nn.Module:
    return registry.get_model_class("hydra")(
        backbone=copy.deepcopy(backbone), heads=copy.deepcopy(heads), pass_through_head_outputs=True
    )


def batches(rot) -> list:
    return [
        make_batch(slabs(), edges=False),
        make_batch([rotate_atoms(a, rot) for a in slabs()], edges=False),
    ]


@pytest.mark.parametrize("grid_resolution, tolerance", [(16, 1e-9), (None, 1e-3)])
def test_eqv2_heads_equivariant(float64_default, grid_resolution, tolerance):
    """Energy(R x) = energy(x), forces(R x) = R forces(x). With a 16 x 16 head grid the
    errors are at rounding level (measured 1e-15 / 1e-11; tolerance 1e-9); with
    EquiformerV2's default grid the forces are equivariant to 4e-5 (tolerance 1e-3)."""
    backbone = dict(BACKBONE, eqv2_heads=dict(SMALL_EQV2, grid_resolution=grid_resolution))
    torch.manual_seed(0)
    model = hydra(backbone, EQV2_HEADS).eval()
    rot = Rotation.random(random_state=7).as_matrix()
    out, out_rot = (model(batch) for batch in batches(rot))
    num_atoms = sum(len(a) for a in slabs())
    assert out["energy"].shape == (2,) and out["forces"].shape == (num_atoms, 3)
    assert out["energy"].dtype == torch.float64
    assert all(torch.isfinite(v).all() for v in (*out.values(), *out_rot.values()))
    rot_t = torch.as_tensor(rot)
    forces_scale = out["forces"].abs().max().item()
    assert forces_scale > 0 and out["energy"].abs().min() > 0
    energy_error = (out_rot["energy"] - out["energy"]).abs().max() / out["energy"].abs().max()
    forces_error = (out_rot["forces"] - out["forces"] @ rot_t.T).abs().max() / forces_scale
    # the rotated input really differs: unrotated forces do not match
    control = (out_rot["forces"] - out["forces"]).abs().max() / forces_scale
    print(f"grid {grid_resolution}: energy {energy_error:.1e}, forces {forces_error:.1e}")
    assert control > 0.1
    assert energy_error < tolerance and forces_error < tolerance


def _zero_gradient_parameters(model: torch.nn.Module) -> set[str]:
    """Head parameters whose gradient of a loss on energy and forces is None or all zero."""
    batch = make_batch(slabs(), dtype=torch.float32, edges=False)
    out = model(batch)
    (out["energy"].square().sum() + out["forces"].square().sum()).backward()
    named = model.output_heads.named_parameters()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for _, p in named)
    return {
        name
        for name, p in model.output_heads.named_parameters()
        if p.grad is None or not p.grad.abs().sum() > 0
    }


def test_eqv2_heads_train_and_round_trip(tmp_path):
    """Training: the head parameters that get a gradient on EquiformerV2's own backbone get
    one on ours, and no others (the four that do not are unused by fairchem's design: the
    energy reads l = 0 of the feed-forward output, which the first SO(3) linear layer does
    not reach with separable S2 activation; the force reads l = 1, which the output bias
    does not reach; and the second SO(2) convolution's m = 1 weight). An optimizer step
    changes the outputs; a state_dict saved to disk loads (strict) into a freshly built
    hydra model, which then gives identical outputs. The backbone's own state_dict keys are
    those of a model with our heads (the eqV2 modules are held by the heads)."""
    torch.manual_seed(1)
    model = hydra(BACKBONE, EQV2_HEADS)
    randomize_(model.output_heads, seed=2)
    reference = dict(SMALL_EQV2, model="equiformer_v2_backbone", num_layers=1, max_radius=6.0)
    reference.update(sphere_channels=8, lmax_list=[3], mmax_list=[2], max_neighbors=200)
    on_equiformer = hydra(reference, EQV2_HEADS)
    randomize_(on_equiformer.output_heads, seed=2)
    unused = _zero_gradient_parameters(on_equiformer)
    assert _zero_gradient_parameters(model) == unused
    assert 0 < len(unused) <= 4, unused
    assert len(list(model.output_heads.parameters())) > 20

    batch = make_batch(slabs(), dtype=torch.float32, edges=False)
    before = model(batch)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    with torch.no_grad():
        after = model(batch)
    assert not torch.equal(after["forces"], before["forces"].detach())
    assert not torch.equal(after["energy"], before["energy"].detach())

    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(5)  # different initial weights
    fresh = hydra(BACKBONE, EQV2_HEADS)
    fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    with torch.no_grad():
        again = fresh(batch)
    for key in ("energy", "forces"):
        assert torch.equal(again[key], after[key])

    ours = hydra(BACKBONE, OUR_HEADS)
    assert ours.backbone.state_dict().keys() == model.backbone.state_dict().keys()
    assert any(".SO3_grid." in k for k in model.output_heads.state_dict())


def test_deprecated_aliases(float64_default):
    """``equiformer_v2_energy_head`` / ``_force_head`` are the same heads under old names:
    with the same weights they give the same outputs."""
    aliases = {
        "energy": {"module": "equiformer_v2_energy_head"},
        "forces": {"module": "equiformer_v2_force_head"},
    }
    model = hydra(BACKBONE, EQV2_HEADS).eval()
    old = hydra(BACKBONE, aliases).eval()
    old.load_state_dict(model.state_dict(), strict=True)
    batch = make_batch(slabs(), edges=False)
    out, out_old = model(batch), old(batch)
    for key in ("energy", "forces"):
        torch.testing.assert_close(out_old[key], out[key], rtol=0, atol=0)


def test_without_eqv2_heads_unchanged():
    """No eqV2 head: nothing of theirs is built, ``emb["graph"]`` keeps the raw distances,
    and our heads' outputs are bit-identical with eqV2 heads attached beside them or not."""
    torch.manual_seed(3)
    plain = hydra(BACKBONE, OUR_HEADS).eval()
    batch = make_batch(slabs(), dtype=torch.float32, edges=False)
    emb = plain.backbone(batch)
    assert plain.backbone.eqv2_modules == {}
    assert emb["graph"].edge_distance.dim() == 1
    both_heads = {
        **OUR_HEADS,
        "eqv2_energy": {**EQV2_HEADS["energy"], "output_name": "eqv2_energy"},
        "eqv2_forces": {**EQV2_HEADS["forces"], "output_name": "eqv2_forces"},
    }
    both = hydra(BACKBONE, both_heads).eval()
    both.backbone.load_state_dict(plain.backbone.state_dict(), strict=True)
    both.output_heads["energy"].load_state_dict(plain.output_heads["energy"].state_dict())
    both.output_heads["forces"].load_state_dict(plain.output_heads["forces"].state_dict())
    with torch.no_grad():
        out, out_both = plain(batch), both(batch)
    assert torch.equal(out_both["energy"], out["energy"])
    assert torch.equal(out_both["forces"], out["forces"])
    assert out_both["eqv2_forces"].shape == out["forces"].shape
    emb = both.backbone(batch)  # eqV2's meaning: the expanded distances
    assert emb["graph"].edge_distance.shape[1] == both.backbone.edge_channels_list[0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"eqv2_heads": {"num_head": 2}}, "unknown key"),
        ({"eqv2_heads": {"num_heads": 0}}, "num_heads must be a positive integer"),
        ({"eqv2_heads": {"weight_init": "xavier"}}, "weight_init must be one of"),
        ({"eqv2_heads": {"use_s2_act_attn": True}}, "use_s2_act_attn"),
        ({"lmax_list": [2, 3], "mmax_list": [2, 2]}, "need one resolution"),
    ],
)
def test_eqv2_head_config_errors(change, message):
    with pytest.raises(ValueError, match=message):
        hydra(dict(BACKBONE, **change), EQV2_HEADS)


@pytest.mark.slow  # ~20 s: the stock fairchem command, train then predict
def test_eqv2_heads_cli_train_predict(tmp_path):
    """``fairchem --mode train`` (a few steps) then ``--mode predict`` from its checkpoint,
    with fairchem's EquiformerV2 energy and force heads on our backbone (generated EMT
    data): the loss is logged, the checkpoint holds the heads, the predictions are finite."""
    from escn_plugin.datasets.emt_stress import generate
    from tests.helpers.fairchem_run import SMALL_MODEL, logged, only, run_fairchem, s2efs_config

    root = generate(tmp_path / "data", seed=0, num_train=8, num_val=4, num_test=4)
    model = {
        "name": "hydra",
        "backbone": {"model": "escn_plugin.eSCNBackbone", **SMALL_MODEL},
        "heads": copy.deepcopy(EQV2_HEADS),
        "pass_through_head_outputs": True,
    }
    model["backbone"]["eqv2_heads"] = dict(SMALL_EQV2)
    config = s2efs_config(root, model, max_epochs=2, stress=False)
    log = run_fairchem(config, tmp_path / "train", "train")
    forces_mae = logged(log, "forces_mae")
    assert forces_mae and all(np.isfinite(forces_mae)), log[-3000:]
    checkpoint = only(list((tmp_path / "train").glob("checkpoints/*/checkpoint.pt")))
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert any(".output_heads.forces.force_block.so2_conv_1." in k for k in state)

    run_fairchem(config, tmp_path / "predict", "predict", "--checkpoint", str(checkpoint))
    pred = np.load(only(list((tmp_path / "predict").glob("results/*/ocp_predictions.npz"))))
    assert len(pred["energy"]) == 4 and np.isfinite(pred["energy"]).all()
    assert pred["forces"].shape[-1] == 3 and np.isfinite(pred["forces"]).all()


def test_eqv2_heads_setting_override():
    """Assigning ``backbone.eqv2_heads`` (what fairchem's ``finetune_config.override``
    does) sizes the heads built afterwards and is checked like the constructor key."""
    model = hydra(BACKBONE, OUR_HEADS)
    model.backbone.eqv2_heads = dict(SMALL_EQV2, num_heads=4, grid_resolution=10)
    head = registry.get_model_class("equiformerV2_vector_head")(model.backbone)
    assert head.force_block.num_heads == 4
    assert model.backbone.eqv2_heads["num_heads"] == 4
    assert head.force_block.SO3_grid[3][2].lat_resolution == 10
    with pytest.raises(ValueError, match="unknown key"):
        model.backbone.eqv2_heads = {"heads": 4}


@pytest.mark.slow  # ~40 s: two fairchem trainings
def test_eqv2_heads_finetune_onto_checkpoint(tmp_path):
    """fairchem's fine-tuning: eqV2 energy and force heads (sized through
    ``finetune_config.override``) replace our heads on a trained energy/forces
    checkpoint; with ``freeze_backbone`` its weights come out unchanged."""
    from escn_plugin.datasets.emt_stress import generate
    from tests.helpers.fairchem_run import (
        SMALL_MODEL,
        hydra_model,
        logged,
        only,
        run_fairchem,
        s2efs_config,
    )

    root = generate(tmp_path / "data", seed=0, num_train=8, num_val=4, num_test=4)
    run_fairchem(
        s2efs_config(root, hydra_model(SMALL_MODEL), max_epochs=1, stress=False),
        tmp_path / "ef",
        "train",
    )
    start = only(list((tmp_path / "ef").glob("checkpoints/*/checkpoint.pt")))
    model = {
        "name": "hydra",
        "finetune_config": {
            "starting_checkpoint": str(start),
            "override": {"eqv2_heads": dict(SMALL_EQV2, num_heads=4)},
        },
        "heads": copy.deepcopy(EQV2_HEADS),
        "freeze_backbone": True,
        "otf_graph": True,
        "pass_through_head_outputs": True,
    }
    log = run_fairchem(
        s2efs_config(root, model, max_epochs=1, stress=False), tmp_path / "ft", "train"
    )
    assert logged(log, "forces_mae"), log[-3000:]
    tuned = only(list((tmp_path / "ft").glob("checkpoints/*/checkpoint.pt")))
    tuned_state = torch.load(tuned, map_location="cpu", weights_only=False)["state_dict"]
    start_state = torch.load(start, map_location="cpu", weights_only=False)["state_dict"]
    backbone = [k for k in start_state if ".backbone." in k and not k.endswith("_extra_state")]
    assert backbone and all(torch.equal(tuned_state[k], start_state[k]) for k in backbone)
    alpha = [v for k, v in tuned_state.items() if k.endswith("force_block.alpha_dot")]
    assert len(alpha) == 1 and alpha[0].shape[0] == 4  # num_heads from the override
