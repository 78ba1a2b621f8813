"""Forces and stress as derivatives of the energy (``direct_forces: False``).

Conventions (ASE's): positions are rows, ``pos [N, 3]``, ``cell [B, 3, 3]`` (rows are
lattice vectors). A symmetric strain eps_b (one per system, ``[B, 3, 3]``) acts on both::

    pos'  = pos  (I + eps_b(i))          cell' = cell (I + eps_b)

before the graph is built, so every edge vector r_e = pos'_s - pos'_t + n_e cell' moves
with it. At eps = 0::

    forces  F_i = -dE/dpos_i                                    [N, 3]   eV/A
    stress  S_b = (1 / V_b) dE_b/deps_b,   V_b = |det cell_b|    [B, 3, 3] eV/A^3

S is ASE's ``get_stress()`` (positive under tension; ``-trace(S)/3`` is the pressure), so
an :class:`~fairchem.core.common.relaxation.ase_utils.OCPCalculator` that returns it
drives ASE's cell filters. Differentiating with respect to the symmetric part of an
unconstrained displacement (``0.5 (D + D^T)``) gives the symmetric stress directly.

Forces and stress come from one ``torch.autograd.grad`` call. With ``create_graph`` (the
caller had gradients enabled, as in training) they stay differentiable, so force and
stress losses train the parameters; under ``torch.no_grad`` (fairchem's validate, predict,
relaxations, ``OCPCalculator``) they are plain tensors and the graph is freed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

__all__ = ["DifferentiableInputs", "energy_gradients", "strain_inputs"]


@dataclass
class DifferentiableInputs:
    """What the energy is differentiated with respect to."""

    pos: torch.Tensor  # [N, 3] positions before the strain
    strain: torch.Tensor | None  # [B, 3, 3] zero displacement (stress only)
    volume: torch.Tensor | None  # [B] |det cell| (stress only)
    create_graph: bool  # forces/stress differentiable (the caller had grad enabled)


def strain_inputs(data, regress_stress: bool, create_graph: bool):
    """A shallow copy of ``data`` whose ``pos`` (and ``cell``) depend differentiably on a
    leaf position tensor (and a zero strain), and the :class:`DifferentiableInputs`.

    The caller's batch is not modified. Call with gradients enabled.
    """
    pos = data.pos
    if not pos.requires_grad:
        pos = pos.detach().requires_grad_(True)
    out = copy.copy(data)  # PyG Data: new attribute store, same tensors
    out.pos = pos
    strain = volume = None
    if regress_stress:
        cell = getattr(data, "cell", None)
        num_systems = len(data.natoms)
        if cell is None or cell.shape[-2:] != (3, 3) or cell.shape[0] != num_systems:
            raise ValueError(
                "regress_stress needs a periodic cell per system (data.cell [B, 3, 3]); "
                f"got {None if cell is None else tuple(cell.shape)} for {num_systems} systems"
            )
        volume = torch.linalg.det(cell.detach()).abs()  # [B]
        small = volume <= 1e-8 * cell.detach().norm(dim=(-2, -1)) ** 3
        if small.any():
            raise ValueError(
                f"system {int(small.nonzero()[0])} has a zero-volume cell: stress needs a "
                "periodic cell (set regress_stress: False for molecules)"
            )
        displacement = torch.zeros(num_systems, 3, 3, dtype=pos.dtype, device=pos.device)
        strain = displacement.requires_grad_(True)
        sym = 0.5 * (strain + strain.transpose(-1, -2))  # [B, 3, 3]
        eye = torch.eye(3, dtype=pos.dtype, device=pos.device)
        batch = (
            data.batch
            if getattr(data, "batch", None) is not None
            else pos.new_zeros(pos.shape[0], dtype=torch.long)
        )
        out.pos = torch.bmm(pos.unsqueeze(1), eye + sym[batch]).squeeze(1)  # [N, 3]
        out.cell = torch.bmm(cell.to(pos.dtype), eye + sym)  # [B, 3, 3]
    return out, DifferentiableInputs(pos, strain, volume, create_graph)


def energy_gradients(
    energy: torch.Tensor,
    inputs: DifferentiableInputs,
    forces: bool = True,
    stress: bool = False,
) -> dict[str, torch.Tensor]:
    """``energy [B]`` -> ``{"forces": [N, 3], "stress": [B, 3, 3]}`` (those requested)."""
    wrt = []
    if forces:
        wrt.append(inputs.pos)
    if stress:
        if inputs.strain is None:
            raise ValueError("stress requested but the backbone applied no strain")
        wrt.append(inputs.strain)
    if not wrt:
        return {}
    grads = torch.autograd.grad(
        energy.sum(),
        wrt,
        create_graph=inputs.create_graph,
        allow_unused=True,  # a batch without edges: E does not depend on positions
    )
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, wrt)]
    out = {}
    if forces:
        out["forces"] = -grads[0]
    if stress:
        out["stress"] = grads[-1] / inputs.volume.to(grads[-1].dtype).view(-1, 1, 1)
    return out
