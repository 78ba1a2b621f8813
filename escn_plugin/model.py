"""eSCN for fairchem-core 1.10: backbone, heads and the plain energy+forces model.

From an atom batch to energies and forces, top to bottom (shapes: N atoms, E edges,
K = sum_i (lmax_i+1)^2 coefficients, K_M edge-frame coefficients, C = sphere_channels,
R resolutions, P sphere points, B systems)::

    graph      = generate_graph(data)                      # radius graph with PBC
    W          = rotation(edge_distance_vec)               # [E, K_M, K] Wigner-D rows
    basis      = distance_expansion(edge_distance)         # [E, num_basis]
    x          = atom_embedding(Z) on l = 0, zero else     # [N, K, C]
    for layer i:  x = layer(x) if i == 0 else x + layer(x) # messages + grid node update
    values     = x at P sphere points                      # [N, P, R*C]
    energy     = 0.001 * sum_atoms sum_p w_p MLP(values)   # [B]  (w_p = 1/P by default)
    forces     = sum_p w_p MLP(values) p                   # [N, 3] (direct)

Constructor arguments are the reference eSCN's (same names, meanings and defaults), so a
reference config works by changing only ``name``. Additions, all optional:

* ``rotation_backend`` ("polynomial"): how Wigner-D matrices are built (see
  :mod:`escn_plugin.so3.rotation`);
* ``so2_impl`` ("escn"): the SO(2) convolution implementation;
* ``resolution``: as the reference (one int for both grid axes), or a [res_beta, res_alpha]
  pair; finer grids make the point-wise non-linearities closer to exactly equivariant;
* ``readout_grid`` (None): sample the output heads on an e3nn S2 grid ([res_beta,
  res_alpha]) with quadrature weights instead of the reference's ``num_sphere_samples``
  Fibonacci points; the force head is then equivariant to quadrature accuracy (the
  Fibonacci readout limits force equivariance to ~1e-1..1e-4 depending on P);
* ``random_roll`` (False): draw a random roll of each edge frame per forward pass in
  training, as the reference always does; off by default so outputs are reproducible;
* ``validate_inputs`` (True): clear errors for bad atomic numbers, positions, overlaps;
* ``compile_layers`` (False): ``torch.compile`` the interaction layers (dynamic shapes).
"""

from __future__ import annotations

import logging

import torch
from e3nn.o3 import ToS2Grid
from fairchem.core.models.base import BackboneInterface, GraphModelMixin, HeadInterface
from fairchem.core.models.scn.sampling import CalcSpherePoints
from fairchem.core.models.scn.smearing import (
    GaussianSmearing,
    LinearSigmoidSmearing,
    SigmoidSmearing,
    SiLUSmearing,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from escn_plugin.backends import ROTATION_BACKENDS
from escn_plugin.input_checks import check_atoms, check_edges, check_overlaps
from escn_plugin.nn import EnergyReadout, ForceReadout, InteractionLayer, MessageBlock, NodeUpdate
from escn_plugin.so3.layout import CoefficientLayout
from escn_plugin.so3.projections import (
    EdgeGridActivation,
    node_grid_sampler,
    sphere_points_sampler,
)
from escn_plugin.so3.s2_grid import float64_default, grid_resolution, s2_grid_matrices
from escn_plugin.so3.wigner import MAX_LMAX

__all__ = ["eSCN", "eSCNBackbone", "eSCNEnergyHead", "eSCNForceHead"]

DISTANCE_FUNCTIONS = {
    "gaussian": GaussianSmearing,
    "sigmoid": SigmoidSmearing,
    "linearsigmoid": LinearSigmoidSmearing,
    "silu": SiLUSmearing,
}


def readout_points(
    num_sphere_samples: int, readout_grid: int | list[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``[P, 3]`` and quadrature weights ``[P]`` (sum 1) for the output heads.

    Default: fairchem's density-weighted Fibonacci points with equal weights (the
    reference). With ``readout_grid``: e3nn's S2 grid and its quadrature weights.
    """
    if readout_grid is None:
        with float64_default():
            points = CalcSpherePoints(num_sphere_samples)
        return points, torch.full((num_sphere_samples,), 1.0 / num_sphere_samples)
    res_beta, res_alpha = grid_resolution(0, 0, readout_grid)
    with float64_default():
        points = ToS2Grid(0, (res_beta, res_alpha), dtype=torch.float64).grid.reshape(-1, 3)
    _, from_grid = s2_grid_matrices(0, res_beta, res_alpha)
    weights = from_grid[:, 0]
    return points, weights / weights.sum()


class eSCNBackbone(nn.Module, GraphModelMixin, BackboneInterface):
    """eSCN backbone: node embeddings and their values on sphere points.

    Returns ``{"sphere_values": [N, P, R*C], "sphere_points": [P, 3], "sphere_weights": [P],
    "node_embedding": [N, K, C], "graph": GraphData}``.
    """

    def __init__(
        self,
        use_pbc: bool = True,
        use_pbc_single: bool = False,
        regress_forces: bool = True,
        otf_graph: bool = False,
        max_neighbors: int = 40,
        cutoff: float = 8.0,
        max_num_elements: int = 90,
        num_layers: int = 8,
        lmax_list: list[int] | None = None,
        mmax_list: list[int] | None = None,
        sphere_channels: int = 128,
        hidden_channels: int = 256,
        edge_channels: int = 128,
        num_sphere_samples: int = 128,
        distance_function: str = "gaussian",
        basis_width_scalar: float = 1.0,
        distance_resolution: float = 0.02,
        show_timing_info: bool = False,
        resolution: int | list[int] | None = None,
        activation_checkpoint: bool | None = False,
        rotation_backend: str = "polynomial",
        so2_impl: str = "escn",
        random_roll: bool = False,
        validate_inputs: bool = True,
        readout_grid: int | list[int] | None = None,
        compile_layers: bool = False,
    ) -> None:
        super().__init__()
        lmax_list = [6] if lmax_list is None else list(lmax_list)
        mmax_list = [2] if mmax_list is None else list(mmax_list)
        if max(lmax_list, default=0) > MAX_LMAX:
            raise ValueError(f"lmax_list {lmax_list}: lmax above {MAX_LMAX} is not supported")
        if distance_function not in DISTANCE_FUNCTIONS:
            raise ValueError(
                f"unknown distance_function '{distance_function}'; choose one of "
                f"{', '.join(DISTANCE_FUNCTIONS)}"
            )
        for name, value in (
            ("num_layers", num_layers),
            ("sphere_channels", sphere_channels),
            ("hidden_channels", hidden_channels),
            ("edge_channels", edge_channels),
            ("num_sphere_samples", num_sphere_samples),
            ("max_neighbors", max_neighbors),
            ("max_num_elements", max_num_elements),
        ):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if not cutoff > 0 or not distance_resolution > 0:
            raise ValueError(
                f"cutoff ({cutoff}) and distance_resolution ({distance_resolution}) must be > 0"
            )
        if show_timing_info:
            logging.info("eSCN: show_timing_info is accepted for compatibility and ignored")

        # read by fairchem's GraphModelMixin.generate_graph and trainers
        self.use_pbc = use_pbc
        self.use_pbc_single = use_pbc_single
        self.regress_forces = regress_forces
        self.direct_forces = True  # forces come from a head, not from -dE/dx
        self.otf_graph = otf_graph
        self.max_neighbors = max_neighbors
        self.cutoff = cutoff

        self.max_num_elements = max_num_elements
        self.num_layers = num_layers
        self.lmax_list, self.mmax_list = lmax_list, mmax_list
        self.sphere_channels = sphere_channels
        self.num_resolutions = len(lmax_list)
        self.sphere_channels_all = self.num_resolutions * sphere_channels
        self.hidden_channels = hidden_channels
        self.edge_channels = edge_channels
        self.num_sphere_samples = num_sphere_samples
        self.activation_checkpoint = bool(activation_checkpoint)
        self.random_roll = random_roll
        self.validate_inputs = validate_inputs

        self.layout = CoefficientLayout(lmax_list, mmax_list)
        self.rotation = ROTATION_BACKENDS.build(rotation_backend, self.layout)
        self.atom_embedding = nn.Embedding(max_num_elements, self.sphere_channels_all)
        self.distance_expansion = DISTANCE_FUNCTIONS[distance_function](
            0.0, cutoff, int(cutoff / distance_resolution), basis_width_scalar
        )
        edge_grid_act = EdgeGridActivation(self.layout, nn.SiLU(), resolution)
        node_grid = node_grid_sampler(self.layout, resolution)
        self.layers = nn.ModuleList(
            InteractionLayer(
                MessageBlock(
                    self.layout,
                    sphere_channels,
                    hidden_channels,
                    edge_channels,
                    self.distance_expansion.num_output,
                    max_num_elements,
                    edge_grid_act,
                    so2_impl,
                ),
                NodeUpdate(node_grid, sphere_channels),
            )
            for _ in range(num_layers)
        )
        points, weights = readout_points(num_sphere_samples, readout_grid)
        self.num_sphere_samples = points.shape[0]
        self.register_buffer("sphere_points", points, persistent=False)  # [P, 3]
        self.register_buffer("sphere_weights", weights, persistent=False)  # [P]
        self.sphere_sampler = sphere_points_sampler(self.layout, points)
        self._compiled_layers = (
            torch.compile(self.run_layers, dynamic=True) if compile_layers else None
        )
        # l = 0 coefficient of each resolution, in the full layout
        l0 = [self.layout.res_slice(i).start for i in range(self.num_resolutions)]
        self.register_buffer("l0_index", torch.tensor(l0), persistent=False)

    def embed_atoms(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """``[N] -> [N, K, C]``: element embedding on each resolution's l = 0, zero else."""
        num_atoms = atomic_numbers.shape[0]
        emb = self.atom_embedding(atomic_numbers).view(num_atoms, self.num_resolutions, -1)
        x = emb.new_zeros(num_atoms, self.layout.num_full, self.sphere_channels)
        return x.index_copy(1, self.l0_index, emb)

    def edge_rolls(self, num_edges: int, like: torch.Tensor) -> torch.Tensor | None:
        if self.random_roll and self.training:
            return torch.rand(num_edges, dtype=like.dtype, device=like.device) * 2 * torch.pi
        return None

    def run_layers(
        self,
        x: torch.Tensor,
        basis: torch.Tensor,
        atomic_numbers: torch.Tensor,
        edge_index: torch.Tensor,
        wigner: torch.Tensor,
    ) -> torch.Tensor:
        """The interaction layers with their residuals: ``[N, K, C] -> [N, K, C]``.

        Free of data-dependent control flow, so ``torch.compile`` captures it whole
        (``compile_layers: True``); graph construction and input checks stay eager. Runs the
        first ``self.num_layers`` layers: as in the reference, lowering the attribute on a
        built model (fairchem's tests set ``model.num_layers = 1``) runs fewer layers.
        """
        for i in range(self.num_layers):
            layer = self.layers[i]
            args = (x, basis, atomic_numbers, edge_index, wigner)
            if self.activation_checkpoint and torch.is_grad_enabled():
                update = checkpoint(layer, *args, use_reentrant=False)
            else:
                update = layer(*args)
            x = update if i == 0 else x + update
        return x

    def forward(self, data) -> dict:
        atomic_numbers = data.atomic_numbers.long()
        if self.validate_inputs:
            check_atoms(data, self.max_num_elements)
            check_overlaps(data, self.use_pbc)
        graph = self.generate_graph(data)
        if self.validate_inputs:
            check_edges(data, graph.edge_index, graph.edge_distance)

        vec = graph.edge_distance_vec
        wigner = self.rotation(vec, self.edge_rolls(vec.shape[0], vec))  # [E, K_M, K]
        basis = self.distance_expansion(graph.edge_distance)  # [E, num_basis]
        x = self.embed_atoms(atomic_numbers)  # [N, K, C]
        wigner = wigner.to(x.dtype)
        basis = basis.to(x.dtype)

        if not 0 <= self.num_layers <= len(self.layers):
            raise ValueError(
                f"num_layers is {self.num_layers} but the model was built with "
                f"{len(self.layers)} layers; set it between 0 and {len(self.layers)}"
            )
        run_layers = self._compiled_layers or self.run_layers
        x = run_layers(x, basis, atomic_numbers, graph.edge_index, wigner)
        return {
            "sphere_values": self.sphere_sampler(x),  # [N, P, R*C]
            "sphere_points": self.sphere_points,
            "sphere_weights": self.sphere_weights,
            "node_embedding": x,
            "graph": graph,
        }


def _sum_per_system(per_atom: torch.Tensor, batch: torch.Tensor, num_systems: int) -> torch.Tensor:
    """Sum ``[N]`` into ``[B]``; accumulates in float32 at least (safe under AMP)."""
    dtype = torch.promote_types(per_atom.dtype, torch.float32)
    out = torch.zeros(num_systems, dtype=dtype, device=per_atom.device)
    return out.index_add(0, batch, per_atom.to(dtype))


class eSCNEnergyHead(nn.Module, HeadInterface):
    """System energy: ``0.001 * sum over atoms`` (reduce="sum", the reference's scaling) or
    the per-atom mean (reduce="mean")."""

    def __init__(self, backbone: eSCNBackbone, reduce: str = "sum") -> None:
        super().__init__()
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got '{reduce}'")
        self.reduce = reduce
        self.readout = EnergyReadout(backbone.sphere_channels_all)

    def forward(self, data, emb: dict) -> dict[str, torch.Tensor]:
        per_atom = self.readout(emb["sphere_values"], emb["sphere_weights"])  # [N]
        energy = _sum_per_system(per_atom, data.batch, len(data.natoms))
        if self.reduce == "sum":
            return {"energy": energy * 0.001}
        return {"energy": energy / data.natoms.to(energy.dtype)}


class eSCNForceHead(nn.Module, HeadInterface):
    """Direct per-atom forces ``[N, 3]`` from the sphere values."""

    def __init__(self, backbone: eSCNBackbone) -> None:
        super().__init__()
        self.readout = ForceReadout(backbone.sphere_channels_all)

    def forward(self, data, emb: dict) -> dict[str, torch.Tensor]:
        values, points, weights = emb["sphere_values"], emb["sphere_points"], emb["sphere_weights"]
        return {"forces": self.readout(values, points, weights)}


class eSCN(eSCNBackbone):
    """The plain eSCN model: ``forward(batch) -> {"energy": [B], "forces": [N, 3]}``."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.energy_head = eSCNEnergyHead(self)
        self.force_head = eSCNForceHead(self) if self.regress_forces else None

    def forward(self, data) -> dict[str, torch.Tensor]:
        emb = super().forward(data)
        outputs = self.energy_head(data, emb)
        if self.force_head is not None:
            outputs.update(self.force_head(data, emb))
        return outputs
