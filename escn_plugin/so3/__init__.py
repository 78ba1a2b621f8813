"""SO(3) side of eSCN: Wigner-D, edge frames, coefficient layouts, S2 grids, rotations.

Conventions (all modules): e3nn's real spherical harmonics, m = -l..l inside each degree,
polar axis +y; ``D(R)`` satisfies ``Y(R r) = D(R) Y(r)``; an edge frame R sends the edge
direction to +y.
"""

from escn_plugin.so3.edge_frame import edge_frame, roll_about_y
from escn_plugin.so3.layout import Coefficient, CoefficientLayout
from escn_plugin.so3.projections import (
    EdgeGridActivation,
    SphereSampler,
    node_grid_sampler,
    sphere_points_sampler,
)
from escn_plugin.so3.rotation import EdgeRotation, EulerEdgeRotation
from escn_plugin.so3.s2_grid import grid_resolution, s2_grid_matrices
from escn_plugin.so3.wigner import MAX_LMAX, WignerD, fibonacci_sphere, wigner_d

__all__ = [
    "MAX_LMAX",
    "Coefficient",
    "CoefficientLayout",
    "EdgeGridActivation",
    "EdgeRotation",
    "EulerEdgeRotation",
    "SphereSampler",
    "WignerD",
    "edge_frame",
    "fibonacci_sphere",
    "grid_resolution",
    "node_grid_sampler",
    "roll_about_y",
    "s2_grid_matrices",
    "sphere_points_sampler",
    "wigner_d",
]
