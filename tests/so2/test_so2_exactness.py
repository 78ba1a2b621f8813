"""The central identity of eSCN (docs/design.md §2): an SO(3) tensor-product convolution equals
rotate-into-edge-frame -> SO(2) convolution with mapped weights -> rotate back, to float64
round-off.

Oracle. For every path (li, lf, lo) with li, lf, lo <= L and |li - lf| <= lo <= li + lf
(both parities of li + lf + lo) and every channel c,

    m_c^(lo)[mo] = sum_paths w_{li,lf,lo,c}(|r|)
                   * sum_{mi,mf} C[mi, mf, mo] x_c^(li)[mi] Y^(lf)[mf](r̂)

with C = ``e3nn.o3.wigner_3j(li, lf, lo)`` (shape [2li+1, 2lf+1, 2lo+1]) and
Y = ``e3nn.o3.spherical_harmonics(lf, r, normalize=True)``. It is computed twice: with
e3nn's own ``o3.TensorProduct`` ("uvu", per-edge weights, no normalisation) and with a
plain einsum over ``wigner_3j``; both must agree. (Most of this file's run time is e3nn
computing wigner_3j for L <= 6 once; it caches them.)

SO(2) route. x̃ = W x with W = ``EdgeRotation(CoefficientLayout([L], [L]))(r)``. In the
edge frame r̂ = +y, where Y^(lf) is non-zero only at mf = 0, so for m >= 0 and every pair
(li, lo) with li, lo >= m

    w̃_{+m}^{li,lo} = sum_lf w_{li,lf,lo} C[li+m, lf, lo+m] Y^(lf)_0(+y)     (+m -> +m)
    w̃_{-m}^{li,lo} = sum_lf w_{li,lf,lo} C[li+m, lf, lo-m] Y^(lf)_0(+y)     (+m -> -m)

(indices are positions l + m inside a degree), and ``so2_linear`` computes
y_{+m} = w̃_+ x_{+m} - w̃_- x_{-m}, y_{-m} = w̃_- x_{+m} + w̃_+ x_{-m}; finally m = W^T ỹ.
In e3nn's real basis C[li-m, lf, lo-m] = C[li+m, lf, lo+m] and
C[li-m, lf, lo+m] = -C[li+m, lf, lo-m] (checked below), which is what makes it a complex
product; even paths feed only w̃_+ (and m = 0), odd paths only w̃_-.
"""

from __future__ import annotations

from functools import cache

import pytest
import torch
from e3nn import o3

from escn_plugin.common.default_dtype import default_dtype
from escn_plugin.so2 import so2_conv, so2_linear
from escn_plugin.so3 import CoefficientLayout, EdgeRotation

F64 = torch.float64
CHANNELS = 3
NUM_EDGES = 4
NUM_RADIAL = 4


def _paths(lmax: int) -> list[tuple[int, int, int]]:
    return [
        (li, lf, lo)
        for li in range(lmax + 1)
        for lf in range(lmax + 1)
        for lo in range(abs(li - lf), min(li + lf, lmax) + 1)
    ]


@cache
def _w3j(li: int, lf: int, lo: int) -> torch.Tensor:
    return o3.wigner_3j(li, lf, lo, dtype=F64)  # [2li+1, 2lf+1, 2lo+1]


def _amax(t: torch.Tensor) -> float:
    """max |t|, 0 for an empty tensor."""
    return t.abs().max().item() if t.numel() else 0.0


def _block(l: int) -> slice:
    return slice(l * l, (l + 1) ** 2)


class Problem:
    """Random edges, node coefficients and radial path weights for one L."""

    def __init__(self, lmax: int, vectors: torch.Tensor | None = None, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed + 100 * lmax)
        self.lmax = lmax
        self.paths = _paths(lmax)
        if vectors is None:
            direction = torch.randn(NUM_EDGES, 3, dtype=F64, generator=gen)
            length = 1.0 + 2.0 * torch.rand(NUM_EDGES, 1, dtype=F64, generator=gen)
            vectors = direction / direction.norm(dim=-1, keepdim=True) * length
        self.vectors = vectors  # [E, 3]
        num_edges = len(vectors)
        self.x = torch.randn(num_edges, (lmax + 1) ** 2, CHANNELS, dtype=F64, generator=gen)
        # radial weights w[e, path, c] = sum_k A[path, c, k] exp(-(|r_e| - mu_k)^2 / 0.5)
        coeff = torch.randn(len(self.paths), CHANNELS, NUM_RADIAL, dtype=F64, generator=gen)
        centers = torch.linspace(0.5, 3.5, NUM_RADIAL, dtype=F64)
        basis = torch.exp(-((vectors.norm(dim=-1, keepdim=True) - centers) ** 2) / 0.5)
        self.weights = torch.einsum("pck,ek->epc", coeff, basis)  # [E, P, C]

    # -- SO(3) oracles -----------------------------------------------------------------
    def so3_einsum(self) -> torch.Tensor:
        """``[E, K, C]`` message, direct sum over paths of wigner_3j contractions."""
        ls = list(range(self.lmax + 1))
        sh = o3.spherical_harmonics(ls, self.vectors, normalize=True)  # [E, K]
        out = torch.zeros_like(self.x)
        for p, (li, lf, lo) in enumerate(self.paths):
            term = torch.einsum(
                "ijk,eic,ej->ekc", _w3j(li, lf, lo), self.x[:, _block(li)], sh[:, _block(lf)]
            )
            out[:, _block(lo)] += self.weights[:, p, None, :] * term
        return out

    def so3_tensor_product(self) -> torch.Tensor:
        """The same message with e3nn's ``o3.TensorProduct`` ("uvu", per-edge weights).

        Parities: x^(l) and Y^(l) get parity (-1)^l, so path (li, lf, lo) lands on the
        output irrep (lo, (-1)^(li+lf)); both output parities of each lo are summed.
        """
        tp, irreps_x, irreps_out = _tensor_product(self.lmax)
        num_edges = len(self.vectors)
        x_flat = torch.cat(
            [
                self.x[:, _block(l)].transpose(1, 2).reshape(num_edges, -1)
                for l in range(self.lmax + 1)
            ],
            dim=1,
        )  # e3nn layout: per irrep [mul, 2l+1]
        assert x_flat.shape[1] == irreps_x.dim
        sh = o3.spherical_harmonics(list(range(self.lmax + 1)), self.vectors, normalize=True)
        weight = self.weights.reshape(num_edges, -1)  # instruction order == path order
        assert weight.shape[1] == tp.weight_numel
        out_flat = tp(x_flat, sh, weight)  # [E, irreps_out.dim]
        out = torch.zeros_like(self.x)
        for (mul, ir), sl in zip(irreps_out, irreps_out.slices()):
            chunk = out_flat[:, sl].reshape(num_edges, mul, ir.dim).transpose(1, 2)
            out[:, _block(ir.l)] += chunk
        return out

    # -- SO(2) route ---------------------------------------------------------------------
    def mapped_weights(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """w̃_{+m}, w̃_{-m} as ``[E, n_m (lo), n_m (li), C]`` for m = 0..L."""
        lmax = self.lmax
        pole = torch.tensor([0.0, 1.0, 0.0], dtype=F64)
        y0 = [o3.spherical_harmonics(lf, pole, normalize=True)[lf] for lf in range(lmax + 1)]
        num_edges = len(self.vectors)
        w_plus, w_minus = [], []
        for m in range(lmax + 1):
            n_m = lmax - m + 1
            plus = torch.zeros(num_edges, n_m, n_m, CHANNELS, dtype=F64)
            minus = torch.zeros_like(plus)
            for p, (li, lf, lo) in enumerate(self.paths):
                if li < m or lo < m:
                    continue
                cg = _w3j(li, lf, lo)
                w = self.weights[:, p] * y0[lf]  # [E, C]
                plus[:, lo - m, li - m] += w * cg[li + m, lf, lo + m]
                if m > 0:
                    minus[:, lo - m, li - m] += w * cg[li + m, lf, lo - m]
            w_plus.append(plus)
            w_minus.append(minus)
        return w_plus, w_minus

    def so2(
        self,
        w_plus: list[torch.Tensor] | None = None,
        w_minus: list[torch.Tensor] | None = None,
        transpose_back: bool = True,
    ) -> torch.Tensor:
        """``[E, K, C]``: W^T so2_linear(W x) with the mapped weights."""
        layout = CoefficientLayout([self.lmax], [self.lmax])
        if w_plus is None:
            w_plus, w_minus = self.mapped_weights()
        rotation = EdgeRotation(layout)
        rot = rotation.to_dense(rotation(self.vectors))  # [E, K_M, K] (K_M = K for M = L)
        x_frame = rot @ self.x  # [E, K_M, C]
        weights = []
        for m in range(self.lmax + 1):
            w_r = _dense_channel_diagonal(w_plus[m])
            w_i = None if m == 0 else _dense_channel_diagonal(w_minus[m])
            weights.append((w_r, w_i))
        y_frame = so2_linear(x_frame, layout, weights)
        back = rot.transpose(-1, -2) if transpose_back else rot
        return back @ y_frame  # [E, K, C]


@cache
def _tensor_product(lmax: int) -> tuple[o3.TensorProduct, o3.Irreps, o3.Irreps]:
    def parity(l: int) -> int:
        return 1 if l % 2 == 0 else -1

    irreps_x = o3.Irreps([(CHANNELS, (l, parity(l))) for l in range(lmax + 1)])
    irreps_sh = o3.Irreps([(1, (l, parity(l))) for l in range(lmax + 1)])
    irreps_out = o3.Irreps([(CHANNELS, (lo, p)) for lo in range(lmax + 1) for p in (1, -1)])
    instructions = [
        (li, lf, 2 * lo + (0 if parity(li) * parity(lf) == 1 else 1), "uvu", True)
        for li, lf, lo in _paths(lmax)
    ]
    # TensorProduct stores its wigner_3j in the default dtype: build it under float64 so the
    # oracle is float64-exact (a float32 build is only good to ~1e-8 here)
    with default_dtype(F64):
        tp = o3.TensorProduct(
            irreps_x,
            irreps_sh,
            irreps_out,
            instructions,
            irrep_normalization="none",
            path_normalization="none",
            internal_weights=False,
            shared_weights=False,
            _specialized_code=False,  # same maths, much faster to build for L = 6
            _optimize_einsums=False,
        )
    return tp, irreps_x, irreps_out


def _dense_channel_diagonal(w: torch.Tensor) -> torch.Tensor:
    """``[E, n, n, C]`` (lo, li, c) -> ``[E, n C, n C]`` acting on degree-major,
    channel-minor vectors, diagonal in the channel."""
    num_edges, n, _, channels = w.shape
    eye = torch.eye(channels, dtype=w.dtype)
    return torch.einsum("eoic,cd->eocid", w, eye).reshape(num_edges, n * channels, n * channels)


# -- the identities the mapping relies on ---------------------------------------------------


def test_wigner_3j_pole_relations() -> None:
    """At mf = 0: C[mi, mo] = 0 unless |mi| = |mo|; C[li-m, lf, lo-m] = C[li+m, lf, lo+m];
    C[li-m, lf, lo+m] = -C[li+m, lf, lo-m]; even paths have no +m -> -m part, odd paths no
    +m -> +m (nor m = 0) part."""
    for li, lf, lo in _paths(6):
        cg = _w3j(li, lf, lo)[:, lf, :]  # [2li+1, 2lo+1] at mf = 0
        mi = torch.arange(-li, li + 1)[:, None]
        mo = torch.arange(-lo, lo + 1)[None, :]
        assert _amax(cg[mi.abs() != mo.abs()]) <= 1e-12
        n = min(li, lo)
        m = torch.arange(1, n + 1)
        same = cg[li + m, lo + m]  # +m -> +m
        cross = cg[li + m, lo - m]  # +m -> -m
        assert _amax(cg[li - m, lo - m] - same) <= 1e-12
        assert _amax(cg[li - m, lo + m] + cross) <= 1e-12
        if (li + lf + lo) % 2 == 0:
            assert _amax(cross) <= 1e-12
        else:
            assert _amax(same) <= 1e-12 and cg[li, lo].abs() <= 1e-12


@pytest.mark.parametrize("lmax", [3, 6])
def test_even_paths_feed_plus_odd_paths_feed_minus(lmax: int) -> None:
    """Split the paths by parity: the mapped w̃_- of even paths and w̃_+ of odd paths vanish."""
    problem = Problem(lmax)
    odd = torch.tensor([(li + lf + lo) % 2 == 1 for li, lf, lo in problem.paths])
    full = problem.weights.clone()
    for keep_odd in (False, True):
        problem.weights = full * (odd == keep_odd)[None, :, None]
        w_plus, w_minus = problem.mapped_weights()
        silent, active = (w_plus, w_minus) if keep_odd else (w_minus[1:], w_plus)
        assert max(w.abs().max().item() for w in silent) <= 1e-12
        assert max(w.abs().max().item() for w in active) > 1e-3
    problem.weights = full


# -- the central test ------------------------------------------------------------------------


@pytest.mark.parametrize("lmax", range(1, 7))
def test_so3_oracles_agree(lmax: int) -> None:
    """e3nn's TensorProduct and the explicit wigner_3j sum are the same convolution."""
    problem = Problem(lmax)
    einsum, tp = problem.so3_einsum(), problem.so3_tensor_product()
    assert einsum.abs().max() > 1e-2
    assert (einsum - tp).abs().max() <= 1e-12


@pytest.mark.parametrize("lmax", range(1, 7))
def test_so2_equals_so3_convolution(lmax: int) -> None:
    problem = Problem(lmax)
    reference = problem.so3_tensor_product()  # e3nn's own implementation
    ours = problem.so2()
    assert reference.abs().max() > 1e-2
    assert (ours - reference).abs().max() <= 1e-10
    assert (ours - problem.so3_einsum()).abs().max() <= 1e-10


def test_so2_equals_so3_on_axis_and_near_pole_edges() -> None:
    """Also exact for edges along the axes and within 1e-7 of +-y."""
    eye = torch.eye(3, dtype=F64)
    tilt = torch.tensor([1e-7, 0.0, -1e-7], dtype=F64)
    y_axis = eye[1]
    vectors = torch.cat([eye * 1.5, -eye * 2.0, torch.stack([y_axis + tilt, -y_axis + tilt])])
    problem = Problem(4, vectors=vectors)
    assert (problem.so2() - problem.so3_einsum()).abs().max() <= 1e-10


# -- negative controls: the comparison must catch a wrong reduction ---------------------------


@pytest.fixture(scope="module")
def problem4() -> Problem:
    return Problem(4, seed=1)


def test_control_flipped_imaginary_sign_fails(problem4: Problem) -> None:
    w_plus, w_minus = problem4.mapped_weights()
    wrong = problem4.so2(w_plus, [-w for w in w_minus])
    assert (wrong - problem4.so3_einsum()).abs().max() > 1e-3


def test_control_swapped_cross_term_fails(problem4: Problem) -> None:
    """Swapping the roles of w̃_+ and w̃_- for m > 0."""
    w_plus, w_minus = problem4.mapped_weights()
    wrong = problem4.so2([w_plus[0]] + w_minus[1:], [w_minus[0]] + w_plus[1:])
    assert (wrong - problem4.so3_einsum()).abs().max() > 1e-3


def test_control_dropped_cg_factor_fails(problem4: Problem) -> None:
    """Mapping with C[li, lf, lo] (the m = 0 coefficient) for every m drops the m-dependence."""
    w_plus, w_minus = problem4.mapped_weights()
    trimmed = [w_plus[0][:, m:, m:] for m in range(len(w_plus))]
    wrong = problem4.so2(trimmed, w_minus)
    assert (wrong - problem4.so3_einsum()).abs().max() > 1e-3


def test_control_rotating_back_without_transpose_fails(problem4: Problem) -> None:
    assert (problem4.so2(transpose_back=False) - problem4.so3_einsum()).abs().max() > 1e-3


def test_control_broken_complex_combine_fails(
    problem4: Problem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sign error inside so2_linear's complex product is caught by the main comparison."""

    def broken(real: torch.Tensor, imag: torch.Tensor) -> torch.Tensor:
        return torch.stack((real[:, 0] + imag[:, 1], real[:, 1] + imag[:, 0]), dim=1)

    monkeypatch.setattr(so2_conv, "complex_combine", broken)
    assert (problem4.so2() - problem4.so3_einsum()).abs().max() > 1e-3
