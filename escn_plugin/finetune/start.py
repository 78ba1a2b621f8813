"""The starting checkpoint: read it, map its weights onto the fine-tuned model, write step 0.

Accepted: a checkpoint written by fairchem's trainer (``checkpoint.pt`` or
``best_checkpoint.pt``) or anything with its ``state_dict`` and ``config`` keys, of

- this plugin: ``model.name`` ``escn_plugin.eSCN`` (or ``escn_plugin``), or ``hydra`` with
  backbone ``escn_plugin.eSCNBackbone`` and our heads;
- fairchem's reference ``escn`` (plain, legacy ``model_attributes`` or hydra
  ``escn_backbone``): converted on the fly by :func:`escn_plugin.convert.convert_checkpoint`
  (its renames and checks; unknown keys fail).

The fine-tuned model is always fairchem's hydra model on :class:`escn_plugin.eSCNBackbone`
(so fairchem's ``freeze_backbone`` and, later, its ``finetune_config`` work on it):

- direct: heads ``energy`` (:class:`escn_plugin.eSCNEnergyHead`) and ``forces``
  (:class:`escn_plugin.eSCNForceHead`), plus fairchem's ``rank2_symmetric_head`` as a new
  ``stress`` head when training stress;
- conservative: one head ``energy`` (:class:`escn_plugin.eSCNEnergyGradientHead`: energy,
  forces = -dE/dx, stress) on the backbone with ``direct_forces: False``, no neighbour cap
  and the cutoff envelope; the direct force head's weights are dropped (logged).

Weights are taken from the state dict as stored (the raw weights, as ``OCPCalculator``
uses them; ``best_checkpoint.pt`` holds the EMA weights). The heads' last layers are
rescaled by old/new normaliser scale, so that at step 0 the model predicts the same
physical forces (direct) and the same energy differences as the starting checkpoint: the
new element references and normalizers change only the energy's constant per-element
offsets, not what the network has learned.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "StartingPoint",
    "conservative_backbone",
    "hydra_model",
    "initial_state_dict",
    "load_start",
    "write_checkpoint",
]

log = logging.getLogger(__name__)

PLAIN_NAMES = ("escn_plugin.eSCN", "escn_plugin")
BACKBONE_NAMES = ("escn_plugin.eSCNBackbone", "escn_plugin_backbone")
ENERGY_HEADS = ("escn_plugin.eSCNEnergyHead", "escn_plugin_energy_head")
GRADIENT_HEADS = ("escn_plugin.eSCNEnergyGradientHead", "escn_plugin_energy_gradient_head")
FORCE_HEADS = ("escn_plugin.eSCNForceHead", "escn_plugin_force_head")
REFERENCE_NAMES = ("escn", "escn_backbone")
#: conservative fine-tunes: no neighbour cap (eSEN's 300, ties kept) and the envelope
CONSERVATIVE_MAX_NEIGHBORS = 300
CONSERVATIVE_ENVELOPE_EXPONENT = 5
#: head settings passed on to the fine-tuned heads
HEAD_ARGS = ("energy_scale", "reduce")


@dataclass
class StartingPoint:
    """What a starting checkpoint gives the fine-tune (keys without ``module.``)."""

    path: str
    origin: str  # "escn_plugin" or "reference escn (converted)"
    backbone_args: dict[str, Any]
    backbone_state: dict[str, torch.Tensor]
    energy_readout: dict[str, torch.Tensor] | None
    force_readout: dict[str, torch.Tensor] | None
    energy_head_args: dict[str, Any]
    normalizers: dict[str, dict[str, float]]
    dropped_heads: list[str] = field(default_factory=list)
    step: int | None = None

    @property
    def direct_forces(self) -> bool:
        return bool(self.backbone_args.get("direct_forces", True))


def _strip_module(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        while key.startswith("module."):
            key = key[len("module.") :]
        out[key] = value
    return out


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _old_normalizers(checkpoint: dict) -> dict[str, dict[str, float]]:
    """``{target: {"mean", "rmsd"}}`` of the checkpoint (legacy ``target``/``grad_target``
    names and ``std`` values too); targets without one get mean 0, rmsd 1."""
    names = {"target": "energy", "grad_target": "forces"}
    out = {}
    for key, state in (checkpoint.get("normalizers") or {}).items():
        rmsd = state.get("rmsd", state.get("std"))
        if rmsd is None or "mean" not in state:
            continue
        out[names.get(key, key)] = {"mean": float(state["mean"]), "rmsd": float(rmsd)}
    return out


def _model_config(config: dict) -> dict:
    model = config.get("model")
    if isinstance(model, str):  # legacy: model: NAME + model_attributes
        model = {"name": model, **config.get("model_attributes", {})}
    if not isinstance(model, dict) or "name" not in model:
        raise ValueError("its config has no model section with a name")
    return copy.deepcopy(model)


def load_start(path: str | os.PathLike) -> StartingPoint:
    """Read a starting checkpoint (see the module doc); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many kinds for non-checkpoints
        raise ValueError(f"{path}: not a torch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a fairchem checkpoint (no 'state_dict' key)")
    if "config" not in checkpoint:
        raise ValueError(
            f"{path}: the checkpoint has no 'config'; the model's settings cannot be known"
        )
    try:
        return _starting_point(path, checkpoint)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _starting_point(path: Path, checkpoint: dict) -> StartingPoint:
    model = _model_config(checkpoint["config"])
    origin = "escn_plugin"
    backbone_name = model.get("backbone", {}).get("model") if model["name"] == "hydra" else None
    if model["name"] in REFERENCE_NAMES or backbone_name in REFERENCE_NAMES:
        from escn_plugin.convert import convert_checkpoint

        checkpoint = convert_checkpoint(checkpoint)
        model = _model_config(checkpoint["config"])
        origin = "reference escn (converted by escn_plugin.convert)"
        log.info("%s: fairchem's reference escn, converted to escn_plugin's layout", path)
    state = _strip_module(checkpoint["state_dict"])
    normalizers = _old_normalizers(checkpoint)
    step = checkpoint.get("step")
    if model["name"] in PLAIN_NAMES:
        args = {k: v for k, v in model.items() if k != "name"}
        head_args = {"energy_scale": args.pop("energy_scale", 0.001)}
        energy_prefix = (
            "energy_head.readout."
            if args.get("direct_forces", True)
            else ("energy_head.energy.readout.")
        )
        backbone = {
            k: v for k, v in state.items() if not k.startswith(("energy_head.", "force_head."))
        }
        return StartingPoint(
            str(path),
            origin,
            args,
            backbone,
            _sub(state, energy_prefix) or None,
            _sub(state, "force_head.readout.") or None,
            head_args,
            normalizers,
            step=step,
        )
    if model["name"] == "hydra":
        backbone_cfg = dict(model.get("backbone") or {})
        if backbone_cfg.get("model") not in BACKBONE_NAMES:
            raise ValueError(
                f"hydra backbone '{backbone_cfg.get('model')}' is not eSCN's "
                f"({', '.join(BACKBONE_NAMES + REFERENCE_NAMES)})"
            )
        backbone_cfg.pop("model")
        energy = forces = None
        head_args: dict[str, Any] = {}
        dropped = []
        for name, head in (model.get("heads") or {}).items():
            module = head.get("module")
            prefix = f"output_heads.{name}."
            if module in ENERGY_HEADS + GRADIENT_HEADS and energy is None:
                inner = "readout." if module in ENERGY_HEADS else "energy.readout."
                energy = _sub(state, prefix + inner)
                head_args = {k: head[k] for k in HEAD_ARGS if k in head}
            elif module in FORCE_HEADS and forces is None:
                forces = _sub(state, prefix + "readout.")
            else:
                dropped.append(f"{name} ({module})")
        return StartingPoint(
            str(path),
            origin,
            backbone_cfg,
            _sub(state, "backbone."),
            energy or None,
            forces or None,
            head_args,
            normalizers,
            dropped,
            step,
        )
    raise ValueError(
        f"model '{model['name']}' is neither escn_plugin's eSCN ({', '.join(PLAIN_NAMES)}, "
        f"or hydra with {BACKBONE_NAMES[0]}) nor fairchem's reference escn"
    )


def conservative_backbone(args: dict[str, Any], stress: bool) -> dict[str, Any]:
    """eSEN's stage 2 on a direct backbone's settings: forces = -dE/dx, stress if asked,
    no neighbour cap (ties kept), the cutoff envelope on; ``compile_layers`` off (no
    double backward in torch.compile)."""
    args = dict(args)
    cap = args.get("max_neighbors") or 0
    args.update(
        direct_forces=False,
        regress_forces=True,
        regress_stress=bool(stress),
        max_neighbors=max(int(cap), CONSERVATIVE_MAX_NEIGHBORS),
        enforce_max_neighbors_strictly=False,
        compile_layers=False,
    )
    if args.get("envelope_exponent") is None:
        args["envelope_exponent"] = CONSERVATIVE_ENVELOPE_EXPONENT
    return args


def hydra_model(
    start: StartingPoint,
    conservative: bool,
    stress: bool,
    use_pbc: bool,
    freeze_backbone: bool = False,
) -> dict[str, Any]:
    """The fine-tuned model's fairchem config (hydra, see the module doc)."""
    args = {k: v for k, v in start.backbone_args.items() if k != "energy_scale"}
    args.update(use_pbc=use_pbc, otf_graph=True, regress_forces=True)
    if conservative:
        args = conservative_backbone(args, stress)
        heads = {"energy": {"module": GRADIENT_HEADS[0], **start.energy_head_args}}
    else:
        args.update(direct_forces=True, regress_stress=False)
        heads = {
            "energy": {"module": ENERGY_HEADS[0], **start.energy_head_args},
            "forces": {"module": FORCE_HEADS[0]},
        }
        if stress:  # fairchem's symmetric rank-2 head on our backbone: a new head
            heads["stress"] = {
                "module": "rank2_symmetric_head",
                "output_name": "stress",
                "use_source_target_embedding": True,
            }
    return {
        "name": "hydra",
        "backbone": {"model": BACKBONE_NAMES[0], **args},
        "heads": heads,
        "otf_graph": True,
        "pass_through_head_outputs": True,
        "freeze_backbone": bool(freeze_backbone),
    }


def build_model(model_config: dict) -> torch.nn.Module:
    """The hydra model of ``model_config`` (fresh weights), as fairchem's trainer builds it."""
    import fairchem.core.models.equiformer_v2.heads.rank2  # noqa: F401  (registers its head)
    from fairchem.core.common.registry import registry

    import escn_plugin  # noqa: F401  (registers our names)

    config = copy.deepcopy(model_config)
    return registry.get_model_class(config.pop("name"))(**config)


def _scale(readout: dict[str, torch.Tensor], factor: float) -> dict[str, torch.Tensor]:
    """A readout with its last layer (``fc3``, no bias) times ``factor``: outputs x factor."""
    out = dict(readout)
    out["fc3.weight"] = readout["fc3.weight"] * factor
    return out


def initial_state_dict(
    start: StartingPoint,
    model_config: dict,
    normalizer: dict[str, dict[str, float]],
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The fine-tuned model's step-0 weights: the start's backbone and heads, heads rescaled
    to the new ``normalizer`` (see the module doc); new heads from a seeded fresh init.
    Logs what is kept, rescaled and dropped."""
    torch.manual_seed(seed)
    model = build_model(model_config)
    state = dict(model.state_dict())
    # ``_extra_state`` (the model's record of its constructor arguments) is the new
    # model's own: the fine-tune changes arguments on purpose (e.g. direct_forces)
    backbone = {
        f"backbone.{k}": v
        for k, v in start.backbone_state.items()
        if not k.endswith("_extra_state")
    }
    expected = {k for k in state if k.startswith("backbone.") and not k.endswith("_extra_state")}
    missing, unexpected = sorted(expected - set(backbone)), sorted(set(backbone) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{start.path}: its backbone does not fit the fine-tuned model (missing "
            f"{missing[:5]}, unexpected {unexpected[:5]}); is it an eSCN checkpoint?"
        )
    for key, value in backbone.items():
        if value.shape != state[key].shape:
            raise ValueError(
                f"{start.path}: {key} has shape {tuple(value.shape)}, the model wants "
                f"{tuple(state[key].shape)}"
            )
        state[key] = value.to(state[key].dtype)
    old = start.normalizers
    conservative = model_config["heads"]["energy"]["module"] in GRADIENT_HEADS
    prefix = "output_heads.energy." + ("energy.readout." if conservative else "readout.")
    if start.energy_readout is not None:
        factor = old.get("energy", {}).get("rmsd", 1.0) / normalizer["energy"]["rmsd"]
        for key, value in _scale(start.energy_readout, factor).items():
            state[prefix + key] = value
        log.info(
            "energy head: kept from %s, rescaled by %.4g (old/new energy scale)", start.path, factor
        )
    else:
        log.info("energy head: %s has none; a new one starts from random weights", start.path)
    if "forces" in model_config["heads"]:
        if start.force_readout is not None:
            factor = old.get("forces", {}).get("rmsd", 1.0) / normalizer["forces"]["rmsd"]
            for key, value in _scale(start.force_readout, factor).items():
                state["output_heads.forces.readout." + key] = value
            log.info("force head: kept, rescaled by %.4g (old/new force scale)", factor)
        else:
            log.info("force head: %s has none; a new one starts from random weights", start.path)
    elif start.force_readout is not None:
        log.info(
            "force head: dropping the direct force head's weights (%d tensors) of %s: "
            "forces are now -dE/dx of the energy head",
            len(start.force_readout),
            start.path,
        )
    if "stress" in model_config["heads"]:
        log.info("stress head: new (fairchem's rank2_symmetric_head), random weights")
    for name in start.dropped_heads:
        log.info(
            "head %s of %s: dropped (no counterpart in the fine-tuned model)", name, start.path
        )
    unknown = [k for k in state if k not in model.state_dict()]
    if unknown:
        raise ValueError(f"internal: keys {unknown[:5]} are not the model's")
    return state


def write_checkpoint(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    config: dict,
    normalizer: dict[str, dict[str, float]],
    element_references: Any,
) -> Path:
    """A checkpoint in fairchem's trainer format at step 0: weights (``module.`` keys, as
    the trainer's DDP-wrapped model saves them), the fitted normalizers and element
    references and the config, no optimizer, scheduler or EMA: ``OCPCalculator``,
    ``--mode predict`` and the fine-tune trainer read it."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    coeff = torch.as_tensor(np.asarray(element_references), dtype=torch.float32)
    saved = copy.deepcopy(config)
    datasets = saved.pop("dataset", {})
    saved.update(
        trainer="ocp",  # what the trainer records for any non-legacy trainer
        dataset=datasets.get("train", {}),
        val_dataset=datasets.get("val", {}),
        test_dataset=datasets.get("test", {}),
    )
    checkpoint = {
        "state_dict": {f"module.{k}": v for k, v in state_dict.items()},
        "normalizers": {
            name: {"mean": torch.tensor(v["mean"]), "rmsd": torch.tensor(v["rmsd"])}
            for name, v in normalizer.items()
        },
        "elementrefs": {"energy": {"element_references": coeff}},
        "config": saved,
        "epoch": 0,
        "step": 0,
        "amp": None,
    }
    torch.save(checkpoint, path)
    return path
