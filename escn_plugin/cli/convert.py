"""Convert reference eSCN checkpoints (fairchem's ``escn`` / hydra ``escn_backbone``) to ours.

    python -m escn_plugin.convert IN.pt OUT.pt

What changes:

* ``state_dict`` and the EMA ``shadow_params`` are renamed to our modules (table
  :data:`RENAMES`); the real and imaginary input maps of each SO(2) order are stacked into
  one matrix. Reference buffers that we rebuild (``sphere_points``, ``sphharm_weights``, the
  per-layer copies of the distance offsets) are checked and dropped. Unknown keys fail.
* ``config`` names our classes (``escn_plugin.eSCN`` etc.); legacy ``model_attributes``
  configs become new-style ``model: {name: ..., ...}``.
* ``normalizers``, ``elementrefs``, ``scale_dict``, ``amp``, ``epoch``, ``step`` and metrics
  are kept. ``optimizer`` and ``scheduler`` are dropped: their states are indexed by the
  reference's parameter list (fine-tuning starts a fresh optimizer).

Converting an already converted checkpoint is an error, so converting twice cannot corrupt
weights silently.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections import OrderedDict
from pathlib import Path

import torch

__all__ = ["RENAMES", "convert_checkpoint", "convert_config", "convert_state_dict", "main"]

MODEL_NAMES = {
    "escn": "escn_plugin.eSCN",
    "escn_backbone": "escn_plugin.eSCNBackbone",
    "escn_energy_head": "escn_plugin.eSCNEnergyHead",
    "escn_force_head": "escn_plugin.eSCNForceHead",
}

_LAYER = r"(?P<p>(?:backbone\.)?)layer_blocks\.(?P<i>\d+)\."
_SO2 = _LAYER + r"message_block\.so2_block_(?P<side>source|target)\."
_OUT_LAYER = r"\g<p>layers.\g<i>."
_OUT_SO2 = _OUT_LAYER + r"message.so2_\g<side>."

#: (reference key pattern, our key template); None drops the key after checking it.
RENAMES: list[tuple[str, str | None]] = [
    (r"(?P<p>(?:backbone\.)?)sphere_embedding\.weight", r"\g<p>atom_embedding.weight"),
    (r"(?P<p>(?:backbone\.)?)distance_expansion\.offset", r"\g<p>distance_expansion.offset"),
    (r"(?:backbone\.)?sphere_points", None),
    (r"(?:backbone\.)?sphharm_weights\.\d+", None),
    (_LAYER + r"message_block\.edge_block\.distance_expansion\.offset", None),
    (
        _LAYER + r"message_block\.edge_block\.fc1_dist\.(?P<t>weight|bias)",
        _OUT_LAYER + r"message.edge_features.distance_proj.\g<t>",
    ),
    (
        _LAYER + r"message_block\.edge_block\.(?P<e>source|target)_embedding\.weight",
        _OUT_LAYER + r"message.edge_features.\g<e>_embedding.weight",
    ),
    (
        _LAYER + r"message_block\.edge_block\.fc1_edge_attr\.(?P<t>weight|bias)",
        _OUT_LAYER + r"message.edge_features.out_proj.\g<t>",
    ),
    (_SO2 + r"fc1_dist0\.(?P<t>weight|bias)", _OUT_SO2 + r"edge_m0.\g<t>"),
    (_SO2 + r"fc1_m0\.weight", _OUT_SO2 + r"m0_in.weight"),
    (_SO2 + r"fc2_m0\.weight", _OUT_SO2 + r"m0_out.weight"),
    (
        _SO2 + r"so2_conv\.(?P<j>\d+)\.fc1_dist\.(?P<t>weight|bias)",
        _OUT_SO2 + r"orders.\g<j>.edge_gate.\g<t>",
    ),
    # fc1_r and fc1_i are stacked into in_proj (rows 0..H-1 real, H..2H-1 imaginary)
    (
        _SO2 + r"so2_conv\.(?P<j>\d+)\.fc1_(?P<c>r|i)\.weight",
        _OUT_SO2 + r"orders.\g<j>.in_proj.weight#\g<c>",
    ),
    (
        _SO2 + r"so2_conv\.(?P<j>\d+)\.fc2_(?P<c>r|i)\.weight",
        _OUT_SO2 + r"orders.\g<j>.out_\g<c>.weight",
    ),
    (_LAYER + r"fc(?P<k>[123])_sphere\.weight", _OUT_LAYER + r"node_update.fc\g<k>.weight"),
    (r"energy_block\.(?P<r>fc[123]\.(?:weight|bias))", r"energy_head.readout.\g<r>"),
    (r"force_block\.(?P<r>fc[123]\.(?:weight|bias))", r"force_head.readout.\g<r>"),
    (
        r"output_heads\.(?P<h>\w+)\.(?:energy|force)_block\.(?P<r>fc[123]\.(?:weight|bias))",
        r"output_heads.\g<h>.readout.\g<r>",
    ),
]
_COMPILED = [(re.compile(p), t) for p, t in RENAMES]
_NON_TRAINABLE = re.compile(r"(sphere_points|sphharm_weights\.\d+|distance_expansion\.offset)$")


def _split_prefix(key: str) -> tuple[str, str]:
    prefix = ""
    while key.startswith("module."):
        prefix, key = prefix + "module.", key[len("module.") :]
    return prefix, key


def _rename(key: str) -> str | None:
    for pattern, template in _COMPILED:
        match = pattern.fullmatch(key)
        if match:
            return None if template is None else match.expand(template)
    raise KeyError(key)


def convert_state_dict(state_dict: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Rename a reference eSCN state dict (plain or hydra, with or without ``module.``)."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    stacked: dict[str, dict[str, torch.Tensor]] = {}
    unknown = []
    for full_key, tensor in state_dict.items():
        prefix, key = _split_prefix(full_key)
        if key.startswith(("atom_embedding", "layers.", "backbone.atom_embedding")):
            raise ValueError(
                f"key '{full_key}' is already in escn_plugin's layout: this checkpoint "
                "looks converted already"
            )
        try:
            new = _rename(key)
        except KeyError:
            unknown.append(full_key)
            continue
        if new is None:
            continue
        if "#" in new:
            name, part = new.split("#")
            stacked.setdefault(prefix + name, {})[part] = tensor
            if len(stacked[prefix + name]) == 2:
                parts = stacked.pop(prefix + name)
                out[prefix + name] = torch.cat([parts["r"], parts["i"]], dim=0)
            continue
        out[prefix + new] = tensor
    if unknown:
        raise ValueError(
            f"{len(unknown)} keys are not part of a reference eSCN checkpoint, e.g. "
            f"{unknown[:5]}; is this an eSCN model?"
        )
    if stacked:
        raise ValueError(f"incomplete real/imaginary pairs for {sorted(stacked)}")
    return out


def _trainable_keys(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Reference keys of trainable parameters, in parameter order (EMA's positional order)."""
    return [k for k in state_dict if not _NON_TRAINABLE.search(k)]


def convert_config(config: dict) -> dict:
    """Point a reference config at our classes (new-style ``model:`` dict)."""
    config = copy.deepcopy(config)
    model = config.get("model")
    if isinstance(model, str):  # legacy: model: escn, model_attributes: {...}
        model = {"name": model, **config.pop("model_attributes", {})}
    if not isinstance(model, dict):
        raise ValueError("checkpoint config has no 'model' section")
    if "name" in model:
        if model["name"] not in MODEL_NAMES:
            raise ValueError(
                f"model '{model['name']}' is not a reference eSCN model ({', '.join(MODEL_NAMES)})"
            )
        model["name"] = MODEL_NAMES[model["name"]]
        model.pop("show_timing_info", None)
    if "backbone" in model:  # hydra
        backbone = model["backbone"]
        if backbone.get("model") not in MODEL_NAMES:
            raise ValueError(f"hydra backbone '{backbone.get('model')}' is not eSCN's")
        backbone["model"] = MODEL_NAMES[backbone["model"]]
        for head in model.get("heads", {}).values():
            if head.get("module") in MODEL_NAMES:
                head["module"] = MODEL_NAMES[head["module"]]
    config["model"] = model
    return config


def _build_skeleton(model_config: dict) -> torch.nn.Module:
    """Our model with the checkpoint's structure (layers, lmax/mmax, heads) and tiny widths:
    enough to read the order of our trainable parameters without allocating the real model."""
    from fairchem.core.common.registry import registry

    import escn_plugin  # noqa: F401  (registers our names)

    config = copy.deepcopy(model_config)
    tiny = {"sphere_channels": 1, "hidden_channels": 1, "edge_channels": 1, "num_sphere_samples": 2}
    if "backbone" in config:
        config["backbone"].update(tiny)
        config.pop("name", None)
        return registry.get_model_class("hydra")(**config)
    config.update(tiny)
    return registry.get_model_class(config.pop("name"))(**config)


def _convert_ema(ema: dict, ref_state: dict, new_state: dict, model_config: dict) -> dict:
    ref_keys = _trainable_keys(ref_state)
    shadow = ema.get("shadow_params")
    if shadow is None or len(shadow) != len(ref_keys):
        raise ValueError(
            f"EMA holds {len(shadow or [])} tensors but the state dict has {len(ref_keys)} "
            "trainable parameters; cannot map EMA by position"
        )
    converted = convert_state_dict(dict(zip(ref_keys, shadow)))
    prefix = _split_prefix(next(iter(new_state)))[0]
    order = [prefix + name for name, p in _build_skeleton(model_config).named_parameters()]
    missing = [k for k in order if k not in converted]
    if missing or len(order) != len(converted):
        raise ValueError(f"EMA conversion mismatch; missing {missing[:5]}")
    ema = dict(ema)
    ema["shadow_params"] = [converted[k] for k in order]
    ema["collected_params"] = []
    return ema


def convert_checkpoint(checkpoint: dict) -> dict:
    """Convert a loaded reference checkpoint dict; returns a new dict."""
    if "state_dict" not in checkpoint:
        raise ValueError("not a fairchem checkpoint: no 'state_dict' key")
    out = {k: v for k, v in checkpoint.items() if k not in ("optimizer", "scheduler")}
    out["state_dict"] = convert_state_dict(checkpoint["state_dict"])
    if "config" in checkpoint:
        out["config"] = convert_config(checkpoint["config"])
    out.setdefault("normalizers", {})
    if checkpoint.get("ema"):
        if "config" not in out:
            raise ValueError("converting EMA needs the checkpoint's config")
        out["ema"] = _convert_ema(
            checkpoint["ema"], checkpoint["state_dict"], out["state_dict"], out["config"]["model"]
        )
    out["escn_plugin_converted_from"] = checkpoint.get("config", {}).get("model", "escn")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m escn_plugin.convert",
        description="Convert a fairchem eSCN checkpoint to escn_plugin's model.",
    )
    parser.add_argument("input", type=Path, help="reference checkpoint (.pt)")
    parser.add_argument("output", type=Path, help="converted checkpoint to write (.pt)")
    args = parser.parse_args(argv)
    if not args.input.is_file():
        parser.error(f"{args.input}: no such file")
    if args.output.resolve() == args.input.resolve():
        parser.error("output must differ from input")
    checkpoint = torch.load(args.input, map_location="cpu", weights_only=False)
    if checkpoint.get("escn_plugin_converted_from") is not None:
        parser.error(f"{args.input} was already converted by escn_plugin")
    try:
        converted = convert_checkpoint(checkpoint)
    except ValueError as err:
        parser.error(f"{args.input}: {err}")
    torch.save(converted, args.output)
    n = sum(t.numel() for t in converted["state_dict"].values())
    print(f"wrote {args.output}: {len(converted['state_dict'])} tensors, {n:,} values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
