"""Real Wigner-D from rotation matrices: e3nn oracle, group identities, conditioning.

Convention (docs/design.md §1): Y^l(R r) = D^l(R) Y^l(r), e3nn real SH, polar axis +y.
"""

from __future__ import annotations

import pytest
import torch
from e3nn import o3

from escn_plugin.common.default_dtype import default_dtype
from escn_plugin.so3 import MAX_LMAX, WignerD, wigner_d
from escn_plugin.so3.wigner import WignerRows, _right_inverses, _sampling_points

F64 = torch.float64


def _e3nn_d(l: int, rot: torch.Tensor) -> torch.Tensor:
    with default_dtype(F64):
        return o3.Irreps(f"1x{l}e").D_from_matrix(rot)


def _rand_rot(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    torch.manual_seed(seed)
    return o3.rand_matrix(*shape, dtype=dtype)


def _e3nn_block_diag(rot: torch.Tensor, lmax: int) -> torch.Tensor:
    irreps = o3.Irreps([(1, (l, 1)) for l in range(lmax + 1)])
    with default_dtype(F64):
        return irreps.D_from_matrix(rot)


def test_matches_e3nn_every_degree() -> None:
    """Every l <= 10, on random rotations: max |ours - e3nn| <= 1e-9; off-degree blocks 0."""
    lmax = 10
    rot = _rand_rot(6, seed=0)
    ours = wigner_d(rot, lmax)  # [6, K, K]
    assert ours.shape == (6, (lmax + 1) ** 2, (lmax + 1) ** 2)
    for l in range(lmax + 1):
        block = slice(l * l, (l + 1) ** 2)
        assert (ours[:, block, block] - _e3nn_d(l, rot)).abs().max() <= 1e-9, l
        assert ours[:, block, (l + 1) ** 2 :].count_nonzero() == 0
        assert ours[:, (l + 1) ** 2 :, block].count_nonzero() == 0


def test_block_diagonal_matches_e3nn() -> None:
    lmax = 4
    rot = _rand_rot(5, seed=1)
    assert (wigner_d(rot, lmax) - _e3nn_block_diag(rot, lmax)).abs().max() <= 1e-9


def test_orthogonal() -> None:
    lmax = 8
    d = wigner_d(_rand_rot(6, seed=2), lmax)
    eye = torch.eye((lmax + 1) ** 2, dtype=F64)
    assert (d @ d.transpose(-1, -2) - eye).abs().max() <= 1e-10
    assert (d.transpose(-1, -2) @ d - eye).abs().max() <= 1e-10


def test_composition() -> None:
    lmax = 8
    r1, r2 = _rand_rot(6, seed=3), _rand_rot(6, seed=4)
    lhs = wigner_d(r1 @ r2, lmax)
    rhs = wigner_d(r1, lmax) @ wigner_d(r2, lmax)
    assert (lhs - rhs).abs().max() <= 1e-9


def test_identity_rotation() -> None:
    lmax = 6
    d = wigner_d(torch.eye(3, dtype=F64), lmax)
    assert (d - torch.eye((lmax + 1) ** 2, dtype=F64)).abs().max() <= 1e-12


def test_rotates_spherical_harmonics() -> None:
    lmax = 10
    rot = _rand_rot(4, seed=5)
    torch.manual_seed(6)
    r = torch.randn(4, 7, 3, dtype=F64)
    ls = list(range(lmax + 1))
    y = o3.spherical_harmonics(ls, r, normalize=True)  # [4, 7, K]
    y_rot = o3.spherical_harmonics(ls, torch.einsum("bij,bpj->bpi", rot, r), normalize=True)
    d = wigner_d(rot, lmax)  # [4, K, K]
    pred = torch.einsum("bkj,bpj->bpk", d, y)
    assert (pred - y_rot).abs().max() <= 1e-9
    assert (y_rot - y).abs().max() > 1e-2  # the rotation really moves the harmonics


def test_float32() -> None:
    lmax = 8
    rot64 = _rand_rot(10, seed=7)
    d32 = wigner_d(rot64.float(), lmax)
    assert d32.dtype == torch.float32
    assert (d32.double() - wigner_d(rot64, lmax)).abs().max() <= 1e-5
    l = 3  # and directly against the oracle
    block = slice(l * l, (l + 1) ** 2)
    assert (d32[:, block, block].double() - _e3nn_d(l, rot64)).abs().max() <= 1e-5


@pytest.mark.parametrize("shape", [(), (4,), (2, 3), (2, 1, 3)])
def test_batched_shapes(shape: tuple[int, ...]) -> None:
    lmax = 3
    num = 1
    for s in shape:
        num *= s
    flat = _rand_rot(num, seed=8)
    rot = flat.reshape(*shape, 3, 3)
    d = wigner_d(rot, lmax)
    assert d.shape == (*shape, 16, 16)
    assert (d.reshape(num, 16, 16) - wigner_d(flat, lmax)).abs().max() <= 1e-13


def test_bad_shape_raises() -> None:
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, 3\]"):
        wigner_d(torch.eye(4, dtype=F64), 2)


def test_row_subset_module() -> None:
    lmax = 4
    rows = torch.tensor([0, 2, 6, 7, 5, 24])
    rot = _rand_rot(3, seed=9)
    full = wigner_d(rot, lmax)
    sub = WignerD(lmax, rows=rows)(rot)
    assert sub.shape == (3, 6, 25)
    assert (sub - full[:, rows]).abs().max() <= 1e-13


@pytest.mark.parametrize("lmax", range(MAX_LMAX + 1))
def test_sampling_matrices_well_conditioned(lmax: int) -> None:
    points = _sampling_points(lmax)
    assert torch.allclose(points.norm(dim=-1), torch.ones(len(points), dtype=F64))
    _, right_inverse = _right_inverses(lmax)
    for l in range(lmax + 1):
        a_l = o3.spherical_harmonics(l, points, normalize=False).T  # [2l+1, N]
        assert torch.linalg.cond(a_l) <= 6.0, (lmax, l)
        b_l = right_inverse[:, l * l : (l + 1) ** 2]  # [N, 2l+1]
        assert (a_l @ b_l - torch.eye(2 * l + 1, dtype=F64)).abs().max() <= 1e-12


def test_max_lmax_is_accurate() -> None:
    rot = _rand_rot(3, seed=10)
    d = wigner_d(rot, MAX_LMAX)
    l = MAX_LMAX
    ref = _e3nn_d(l, rot)
    assert (d[:, l * l :, l * l :] - ref).abs().max() <= 1e-9


@pytest.mark.parametrize("lmax", [MAX_LMAX + 1, 20, -1])
def test_lmax_out_of_range_raises(lmax: int) -> None:
    with pytest.raises(ValueError, match="lmax must be in"):
        wigner_d(torch.eye(3, dtype=F64), lmax)


@pytest.mark.parametrize(("lmax", "mmax"), [(0, 0), (4, 4), (6, 2), (11, 3)])
def test_rows_match_full_wigner_d(lmax: int, mmax: int) -> None:
    """The |m| <= mmax fast path equals the matching entries of the full D (float64)."""
    rot = _rand_rot(5, seed=2)
    rows = WignerRows(lmax, mmax)
    out = rows(rot)  # [5, entries]
    full = wigner_d(rot, lmax)
    entries = [(l, m, k) for l in range(lmax + 1) for m in range(-min(l, mmax), min(l, mmax) + 1)
               for k in range(-l, l + 1)]  # fmt: skip
    assert out.shape == (5, len(entries))
    expected = torch.stack([full[:, l * l + l + m, l * l + l + k] for l, m, k in entries], 1)
    assert (out - expected).abs().max() <= 1e-11
    # float32 stays at float32 accuracy
    assert (rows(rot.float()).double() - expected).abs().max() <= 2e-5


def test_rows_reject_entries_outside_the_rows() -> None:
    with pytest.raises(ValueError, match="not in the rows"):
        WignerRows(3, 1, entries=[(2, 2, 0)])
