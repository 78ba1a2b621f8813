"""Edge frames: R unit(v) = +y for every direction, determinism, and finite, correct
gradients of roll-invariant quantities everywhere (incl. edges along and near +-y)."""

from __future__ import annotations

import math

import pytest
import torch
from e3nn import o3

from escn_plugin.so2 import so2_linear
from escn_plugin.so3 import CoefficientLayout, EdgeRotation, edge_frame, roll_about_y, wigner_d

F64 = torch.float64
Y_AXIS = torch.tensor([0.0, 1.0, 0.0], dtype=F64)


def _axis_vectors() -> torch.Tensor:
    eye = torch.eye(3, dtype=F64)
    return torch.cat([eye, -eye]) * 1.7  # +-x, +-y, +-z, not unit length


def _near_y_vectors(eps: float = 1e-7) -> torch.Tensor:
    """Edges within ``eps`` of +y and -y, tilted in several directions."""
    tilts = torch.tensor(
        [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, -1.0], [-0.3, 0.0, 0.8]], dtype=F64
    )
    out = [sign * Y_AXIS + eps * t for sign in (1.0, -1.0) for t in tilts]
    return torch.stack(out) * 2.3


def _random_vectors(n: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, dtype=F64, generator=gen) * 3.0


def _all_vectors() -> torch.Tensor:
    return torch.cat([_random_vectors(), _axis_vectors(), _near_y_vectors()])


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True)


@pytest.mark.parametrize(
    "vectors",
    [_random_vectors(), _axis_vectors(), _near_y_vectors()],
    ids=["random", "axes", "near_y"],
)
def test_frame_sends_edge_to_y(vectors: torch.Tensor) -> None:
    rot = edge_frame(vectors)
    assert rot.shape == (len(vectors), 3, 3)
    assert (rot @ _unit(vectors).unsqueeze(-1)).squeeze(-1).sub(Y_AXIS).abs().max() <= 1e-14
    eye = torch.eye(3, dtype=F64)
    assert (rot @ rot.transpose(-1, -2) - eye).abs().max() <= 1e-14
    assert (torch.linalg.det(rot) - 1.0).abs().max() <= 1e-14
    assert torch.isfinite(rot).all()


def test_frame_is_deterministic() -> None:
    vectors = _all_vectors()
    assert torch.equal(edge_frame(vectors), edge_frame(vectors.clone()))


def test_frame_float32() -> None:
    vectors = _all_vectors().float()
    rot = edge_frame(vectors)
    assert rot.dtype == torch.float32
    assert (rot @ _unit(vectors).unsqueeze(-1)).squeeze(-1).sub(Y_AXIS.float()).abs().max() <= 1e-6


def test_frame_bad_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"\[E, 3\]"):
        edge_frame(torch.ones(3, dtype=F64))


def test_roll_keeps_edge_on_y() -> None:
    vectors = _all_vectors()
    gen = torch.Generator().manual_seed(1)
    roll = torch.rand(len(vectors), dtype=F64, generator=gen) * 2 * math.pi
    rot = edge_frame(vectors, roll)
    plain = edge_frame(vectors)
    assert (rot @ _unit(vectors).unsqueeze(-1)).squeeze(-1).sub(Y_AXIS).abs().max() <= 1e-14
    assert (rot - roll_about_y(roll) @ plain).abs().max() <= 1e-15
    assert (rot - plain).abs().max() > 1e-2  # the roll really changes the frame
    assert (torch.linalg.det(rot) - 1.0).abs().max() <= 1e-14


@pytest.mark.parametrize("lmax", [1, 3, 6])
def test_rotated_harmonics_only_m0(lmax: int) -> None:
    """In the edge frame Y(r̂) becomes Y(+y): non-zero only at m = 0."""
    vectors = _all_vectors()
    ls = list(range(lmax + 1))
    d = wigner_d(edge_frame(vectors), lmax)  # [E, K, K]
    y_frame = torch.einsum("ekj,ej->ek", d, o3.spherical_harmonics(ls, vectors, normalize=True))
    m0 = torch.tensor([l * l + l for l in ls])
    off = torch.ones(y_frame.shape[-1], dtype=torch.bool)
    off[m0] = False
    assert y_frame[:, off].abs().max() <= 1e-10
    y_pole = o3.spherical_harmonics(ls, Y_AXIS, normalize=True)
    assert (y_frame - y_pole).abs().max() <= 1e-10


# -- gradients ---------------------------------------------------------------------------


def _so2_weights(layout: CoefficientLayout, channels: int, seed: int) -> list:
    """Fixed random SO(2) weights (shared by all edges) for :func:`so2_linear`."""
    gen = torch.Generator().manual_seed(seed)
    weights = []
    for m, n_m in enumerate(layout.m_size):
        size = n_m * channels
        w_r = torch.randn(1, size, size, dtype=F64, generator=gen) / size
        w_i = None if m == 0 else torch.randn(1, size, size, dtype=F64, generator=gen) / size
        weights.append((w_r, w_i))
    return weights


def _roll_invariant_energy(
    layout: CoefficientLayout, x: torch.Tensor, probe: torch.Tensor, weights: list
):
    """v [E, 3] -> scalar: sum_e <probe_e, W_e^T S W_e x_e> with S an SO(2)-equivariant map.

    S commutes with rolls about +y, so the result does not depend on the edge frame's roll
    (and thus not on which chart built the frame): a smooth function of the edge vectors.
    """
    rotation = EdgeRotation(layout)

    def energy(vectors: torch.Tensor, roll: torch.Tensor | None = None) -> torch.Tensor:
        num_edges = vectors.shape[0]
        w = rotation.to_dense(rotation(vectors, roll))  # [E, K_M, K]
        expanded = [
            (w_r.expand(num_edges, -1, -1), None if w_i is None else w_i.expand(num_edges, -1, -1))
            for w_r, w_i in weights
        ]
        y = so2_linear(w @ x, layout, expanded)  # [E, K_M, C]
        out = w.transpose(-1, -2) @ y  # [E, K, C]
        return (out * probe).sum() + (out**2).sum() * 0.1

    return energy


def _energy_setup(lmax: int, mmax: int, num_edges: int, seed: int = 3):
    layout = CoefficientLayout([lmax], [mmax])
    channels = 2
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_edges, layout.num_full, channels, dtype=F64, generator=gen)
    probe = torch.randn(num_edges, layout.num_full, channels, dtype=F64, generator=gen)
    return _roll_invariant_energy(layout, x, probe, _so2_weights(layout, channels, seed))


def test_energy_is_roll_invariant() -> None:
    """Sanity check of the helper: same value for any roll (so it is chart independent)."""
    vectors = _all_vectors()
    energy = _energy_setup(4, 2, len(vectors))
    gen = torch.Generator().manual_seed(4)
    roll = torch.rand(len(vectors), dtype=F64, generator=gen) * 2 * math.pi
    e0, e1 = energy(vectors), energy(vectors, roll)
    assert (e0 - e1).abs() <= 1e-10 * e0.abs().clamp(min=1.0)


def test_gradients_finite_axis_and_near_y() -> None:
    """Raw frame + Wigner-D (not roll invariant) still have finite gradients everywhere."""
    vectors = torch.cat([_axis_vectors(), _near_y_vectors()]).requires_grad_(True)
    lmax = 6
    d = wigner_d(edge_frame(vectors), lmax)
    gen = torch.Generator().manual_seed(5)
    (d * torch.randn(d.shape, dtype=F64, generator=gen)).sum().backward()
    assert torch.isfinite(vectors.grad).all()
    assert vectors.grad.abs().max() > 0


def test_energy_gradients_finite_axis_and_near_y() -> None:
    vectors = torch.cat([_axis_vectors(), _near_y_vectors()]).requires_grad_(True)
    energy = _energy_setup(4, 2, len(vectors))
    energy(vectors).backward()
    assert torch.isfinite(vectors.grad).all()


@pytest.mark.parametrize(("lmax", "mmax"), [(3, 3), (4, 2)])
def test_gradcheck_generic(lmax: int, mmax: int) -> None:
    vectors = _random_vectors(4, seed=6).requires_grad_(True)
    energy = _energy_setup(lmax, mmax, len(vectors))
    assert torch.autograd.gradcheck(energy, (vectors,), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_gradient_near_pole_matches_finite_differences(sign: float) -> None:
    """1e-7 off +-y: autograd gradient == central differences with a 1e-4 step.

    The finite-difference points lie 1e-4 away, where the frame comes from other charts
    (the helper axis flips between x and z): the agreement shows that the roll-invariant
    energy and its gradient are continuous across charts and at the pole.
    """
    base = sign * 2.0 * Y_AXIS + 1e-7 * torch.tensor([1.0, 0.0, 0.7], dtype=F64)
    helper_axes = {
        int(_unit(base + d).abs().argmin())
        for d in 1e-4 * torch.cat([torch.eye(3, dtype=F64), -torch.eye(3, dtype=F64)])
    }
    assert helper_axes == {0, 2}  # the stencil really spans two charts

    energy = _energy_setup(4, 2, 1)
    vectors = base[None].clone().requires_grad_(True)
    energy(vectors).backward()
    grad = vectors.grad[0]
    assert torch.isfinite(grad).all()
    assert grad.abs().max() > 1e-2  # a non-trivial gradient to compare

    step = 1e-4
    fd = torch.stack(
        [
            (energy((base + step * e)[None]) - energy((base - step * e)[None])) / (2 * step)
            for e in torch.eye(3, dtype=F64)
        ]
    )
    assert (grad - fd).abs().max() <= 1e-6 * max(1.0, grad.abs().max().item())

    # and the gradient is continuous: exactly on the axis and 1e-3 away it barely moves
    on_axis = (sign * 2.0 * Y_AXIS)[None].clone().requires_grad_(True)
    energy(on_axis).backward()
    assert (on_axis.grad[0] - grad).abs().max() <= 1e-5 * max(1.0, grad.abs().max().item())
