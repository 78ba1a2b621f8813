"""Coefficient layouts: m-major truncated order, sizes, and the reference eSCN's ordering."""

from __future__ import annotations

import warnings

import pytest
import torch

from escn_plugin.so3 import Coefficient, CoefficientLayout

LAYOUTS = [([2], [1]), ([4], [2]), ([6], [2]), ([3], [3]), ([0], [0]), ([4, 3], [2, 1])]


def _expected_m_major(lmax_list: list[int], mmax_list: list[int]) -> list[tuple[int, int, int]]:
    """(res, l, m) in m-major order, written out independently of the implementation."""
    out = []
    for m in range(max(mmax_list) + 1):
        for sign in [1, -1] if m else [1]:
            for res, (lmax, mmax) in enumerate(zip(lmax_list, mmax_list)):
                if m <= mmax:
                    out += [(res, l, sign * m) for l in range(m, lmax + 1)]
    return out


def test_m_major_l2_m1_drawn() -> None:
    """The example drawn in the layout module's docstring."""
    layout = CoefficientLayout([2], [1])
    got = [(c.l, c.m) for c in layout.m_major]
    assert got == [(0, 0), (1, 0), (2, 0), (1, 1), (2, 1), (1, -1), (2, -1)]
    assert layout.m_size == [3, 2]
    assert layout.num_full == 9 and layout.num_m_major == 7
    assert layout.m_slices(0) == (slice(0, 3), None)
    assert layout.m_slices(1) == (slice(3, 5), slice(5, 7))
    assert layout.m_major_to_full.tolist() == [0, 2, 6, 3, 7, 1, 5]


@pytest.mark.parametrize(("lmax_list", "mmax_list"), LAYOUTS)
def test_m_major_order_and_sizes(lmax_list: list[int], mmax_list: list[int]) -> None:
    layout = CoefficientLayout(lmax_list, mmax_list)
    got = [(c.res, c.l, c.m) for c in layout.m_major]
    assert got == _expected_m_major(lmax_list, mmax_list)
    assert layout.num_full == sum((lmax + 1) ** 2 for lmax in lmax_list)
    for m, size in enumerate(layout.m_size):
        expected = sum(lmax - m + 1 for lmax, mmax in zip(lmax_list, mmax_list) if m <= mmax)
        assert size == expected
        plus, minus = layout.m_slices(m)
        assert all(c.m == m for c in layout.m_major[plus])
        assert plus.stop - plus.start == size
        if m > 0:
            assert minus.start == plus.stop and minus.stop - minus.start == size
            assert [(c.res, c.l) for c in layout.m_major[plus]] == [
                (c.res, c.l) for c in layout.m_major[minus]
            ]
            assert all(c.m == -m for c in layout.m_major[minus])
    assert sum(layout.m_size) * 2 - layout.m_size[0] == layout.num_m_major


@pytest.mark.parametrize(("lmax_list", "mmax_list"), LAYOUTS)
def test_full_index_maps(lmax_list: list[int], mmax_list: list[int]) -> None:
    layout = CoefficientLayout(lmax_list, mmax_list)
    expected_full = [
        Coefficient(res, l, m)
        for res, lmax in enumerate(lmax_list)
        for l in range(lmax + 1)
        for m in range(-l, l + 1)
    ]
    assert layout.full == expected_full
    for i, c in enumerate(layout.full):
        assert layout.full_index(c) == i
    gather = layout.m_major_to_full
    assert gather.dtype == torch.long
    assert [layout.full[i] for i in gather.tolist()] == layout.m_major
    assert len(set(gather.tolist())) == len(gather)
    for res in range(len(lmax_list)):
        assert all(c.res == res for c in layout.full[layout.res_slice(res)])


@pytest.mark.parametrize(("lmax_list", "mmax_list"), LAYOUTS)
def test_matches_reference_coefficient_mapping(lmax_list: list[int], mmax_list: list[int]) -> None:
    """Same m-major order (and m_size) as fairchem 1.10's eSCN CoefficientMapping.

    The reference enumerates a reduced l-major layout (per resolution, per l,
    m = -min(M, l)..min(M, l)); row r of its ``to_m`` selects the reduced coefficient that
    sits at position r of the m-major layout.
    """
    pytest.importorskip("torch_scatter")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        so3_ref = pytest.importorskip("fairchem.core.models.escn.so3")
    ref = so3_ref.CoefficientMapping(lmax_list, mmax_list, "cpu")
    res_of = torch.repeat_interleave(torch.arange(len(lmax_list)), ref.res_size)
    reduced = list(zip(res_of.tolist(), ref.l_harmonic.tolist(), ref.m_complex.tolist()))
    to_m = ref.to_m
    assert torch.equal(to_m.sum(dim=1), torch.ones(len(reduced)))  # a permutation
    assert torch.equal(to_m.sum(dim=0), torch.ones(len(reduced)))
    ref_order = [reduced[int(j)] for j in to_m.argmax(dim=1)]

    layout = CoefficientLayout(lmax_list, mmax_list)
    assert [(c.res, c.l, c.m) for c in layout.m_major] == ref_order
    assert layout.m_size == ref.m_size.tolist()


@pytest.mark.parametrize(
    ("lmax_list", "mmax_list", "match"),
    [
        ([2], [3], "must not exceed"),
        ([4, 3], [2, 4], "must not exceed"),
        ([4, 3], [2], "same length"),
        ([4], [2, 1], "same length"),
        ([], [], "at least one"),
        ([-1], [0], ">= 0"),
        ([2], [-1], ">= 0"),
    ],
)
def test_invalid_layouts_raise(lmax_list: list[int], mmax_list: list[int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CoefficientLayout(lmax_list, mmax_list)
