"""eSCN for fairchem-core 1.10: backbone, heads and the plain energy+forces model.

From an atom batch to energies and forces, top to bottom (shapes: N atoms, E edges,
K = sum_i (lmax_i+1)^2 coefficients, K_M edge-frame coefficients, C = sphere_channels,
R resolutions, P sphere points, B systems)::

    graph      = generate_graph(data)                      # radius graph with PBC
    W          = rotation(edge_distance_vec)               # [E, nnz] block-sparse Wigner-D rows
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
* ``so2_impl`` ("factored"): the SO(2) convolution implementation ("escn" and "explicit":
  the same block computed edge by edge, kept as oracles);
* ``resolution``: as the reference (one int for both grid axes), or a [res_beta, res_alpha]
  pair; finer grids make the point-wise non-linearities closer to exactly equivariant;
* ``node_resolution`` (None = as ``resolution``): the node-update grid alone. Only the
  edge grid's ``res_alpha`` (the roll about the edge) matters for equivariance there, while
  the node grid sees every rotation and has far fewer points to pay for (N << E), so a
  fine node grid with a modest edge grid is the cheap way to an equivariant trained model;
* ``readout_grid`` (None): sample the output heads on an e3nn S2 grid ([res_beta,
  res_alpha]) with quadrature weights instead of the reference's ``num_sphere_samples``
  Fibonacci points; the force head is then equivariant to quadrature accuracy (the
  Fibonacci readout limits force equivariance to ~1e-1..1e-4 depending on P);
* ``grid_quadrature`` ("equiangular"): the polar rule of the node-update grid and of
  ``readout_grid``: e3nn's equiangular grid, or "gauss_legendre" with res_beta / 2 polar
  nodes, which integrates the same polynomial degree (aliasing measured equal) with half
  the points; the edge grid stays e3nn's;
* ``random_roll`` (False): draw a random roll of each edge frame per forward pass in
  training, as the reference always does; off by default so outputs are reproducible;
* ``random_grid_rotation`` (False): in training, turn the node-update grid (per layer) and
  the readout points by random rotations each step (see
  :class:`~escn_plugin.nn.node_update.NodeUpdate`), so the trained model cannot lean on
  the grids' aliasing and stays closer to equivariant; evaluation uses the fixed grids;
* ``recompute_node_grid`` (True): recompute the node-update grid activations in the
  backward instead of keeping them (memory for time; small models train ~30% faster with
  False);
* ``validate_inputs`` (True): clear errors for bad atomic numbers, positions, overlaps;
* ``compile_layers`` (False): ``torch.compile`` the interaction layers (dynamic shapes);
* ``inference_block_edges`` (None): without gradients, in evaluation, with direct forces
  (fairchem's validate, predict, relaxations), the layers and heads run in blocks of
  target atoms (:mod:`escn_plugin.nn.blocked`), so memory per atom stays flat; None sizes
  the blocks from a memory budget, a number caps a block's edges, 0 turns blocking off.

Energy-conserving mode (see :mod:`escn_plugin.model.energy_gradients`):

* ``direct_forces`` (True = the paper): False gives forces = -dE/dpos by autograd and
  builds no force head, so forces are the gradient of the returned energy;
* ``regress_stress`` (False): stress [B, 3, 3] (eV/A^3, ASE's sign) = dE/d(strain) / V,
  periodic systems only; needs ``direct_forces: False``;
* ``envelope_exponent`` (None): scale each edge's message by the polynomial envelope
  u(d / cutoff) of that exponent (value, slope and curvature zero at the cutoff), so the
  energy is smooth when neighbours enter or leave the cutoff sphere;
* ``enforce_max_neighbors_strictly`` (True, fairchem's default): False keeps every
  neighbour tied at the ``max_neighbors``-th distance (as eSEN configs do).

fairchem's EquiformerV2 heads: ``eqv2_heads`` (None = EquiformerV2's defaults) sets what
they read of the backbone, e.g. ``{num_heads: 4, ffn_hidden_channels: 64}``; see
:mod:`escn_plugin.fairchem_compat.eqv2_heads`.
"""

from __future__ import annotations

import dataclasses
import logging

import torch
from fairchem.core.models.base import BackboneInterface, GraphData, HeadInterface
from fairchem.core.models.gemnet.layers.radial_basis import PolynomialEnvelope
from fairchem.core.models.scn.sampling import CalcSpherePoints
from fairchem.core.models.scn.smearing import (
    GaussianSmearing,
    LinearSigmoidSmearing,
    SigmoidSmearing,
    SiLUSmearing,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from escn_plugin.common.default_dtype import constants
from escn_plugin.common.edge_groups import MessageEdges, message_edges
from escn_plugin.common.implementations import ROTATION_BACKENDS
from escn_plugin.fairchem_compat.eqv2_heads import EqV2HeadSupport
from escn_plugin.fairchem_compat.so3_embedding import as_so3_embedding
from escn_plugin.model.arguments import (
    argument_differences,
    check_arguments,
    check_num_layers,
    resolved_arguments,
)
from escn_plugin.model.energy_gradients import energy_gradients, strain_inputs
from escn_plugin.model.inputs import RadiusGraphMixin
from escn_plugin.nn import EnergyReadout, ForceReadout, InteractionLayer, MessageBlock, NodeUpdate
from escn_plugin.nn.blocked import (
    BlockPlan,
    InferenceMemory,
    block_edges,
    plan_blocks,
    run_blocked_layers,
    target_major_order,
)
from escn_plugin.so3.layout import CoefficientLayout
from escn_plugin.so3.projections import (
    EdgeGridActivation,
    node_grid_sampler,
    sphere_points_sampler,
)
from escn_plugin.so3.s2_grid import grid_resolution, quadrature_points
from escn_plugin.so3.wigner import RandomLayoutRotation, rotate_coefficients

__all__ = ["eSCN", "eSCNBackbone", "eSCNEnergyGradientHead", "eSCNEnergyHead", "eSCNForceHead"]

DISTANCE_FUNCTIONS = {
    "gaussian": GaussianSmearing,
    "sigmoid": SigmoidSmearing,
    "linearsigmoid": LinearSigmoidSmearing,
    "silu": SiLUSmearing,
}


def readout_points(
    num_sphere_samples: int,
    readout_grid: int | list[int] | None = None,
    quadrature: str = "equiangular",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Points ``[P, 3]`` and quadrature weights ``[P]`` (sum 1) for the output heads.

    Default: fairchem's density-weighted Fibonacci points with equal weights (the
    reference). With ``readout_grid``: e3nn's S2 grid and its quadrature weights, or with
    ``quadrature="gauss_legendre"`` a Gauss-Legendre grid of the same polynomial degree.
    """
    if readout_grid is None:
        with constants():
            points = CalcSpherePoints(num_sphere_samples)
        return points, torch.full((num_sphere_samples,), 1.0 / num_sphere_samples)
    res_beta, res_alpha = grid_resolution(0, 0, readout_grid, name="readout_grid")
    points, weights = quadrature_points(quadrature, res_beta, res_alpha)
    return points, weights / weights.sum()


class eSCNBackbone(nn.Module, RadiusGraphMixin, BackboneInterface, EqV2HeadSupport):
    """eSCN backbone: node embeddings and their values on sphere points.

    Returns ``{"sphere_coefficients": [N, K, C], "sphere_sampler": SphereSampler (values at
    the P points: [N, P, R*C], also as "sphere_values" on first access: see
    :class:`BackboneOutputs`), "sphere_points": [P, 3], "sphere_weights": [P],
    "node_embedding": SO3_Embedding, "graph": GraphData}``; ``node_embedding.embedding`` is
    the plain ``[N, K, C]`` tensor, wrapped (no copy) in fairchem's embedding object so that
    fairchem's own heads read it (:mod:`escn_plugin.fairchem_compat.so3_embedding`).
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
        lmax_list: int | list[int] | None = None,
        mmax_list: int | list[int] | None = None,
        sphere_channels: int = 128,
        hidden_channels: int = 256,
        edge_channels: int = 128,
        num_sphere_samples: int = 128,
        distance_function: str = "gaussian",
        basis_width_scalar: float = 1.0,
        distance_resolution: float = 0.02,
        show_timing_info: bool = False,
        resolution: int | list[int] | None = None,
        node_resolution: int | list[int] | None = None,
        activation_checkpoint: bool | None = False,
        rotation_backend: str = "polynomial",
        so2_impl: str = "factored",
        random_roll: bool = False,
        random_grid_rotation: bool = False,
        recompute_node_grid: bool = True,
        validate_inputs: bool = True,
        readout_grid: int | list[int] | None = None,
        grid_quadrature: str = "equiangular",
        compile_layers: bool = False,
        direct_forces: bool = True,
        regress_stress: bool = False,
        envelope_exponent: int | None = None,
        enforce_max_neighbors_strictly: bool = True,
        neighbor_search: str = "vesin",
        eqv2_heads: dict | None = None,
        inference_block_edges: int | None = None,
    ) -> None:
        super().__init__()
        config = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        lmax_list, mmax_list = check_arguments(config)  # every check: model/arguments.py
        self.arguments = resolved_arguments(config)  # stored with the weights
        if show_timing_info:
            logging.info("eSCN: show_timing_info is accepted for compatibility and ignored")

        # read by fairchem's GraphModelMixin.generate_graph and trainers
        self.use_pbc = use_pbc
        self.use_pbc_single = use_pbc_single
        self.regress_forces = regress_forces
        # False: forces = -dE/dpos (fairchem's conditional_grad reads this flag)
        self.direct_forces = bool(direct_forces)
        self.regress_stress = bool(regress_stress)
        self.enforce_max_neighbors_strictly = bool(enforce_max_neighbors_strictly)
        self.neighbor_search = neighbor_search  # read by the input stage
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
        self.random_grid_rotation = bool(random_grid_rotation)
        self.validate_inputs = validate_inputs
        self.act = nn.SiLU()  # read by fairchem's escn_energy_head / escn_force_head

        self.layout = CoefficientLayout(lmax_list, mmax_list)
        # constants (no parameters) on the CPU, whatever the ambient device: a build under
        # torch.device("meta") makes meta parameters only (fairchem's smearing calls .item())
        with torch.device("cpu"):
            self.rotation = ROTATION_BACKENDS.build(rotation_backend, self.layout)
            self.distance_expansion = DISTANCE_FUNCTIONS[distance_function](
                0.0, cutoff, int(cutoff / distance_resolution), basis_width_scalar
            )
            self.envelope = (
                None if envelope_exponent is None else PolynomialEnvelope(envelope_exponent)
            )
            edge_grid_act = EdgeGridActivation(self.layout, nn.SiLU(), resolution)
            node_grid = node_grid_sampler(
                self.layout,
                resolution if node_resolution is None else node_resolution,
                grid_quadrature,
            )
            points, weights = readout_points(num_sphere_samples, readout_grid, grid_quadrature)
            sphere_sampler = sphere_points_sampler(self.layout, points)
            # training only: readout points turned by a random rotation per step
            self.readout_rotation = (
                RandomLayoutRotation(lmax_list) if self.random_grid_rotation else None
            )
        self.atom_embedding = nn.Embedding(max_num_elements, self.sphere_channels_all)
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
                    scalar_input=i == 0,  # x holds only l = 0 before the first layer
                ),
                NodeUpdate(
                    node_grid,
                    sphere_channels,
                    random_rotation=random_grid_rotation,
                    recompute=recompute_node_grid,
                ),
            )
            for i in range(num_layers)
        )
        self.num_sphere_samples = points.shape[0]
        self.register_buffer("sphere_points", points, persistent=False)  # [P, 3]
        self.register_buffer("sphere_weights", weights, persistent=False)  # [P]
        self.sphere_sampler = sphere_sampler
        self._compiled_layers = (
            torch.compile(self.run_layers, dynamic=True) if compile_layers else None
        )
        # l = 0 coefficient of each resolution, in the full layout
        l0 = [self.layout.res_slice(i).start for i in range(self.num_resolutions)]
        self.register_buffer("l0_index", torch.tensor(l0), persistent=False)
        self.eqv2_heads = eqv2_heads  # settings only; their modules are built on first use
        self.inference_block_edges = inference_block_edges
        # sizes the blocks of blocked inference; the euler backend builds dense [K, K] D
        wigner = getattr(self.rotation, "wigner", None)  # WignerRows (polynomial backend)
        num_full = self.layout.num_full
        self.inference_memory = InferenceMemory.from_sizes(
            self.layout,
            sphere_channels,
            hidden_channels,
            edge_channels,
            self.distance_expansion.num_output,
            edge_grid_points=edge_grid_act.to_grid.shape[0],
            node_grid_points=node_grid.to_matrix.shape[0],
            readout_points=points.shape[0],
            wigner_rows=num_full if wigner is None else len(wigner.rows),
            wigner_points=num_full if wigner is None else wigner.points.shape[0],
            mean_degree=max_neighbors,
        )

    @property
    def num_layers(self) -> int:
        """Layers run by forward; setting it on a built model (fairchem's tests set
        ``model.num_layers = 1``) runs only the first ones, as in the reference."""
        return self.__dict__["_num_layers"]

    @num_layers.setter
    def num_layers(self, value: int) -> None:
        layers = self._modules.get("layers")
        built = len(layers) if layers is not None else value
        self.__dict__["_num_layers"] = check_num_layers(value, built)

    def get_extra_state(self) -> dict:
        """Saved in the state dict (``_extra_state``): the constructor's arguments."""
        return {"arguments": self.arguments}

    def set_extra_state(self, state: dict) -> None:
        """Loading a checkpoint: every argument that differs from the checkpoint's is
        named; an error where it changes the outputs, a log line where it cannot."""
        stored = state.get("arguments") if isinstance(state, dict) else None
        if stored is None:
            logging.warning("eSCN: the checkpoint stores no model arguments; not checked")
            return
        errors, notes = argument_differences(stored, self.arguments)
        if notes:
            logging.info("eSCN: loading a checkpoint with other " + "; ".join(notes))
        if errors:
            raise ValueError(
                "the checkpoint was trained with other model arguments than the config it is "
                "loaded with, which changes its outputs:\n  " + "\n  ".join(errors) + "\n"
                "Pass the run's own config (--config-yml of the training run, or the paper "
                "config for a converted official checkpoint), or fix these keys; to load the "
                "weights under new arguments on purpose, drop '_extra_state' from the state dict."
            )

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:  # noqa: ANN001
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )
        key = prefix + "_extra_state"
        if key in missing_keys:  # checkpoints written before arguments were stored
            missing_keys.remove(key)
            logging.warning("eSCN: the checkpoint stores no model arguments; not checked")

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
        wigner: MessageEdges,
        edge_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The interaction layers with their residuals: ``[N, K, C] -> [N, K, C]``.

        Free of data-dependent control flow, so ``torch.compile`` captures it whole
        (``compile_layers: True``); graph construction and input checks stay eager. Runs the
        first ``self.num_layers`` layers: as in the reference, lowering the attribute on a
        built model (fairchem's tests set ``model.num_layers = 1``) runs fewer layers.
        ``edge_weight [E]`` (the cutoff envelope) scales each message before aggregation.
        """
        for i in range(self.num_layers):
            layer = self.layers[i]
            args = (x, basis, atomic_numbers, edge_index, wigner, edge_weight)
            if self.activation_checkpoint and torch.is_grad_enabled():
                update = checkpoint(layer, *args, use_reentrant=False)
            else:
                update = layer(*args)
            x = update if i == 0 else x + update
        return x

    @property
    def uses_energy_gradients(self) -> bool:
        """Whether outputs are derivatives of the energy (forces and/or stress)."""
        return self.regress_stress or (self.regress_forces and not self.direct_forces)

    def forward(self, data) -> dict:
        """Embeddings (see the class docstring). With gradient forces or stress, positions
        (and a zero strain) are made differentiable first and ``"energy_gradient_inputs"``
        (:class:`~escn_plugin.model.energy_gradients.DifferentiableInputs`) is added; the graph is
        recorded even under ``torch.no_grad`` (fairchem's validate/predict/relaxations)."""
        if not self.uses_energy_gradients:
            return self.embed(data)
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            data, inputs = strain_inputs(data, self.regress_stress, create_graph)
            emb = self.embed(data, exact_edge_vectors=True)
        emb["energy_gradient_inputs"] = inputs
        return emb

    def edge_tensors(
        self,
        vec: torch.Tensor,
        distance: torch.Tensor,
        roll: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """What the layers read per edge, for ``vec [E, 3]``, ``distance [E]``: rotation
        rows ``[E, nnz]``, distance basis ``[E, num_basis]`` and the cutoff envelope
        ``[E]`` (None without ``envelope_exponent``), in ``dtype``."""
        wigner = self.rotation(vec, roll).to(dtype)  # [E, nnz]
        basis = self.distance_expansion(distance).to(dtype)  # [E, num_basis]
        if self.envelope is None:
            return wigner, basis, None
        return wigner, basis, self.envelope(distance / self.cutoff).to(dtype)

    def inference_plan(
        self, graph: GraphData, x: torch.Tensor
    ) -> tuple[GraphData, BlockPlan | None]:
        """The blocks of blocked inference (:mod:`escn_plugin.nn.blocked`), or None for one
        pass over the whole graph: with gradients (training, gradient forces), in training
        mode, with ``inference_block_edges: 0``, or where one block holds every edge.
        Blocks need target-major edges: the graph is returned sorted by target (stable)
        where it is blocked and was not (a precomputed graph may not be)."""
        if torch.is_grad_enabled() or self.training or self.inference_block_edges == 0:
            return graph, None
        num_nodes, num_edges = x.shape[0], graph.edge_index.shape[1]
        max_edges = self.inference_block_edges
        if max_edges is None:
            args = (num_nodes, num_edges, x.element_size(), x.device)
            max_edges = block_edges(self.inference_memory, *args)
        if max_edges >= num_edges:
            return graph, None
        order = target_major_order(graph.edge_index)  # None: already target-major
        if order is not None:
            fields = ("edge_distance", "edge_distance_vec", "cell_offsets", "offset_distances")
            edge_fields = {
                k: getattr(graph, k)[order]
                for k in fields
                if isinstance(getattr(graph, k, None), torch.Tensor)
            }
            graph = dataclasses.replace(graph, edge_index=graph.edge_index[:, order], **edge_fields)
        plan = plan_blocks(graph.edge_index, num_nodes, max_edges)
        return graph, (plan if len(plan.blocks) > 1 else None)

    def embed(self, data, exact_edge_vectors: bool = False) -> dict:
        """Atoms -> embeddings. ``exact_edge_vectors``: periodic edge vectors in the
        positions' dtype (fairchem rounds the periodic shifts to float32). Without
        gradients in evaluation the layers run in blocks of target atoms
        (:meth:`inference_plan`)."""
        atomic_numbers = data.atomic_numbers.long()
        graph = self.prepare_graph(data, exact_edge_vectors)  # checked, wrapped, exact
        x = self.embed_atoms(atomic_numbers)  # [N, K, C]
        graph, plan = self.inference_plan(graph, x)  # plan None: the whole graph at once
        vec, distance = graph.edge_distance_vec, graph.edge_distance  # [E, 3], [E]
        roll = self.edge_rolls(vec.shape[0], vec)  # [E] or None
        basis = None  # [E, num_basis]: the whole graph's, unless blocked
        if plan is None:
            wigner, basis, edge_weight = self.edge_tensors(vec, distance, roll, x.dtype)
            edges = message_edges(wigner, graph.edge_index, x.shape[0])
            run_layers = self._compiled_layers or self.run_layers
            x = run_layers(x, basis, atomic_numbers, graph.edge_index, edges, edge_weight)
        else:  # each block's edge tensors are made when it runs (no roll in evaluation)
            x = run_blocked_layers(
                self.layers[: self.num_layers],
                x,
                atomic_numbers,
                graph.edge_index,
                plan,
                lambda e: self.edge_tensors(vec[e], distance[e], None, x.dtype),
            )
            if getattr(self, "eqv2_modules", {}).get("SO3_rotation") is not None:
                basis = self.distance_expansion(distance).to(x.dtype)  # eqV2 heads read it
        sampled, points = x, self.sphere_points  # [N, K, C], [P, 3]
        if self.readout_rotation is not None and self.training:
            # readout points q_p = Q^T p: values there are those of D(Q) x at p
            rot, wigner_q = self.readout_rotation(x)  # [3, 3], [K, K]
            sampled = rotate_coefficients(wigner_q, x)
            points = (points.double() @ rot).to(points.dtype)
        return BackboneOutputs(
            sphere_coefficients=sampled,  # [N, K, C], read at the points by the heads
            sphere_sampler=self.sphere_sampler,
            sphere_points=points,
            sphere_weights=self.sphere_weights,
            node_embedding=as_so3_embedding(x, self.lmax_list),
            graph=self.eqv2_graph(graph, basis, roll),  # as is without eqV2 heads
            node_block=None if plan is None else plan.node_block,  # atoms per head block
        )


class BackboneOutputs(dict):
    """The backbone's outputs. ``"sphere_values"`` (``[N, P, R*C]``: the embeddings at the
    readout points, what fairchem's own ``escn_energy_head`` / ``escn_force_head`` read) is
    sampled on first access; our heads read the coefficients and never ask for it."""

    def __missing__(self, key: str) -> torch.Tensor:
        if key != "sphere_values":
            raise KeyError(key)
        values = self["sphere_sampler"](self["sphere_coefficients"])  # [N, P, R*C]
        self[key] = values
        return values


class _SystemSum(torch.autograd.Function):
    """``[N] -> [B]`` for contiguous systems of ``natoms [B]`` atoms: each system summed in
    atom order by ``segment_reduce``, so the sum is bit-reproducible on every device
    (``index_add`` on CUDA adds with atomics in whatever order threads arrive). The
    backward is a gather written in torch ops, hence differentiable again (gradient
    forces in training need the double backward, which ``segment_reduce`` lacks)."""

    @staticmethod
    def forward(ctx, per_atom: torch.Tensor, natoms: torch.Tensor, batch: torch.Tensor):  # noqa: ANN205
        ctx.save_for_backward(batch)
        return torch.segment_reduce(per_atom, "sum", lengths=natoms, unsafe=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN205
        (batch,) = ctx.saved_tensors
        return grad.index_select(0, batch), None, None


def _sum_per_system(
    per_atom: torch.Tensor, batch: torch.Tensor, natoms: torch.Tensor
) -> torch.Tensor:
    """Sum ``per_atom [N]`` into ``[B]`` over systems stored one after the other (``batch``
    sorted, as fairchem collates; the input checks enforce it); accumulates in float32 at
    least (safe under AMP)."""
    dtype = torch.promote_types(per_atom.dtype, torch.float32)
    return _SystemSum.apply(per_atom.to(dtype), natoms.to(device=per_atom.device), batch)


class eSCNEnergyHead(nn.Module, HeadInterface):
    """System energy: ``energy_scale * sum over atoms`` (reduce="sum"; 0.001 is the
    reference's scaling) or the per-atom mean (reduce="mean")."""

    def __init__(
        self, backbone: eSCNBackbone, reduce: str = "sum", energy_scale: float = 0.001
    ) -> None:
        super().__init__()
        if reduce not in ("sum", "mean"):
            raise ValueError(f"reduce must be 'sum' or 'mean', got '{reduce}'")
        self.reduce = reduce
        self.energy_scale = float(energy_scale)
        self.readout = EnergyReadout(backbone.sphere_channels_all)

    def forward(self, data, emb: dict) -> dict[str, torch.Tensor]:
        per_atom = self.readout(
            emb["sphere_coefficients"],
            emb["sphere_sampler"],
            emb["sphere_weights"],
            emb.get("node_block"),
        )  # [N]
        energy = _sum_per_system(per_atom, data.batch, data.natoms)
        if self.reduce == "sum":
            return {"energy": energy * self.energy_scale}
        return {"energy": energy / data.natoms.to(energy.dtype)}


class eSCNForceHead(nn.Module, HeadInterface):
    """Direct per-atom forces ``[N, 3]`` from the sphere values."""

    def __init__(self, backbone: eSCNBackbone) -> None:
        super().__init__()
        self.readout = ForceReadout(backbone.sphere_channels_all)

    def forward(self, data, emb: dict) -> dict[str, torch.Tensor]:
        x, sampler = emb["sphere_coefficients"], emb["sphere_sampler"]
        points, weights, block = emb["sphere_points"], emb["sphere_weights"], emb.get("node_block")
        return {"forces": self.readout(x, sampler, points, weights, block)}  # [N, 3]


class eSCNEnergyGradientHead(nn.Module, HeadInterface):
    """Energy ``[B]`` and its derivatives: forces = -dE/dpos ``[N, 3]`` (if the backbone's
    ``regress_forces``) and stress = dE/d(strain) / V ``[B, 3, 3]`` (if ``regress_stress``).

    Needs a backbone built with ``direct_forces: False``. One head returns all three, so use
    it with ``pass_through_head_outputs: True`` in fairchem's hydra model. ``energy_scale``
    as :class:`eSCNEnergyHead`; the conservative configs use 1.0 so that forces of order
    1 (normalised) do not need per-atom energies of order 1000.
    """

    def __init__(
        self, backbone: eSCNBackbone, reduce: str = "sum", energy_scale: float = 0.001
    ) -> None:
        super().__init__()
        if not backbone.uses_energy_gradients:
            raise ValueError(
                "eSCNEnergyGradientHead needs a backbone with direct_forces: False (and "
                "regress_forces: True and/or regress_stress: True)"
            )
        self.energy = eSCNEnergyHead(backbone, reduce, energy_scale)
        self.forces = backbone.regress_forces
        self.stress = backbone.regress_stress

    def forward(self, data, emb: dict) -> dict[str, torch.Tensor]:
        inputs = emb["energy_gradient_inputs"]
        with torch.enable_grad():  # also under fairchem's no_grad validate/predict
            outputs = self.energy(data, emb)
            outputs.update(energy_gradients(outputs["energy"], inputs, self.forces, self.stress))
        if not inputs.create_graph:
            outputs["energy"] = outputs["energy"].detach()
        return outputs


class eSCN(eSCNBackbone):
    """The plain eSCN model: ``forward(batch) -> {"energy": [B], "forces": [N, 3]}`` and,
    with ``regress_stress``, ``"stress": [B, 3, 3]``. Forces come from a head (the paper) or,
    with ``direct_forces: False``, are -dE/dpos. ``energy_scale`` (0.001, the reference's)
    multiplies the sum of per-atom energies."""

    def __init__(self, *args, energy_scale: float = 0.001, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.uses_energy_gradients:
            self.energy_head = eSCNEnergyGradientHead(self, energy_scale=energy_scale)
            self.force_head = None
        else:
            self.energy_head = eSCNEnergyHead(self, energy_scale=energy_scale)
            self.force_head = eSCNForceHead(self) if self.regress_forces else None

    def forward(self, data) -> dict[str, torch.Tensor]:
        emb = super().forward(data)
        outputs = self.energy_head(data, emb)
        if self.force_head is not None:
            outputs.update(self.force_head(data, emb))
        return outputs
