"""Benchmark models: the reference eSCN (fairchem's registry name ``escn``) and ours
(:class:`escn_plugin.eSCN`) with the same weights
(:func:`escn_plugin.convert.convert_state_dict`), and the timed calls."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

# the paper's configurations (docs/design.md §4); layer counts are set per run (CPU: fewer layers)
CONFIGS: dict[str, dict] = {
    "small": dict(
        lmax_list=[2], mmax_list=[1], sphere_channels=32, hidden_channels=64, edge_channels=32
    ),
    "L4-M2": dict(
        lmax_list=[4], mmax_list=[2], sphere_channels=128, hidden_channels=256, edge_channels=128
    ),
    "L6-M2": dict(
        lmax_list=[6], mmax_list=[2], sphere_channels=128, hidden_channels=256, edge_channels=128
    ),
    "L6-M3": dict(
        lmax_list=[6], mmax_list=[3], sphere_channels=160, hidden_channels=384, edge_channels=128
    ),
}
COMMON = dict(
    use_pbc=True,
    regress_forces=True,
    otf_graph=True,
    max_neighbors=20,
    cutoff=12.0,
    num_sphere_samples=128,
    distance_function="gaussian",
    basis_width_scalar=2.0,
    distance_resolution=0.02,
)


def model_config(name: str, num_layers: int, **overrides) -> dict:
    """``COMMON`` + ``CONFIGS[name]`` with ``num_layers`` layers and ``overrides``."""
    return {**COMMON, **CONFIGS[name], "num_layers": num_layers, **overrides}


def build_ours(config: dict, device: str = "cpu", seed: int = 0):
    """Our eSCN, initialised from ``seed``."""
    import escn_plugin

    torch.manual_seed(seed)
    return escn_plugin.eSCN(**config).to(device)


def build_reference(config: dict, device: str = "cpu", seed: int = 0):
    """fairchem's reference eSCN, initialised from ``seed``."""
    import fairchem.core.models.escn.escn  # noqa: F401  (registers the reference "escn")
    from fairchem.core.common.registry import registry

    torch.manual_seed(seed)
    return registry.get_model_class("escn")(**config).to(device)


def build_pair(config: dict, device: str = "cpu", seed: int = 0):
    """The reference and ours with the same weights (ours loaded from the reference's)."""
    from escn_plugin.cli.convert import convert_state_dict

    ref = build_reference(config, device, seed)
    ours = build_ours(config, device, seed)
    result = ours.load_state_dict(convert_state_dict(ref.state_dict()), strict=True)
    if result.missing_keys or result.unexpected_keys:
        raise RuntimeError(f"weight conversion mismatch: {result}")
    return ref, ours


@contextlib.contextmanager
def reference_uses_our_frame(ref) -> Iterator[None]:
    """Replace the reference's random edge frame by ours (outputs become comparable)."""
    from escn_plugin.so3 import edge_frame

    cls = type(ref)
    original = cls._init_edge_rot_mat

    def ours_frame(self, data, edge_index, edge_distance_vec):
        return edge_frame(edge_distance_vec).detach()

    cls._init_edge_rot_mat = ours_frame
    try:
        yield
    finally:
        cls._init_edge_rot_mat = original


def training_loss(out: dict) -> torch.Tensor:
    """A scalar that depends on energies and forces (what backward is timed on)."""
    return out["energy"].sum() + out["forces"].pow(2).sum()


def forward(model, batch) -> dict:
    """One forward pass."""
    return model(batch)


def forward_backward(model, batch) -> None:
    """One forward and backward pass (gradients cleared first)."""
    model.zero_grad(set_to_none=True)
    training_loss(model(batch)).backward()
