"""Linear-cost neighbour lists for the on-the-fly radius graph (cell lists, via vesin).

Conventions (those of fairchem's ``radius_graph_pbc``, which :func:`neighbor_list`
replaces), for a batch of B systems with N atoms in all and E edges::

    edge_index[:, e] = (j, i)                 # row 0 source j, row 1 target i (j -> i)
    vec_e = pos[j] - pos[i] + n_e @ cell      # n_e = cell_offsets[e]: integer image offsets
    edge  <=>  |vec_e| <= cutoff, and not (j == i and n_e == 0)

``cell [B, 3, 3]`` holds lattice vectors as rows; ``n_e`` is 0 along non-periodic axes. All
distances are compared as squared distances d^2 in float64. Per target atom at most
``max_neighbors`` = k edges are kept, by fairchem's ``get_max_neighbors_mask`` rule:

    strict:      the k nearest; edges tied with the k-th (d^2 within 1e-8 A^2 of it, so
                 that rounding cannot decide) go to the smaller (source, n_e)
    not strict:  every edge with d^2 <= d^2_(k+1) + 0.01 A^2, d^2_(k+1) the (k+1)-th
                 smallest: where an atom has more than k edges it keeps at least k + 1
                 (fairchem applies its 0.01 tolerance to squared distances, after the
                 (k+1)-th neighbour, not the k-th)
    k <= 0:      no cap

Edges come sorted by (target, source, n_e) lexicographically, whatever order the search
returns them in (fairchem's own order is the same). Unlike fairchem, two distinct atoms (or
an atom and its image) closer than 0.01 A stay in the graph, so an input check can see them.

Search. An exact adaptive radius: with a cap k, the edges a target keeps all lie within
``r_a`` = d_(k) (strict) or sqrt(d^2_(k+1) + 0.01) (not strict). A first search at a radius
``r`` guessed from the density (2(k + 1) atoms in the sphere) gives every atom's ``r_a``
where it has enough neighbours within ``r``; while some ``r_a > r`` (or is unknown) the
search is repeated at a larger radius, up to the cutoff. The result is that of a search at
the cutoff; at eSCN's 12 A and k = 20 the candidate pairs drop ~11x (bulk Pt: 0.84 M
instead of 9.3 M for 20,000 atoms). vesin 0.6 kills the process (SIGFPE) when it rescales
the cells of a thin box (> 1e5 cells, one axis rounded to 0): the radius handed to it is
raised where its arithmetic would do that (pairs filtered after), and a search reaching
more than 1e6 images of each atom (a cell plane spacing ~1e-6 times the radius) is refused.

Why vesin (C++ cell lists, threads, per-axis periodicity, cells shorter than the cutoff,
zero cells of non-periodic systems; needs only numpy). Measured here (2 shared cores),
full neighbour list, time / peak RSS: a 3,456-atom Pt(111) slab at 6 A: vesin 0.025 s /
13 MB, matscipy 1.3.1 0.054 s / 8 MB; 20,000-atom bulk Pt at 12 A (9.3 M pairs): vesin
1.7-2.2 s (half list 1.3 s) / 360 MB, matscipy 3.0 s / 274 MB. matscipy 1.3 also requires
ase >= 3.27 and numpy 2, against this package's ase 3.24 / numpy < 2 pins. With this
module (benchmarks/large_systems.py, 1 thread): the 3,464-atom slab at 6 A in 0.12 s /
16 MB, where fairchem's O(N^2) ``radius_graph_pbc`` (``method="fairchem"``, kept for
comparison) takes 21 s / 9.9 GB; 20,000 atoms at 12 A in 0.6 s / 81 MB. Without a cap
(or k = 300) the 9.3 M edges themselves cost 7-12 s and 0.9 GB.

Devices. The search runs on the CPU: CUDA inputs are copied to the CPU and the outputs
returned on the input's device. (vesin 0.6 also has a CUDA path for CUDA tensors, and
vesin-torch a TorchScript one; neither is used or tested here: no GPU was available.)
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import torch

__all__ = ["DEGENERACY_TOLERANCE", "TIE_TOLERANCE", "close_pairs", "neighbor_list"]

#: fairchem's tolerance for neighbours tied with the last one kept, on squared distances (A^2)
DEGENERACY_TOLERANCE = 0.01
#: squared distances this close to the k-th one are ties for the strict cap (A^2)
TIE_TOLERANCE = 1e-8
#: the first search holds about this many times k + 1 neighbours per bulk atom (a surface
#: atom sees about half a sphere)
_FIRST_RADIUS_MARGIN = 2.0
#: a first radius above this fraction of the cutoff saves too little: search at the cutoff
_MAX_FIRST_RADIUS_FRACTION = 0.7
#: growth of the search radius between passes
_GROWTH = 1.5
#: relative padding of the radius handed to vesin (its own test is then never the one used)
_PAD = 1e-9
#: vesin's cell lists hold at most this many cells (``MAX_NUMBER_OF_CELLS``)
_VESIN_MAX_CELLS = 1e5
#: vesin refuses tiny cutoffs ("cutoff is too small"): search at least this far (A)
_MIN_SEARCH_RADIUS = 1e-3
#: a smaller radius (close_pairs) is searched at up to this one, for fewer cells (A)
_SMALL_SEARCH_RADIUS = 3.0
#: a search reaching more periodic images of each atom than this is refused
_MAX_IMAGES = 1e6
#: size of the padded distance matrix of one block of atoms (elements)
_BLOCK = 2**22

METHODS = ("vesin", "fairchem")


def neighbor_list(
    pos: torch.Tensor,
    cell: torch.Tensor,
    natoms: torch.Tensor,
    pbc: torch.Tensor | list[bool],
    cutoff: float,
    max_neighbors: int,
    strict: bool = True,
    method: str = "vesin",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbours within ``cutoff`` of every atom, periodic images included.

    ``pos [N, 3]`` (wrapped into the cell along periodic axes: the offsets refer to the
    positions as given), ``cell [B, 3, 3]`` (rows are lattice vectors; any, e.g. zero, for
    a system without periodic axis), ``natoms [B]``, ``pbc [B, 3]`` bool (or 3 bools for
    all systems). Returns ``edge_index [2, E]`` long (source j, target i), ``cell_offsets
    [E, 3]`` float32 integer image offsets ``n_e`` and ``neighbors [B]`` long (edges per
    system), on the device of ``pos``; see the module docstring for the rules.

    ``method="fairchem"`` calls fairchem's O(N^2) ``radius_graph_pbc`` instead (float32
    distances, pairs closer than 0.01 A dropped, one call per system when the systems'
    periodic axes differ).
    """
    if method not in METHODS:
        raise ValueError(f"unknown neighbour-list method {method!r}; choose one of {METHODS}")
    if not cutoff > 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    counts = [int(n) for n in torch.as_tensor(natoms).tolist()]
    if sum(counts) != pos.shape[0]:
        raise ValueError(f"natoms sums to {sum(counts)} but pos holds {pos.shape[0]} atoms")
    flags = _periodic_flags(pbc, len(counts))  # [B, 3] bool, CPU
    cell = cell.reshape(len(counts), 3, 3)
    if method == "fairchem":
        return _fairchem_neighbor_list(pos, cell, natoms, flags, cutoff, max_neighbors, strict)

    pos64 = pos.detach().to("cpu", torch.float64)  # [N, 3]
    cell64 = cell.detach().to("cpu", torch.float64)  # [B, 3, 3]
    targets, sources, shifts, per_system = [], [], [], []
    start = 0
    for system, n in enumerate(counts):
        t, s, o = _system_edges(
            pos64[start : start + n].numpy(),
            cell64[system].numpy(),
            flags[system].numpy(),
            float(cutoff),
            int(max_neighbors),
            bool(strict),
        )
        targets.append(t + start)
        sources.append(s + start)
        shifts.append(o)
        per_system.append(t.shape[0])
        start += n
    device = pos.device
    if counts:
        edge_index = torch.stack([torch.cat(sources), torch.cat(targets)])  # [2, E]
        cell_offsets = torch.cat(shifts).to(torch.float32)  # [E, 3]
    else:
        edge_index = torch.zeros(2, 0, dtype=torch.long)
        cell_offsets = torch.zeros(0, 3, dtype=torch.float32)
    neighbors = torch.tensor(per_system, dtype=torch.long)  # [B]
    return edge_index.to(device), cell_offsets.to(device), neighbors.to(device)


def close_pairs(
    pos: torch.Tensor,
    cell: torch.Tensor,
    natoms: torch.Tensor,
    pbc: torch.Tensor | list[bool],
    radius: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every pair of atoms closer than ``radius`` (strictly), periodic images included:
    two atoms, or an atom and its own image in a cell with a lattice vector shorter than
    ``radius``. O(N) (cell lists), for overlap checks.

    Same inputs and conventions as :func:`neighbor_list`, but each unordered pair appears
    once (one of its two directions). Returns ``edge_index [2, P]`` long (source j, target
    i), ``cell_offsets [P, 3]`` float32 and ``distance [P]`` float64, sorted by (target,
    source, offset), on the device of ``pos``.
    """
    if not radius > 0:
        raise ValueError(f"radius must be positive, got {radius}")
    counts = [int(n) for n in torch.as_tensor(natoms).tolist()]
    if sum(counts) != pos.shape[0]:
        raise ValueError(f"natoms sums to {sum(counts)} but pos holds {pos.shape[0]} atoms")
    flags = _periodic_flags(pbc, len(counts))
    pos64 = pos.detach().to("cpu", torch.float64)
    cell64 = cell.detach().to("cpu", torch.float64).reshape(len(counts), 3, 3)
    edges, offsets, distances = [], [], []
    start = 0
    for system, n in enumerate(counts):
        t, s, o, d2 = _search(
            pos64[start : start + n].numpy(),
            cell64[system].numpy(),
            flags[system].numpy(),
            float(radius),
            full_list=False,
        )
        close = d2 < radius**2
        t, s, o, d2 = t[close], s[close], o[close], d2[close]
        order = _lexsort([t, s, o[:, 0], o[:, 1], o[:, 2]])
        edges.append(torch.stack([s[order], t[order]]) + start)
        offsets.append(o[order])
        distances.append(d2[order].sqrt())
        start += n
    if not counts:
        edges, offsets = [torch.zeros(2, 0, dtype=torch.long)], [torch.zeros(0, 3)]
        distances = [torch.zeros(0, dtype=torch.float64)]
    device = pos.device
    return (
        torch.cat(edges, dim=1).to(device),
        torch.cat(offsets).to(device, torch.float32),
        torch.cat(distances).to(device),
    )


# --- one system ---------------------------------------------------------------------------


def _system_edges(
    pos: np.ndarray,  # [n, 3] float64
    cell: np.ndarray,  # [3, 3] float64
    periodic: np.ndarray,  # [3] bool
    cutoff: float,
    k: int,
    strict: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(target [E], source [E], shift [E, 3] int32)`` of one system, atoms numbered from
    0, sorted by (target, source, shift)."""
    n = pos.shape[0]
    if n == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, torch.zeros(0, 3, dtype=torch.int32)
    radius = _first_radius(pos, cell, periodic, cutoff, k)
    while True:
        target, source, shift, dist2 = _sorted(*_search(pos, cell, periodic, radius), n)
        kth, next_kth = _order_statistics(target, dist2, n, k)  # [n], [n]
        if radius >= cutoff:
            break
        # squared radius within which each atom's kept edges lie (inf: not known yet)
        needed = kth + TIE_TOLERANCE if strict else next_kth + DEGENERACY_TOLERANCE  # [n]
        if bool((needed <= radius**2).all()):
            break
        known = needed[torch.isfinite(needed)]
        grown = radius * _GROWTH
        if known.numel():
            grown = max(grown, math.sqrt(float(known.max())) * (1 + _PAD))
        radius = min(cutoff, grown)
    keep = _cap_mask(target, dist2, kth, next_kth, k, strict)  # [E]
    if keep is None:
        return target, source, shift
    return target[keep], source[keep], shift[keep]


def _first_radius(
    pos: np.ndarray, cell: np.ndarray, periodic: np.ndarray, cutoff: float, k: int
) -> float:
    """A radius holding about ``2 (k + 1)`` neighbours of a bulk atom, or the cutoff."""
    n = pos.shape[0]
    if k <= 0 or (not periodic.any() and n <= k + 1):
        return cutoff  # no cap, or too few atoms ever to need one
    if periodic.all():
        volume = abs(float(np.linalg.det(cell)))
    else:  # bounding box, each side padded by an atom's size
        volume = float(np.prod(pos.max(axis=0) - pos.min(axis=0) + 2.0))
    if not (math.isfinite(volume) and volume > 0):
        return cutoff
    density = n / volume
    radius = (3 * _FIRST_RADIUS_MARGIN * (k + 1) / (4 * math.pi * density)) ** (1 / 3)
    return cutoff if radius > _MAX_FIRST_RADIUS_FRACTION * cutoff else radius


def _search(
    pos: np.ndarray,  # [n, 3] float64
    cell: np.ndarray,  # [3, 3] float64
    periodic: np.ndarray,  # [3] bool
    radius: float,
    full_list: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """vesin's pairs within ``radius`` (inclusive), without the zero-offset self pair:
    ``(target i [E] long, source j [E] long, shift [E, 3] int32, d^2 [E] float64)``
    with ``pos[j] - pos[i] + shift @ cell`` the vector, in vesin's (unspecified) order."""
    import vesin

    faces = _vesin_faces(pos, cell, periodic)  # None: degenerate, vesin raises below
    search_radius = max(radius, _MIN_SEARCH_RADIUS)
    if faces is not None:
        if search_radius < _SMALL_SEARCH_RADIUS:  # about one cell per atom, not 1e5
            spacing = (float(faces.prod()) / max(pos.shape[0], 1)) ** (1 / 3)
            search_radius = max(search_radius, min(_SMALL_SEARCH_RADIUS, spacing))
        search_radius = _safe_vesin_radius(faces, search_radius)
        reach = np.ceil(search_radius / faces[periodic])  # [periodic axes] cells away
        if float(np.prod(2 * reach + 1)) > _MAX_IMAGES:
            raise ValueError(
                f"the cell {cell.tolist()} is too thin for a search within {search_radius:.3g}"
                f" A: its planes are {faces[periodic].tolist()} A apart along the periodic "
                f"axes, which puts more than {_MAX_IMAGES:.0e} images of each atom in reach"
            )
    search = vesin.NeighborList(
        cutoff=search_radius * (1 + _PAD) + _PAD,
        full_list=full_list,
        n_threads=torch.get_num_threads(),  # as many as torch may use (DDP ranks: often 1)
    )
    try:
        pairs, shifts, dist = search.compute(
            np.ascontiguousarray(pos), np.ascontiguousarray(cell), periodic, "PSd", copy=False
        )
    except RuntimeError as error:
        raise ValueError(
            f"vesin's neighbour search failed ({error}); periodic axes {periodic.tolist()}, "
            f"cell {cell.tolist()}: a periodic system needs three independent lattice vectors"
        ) from error
    # views into vesin's buffers, valid while ``search`` lives: select into new tensors
    pairs = torch.from_numpy(pairs.view(np.int64))  # [E0, 2] (vesin: size_t)
    shifts = torch.from_numpy(shifts)  # [E0, 3] int32
    dist2 = torch.from_numpy(dist).square()  # [E0] float64, a new tensor
    keep = (dist2 <= radius**2) & ((pairs[:, 0] != pairs[:, 1]) | (shifts != 0).any(dim=1))
    index = keep.nonzero().squeeze(1)  # [E]
    target, source = pairs[index, 0], pairs[index, 1]  # copies
    shift, dist2 = shifts[index], dist2[index]
    del search, pairs, shifts, dist
    return target, source, shift, dist2


def _sorted(
    target: torch.Tensor,  # [E]
    source: torch.Tensor,  # [E]
    shift: torch.Tensor,  # [E, 3]
    dist2: torch.Tensor,  # [E]
    n: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The edges sorted by (target, source, shift): one sort of a packed int64 key where it
    fits (the triples are unique), else stable sorts key by key."""
    low = shift.amin(dim=0).long() if shift.shape[0] else torch.zeros(3, dtype=torch.long)
    width = (shift.amax(dim=0).long() - low + 1) if shift.shape[0] else torch.ones(3)
    if math.prod([n, n, *width.tolist()]) < 2**62:
        key = target * n + source  # [E]
        for axis in range(3):
            key = key * int(width[axis]) + (shift[:, axis].long() - low[axis])
        perm = torch.from_numpy(np.argsort(key.numpy()))  # numpy: torch's CPU sort is slow
        del key
    else:
        perm = _lexsort([target, source, shift[:, 0], shift[:, 1], shift[:, 2]])
    return target[perm], source[perm], shift[perm], dist2[perm]


def _vesin_faces(pos: np.ndarray, cell: np.ndarray, periodic: np.ndarray) -> np.ndarray | None:
    """``[3]``: the widths of vesin 0.6's box, the distance between its faces along
    periodic axes (rows along non-periodic axes replaced as vesin does) and 1.01 x the
    extent of the positions along the others; None for a degenerate cell."""
    faces = np.empty(3)
    lattice = np.array(cell, dtype=np.float64)
    axes = np.flatnonzero(periodic)
    if axes.size == 2:  # vesin: the non-periodic row becomes the unit normal
        normal = np.cross(lattice[axes[0]], lattice[axes[1]])
        lattice[3 - axes.sum()] = normal / max(np.linalg.norm(normal), 1e-300)
    with np.errstate(divide="ignore", invalid="ignore"):
        for a in range(3):
            if not periodic[a]:
                extent = float(np.ptp(pos[:, a])) if pos.shape[0] else 0.0
                faces[a] = 1.01 * (extent if extent >= 1e-6 else 1.0)
            elif axes.size == 1:
                faces[a] = np.linalg.norm(lattice[a])
            else:
                others = np.cross(lattice[(a + 1) % 3], lattice[(a + 2) % 3])
                faces[a] = abs(float(np.dot(lattice[a], others))) / np.linalg.norm(others)
    if not np.isfinite(faces).all() or (faces <= 0).any():
        return None
    return faces


def _safe_vesin_radius(faces: np.ndarray, radius: float) -> float:
    """``radius``, raised where vesin 0.6's cell list would get 0 cells along an axis.

    vesin makes ``n_a = max(1, trunc(faces_a / radius))`` cells along each axis; above
    1e5 cells in all it rescales them keeping their ratios, which truncates a thin axis
    to 0 cells and kills the process (SIGFPE): e.g. a 3 x 1000 x 1000 A periodic box at
    1 A. A larger search radius (pairs filtered after) means fewer cells; this mirrors
    vesin's arithmetic to find one that is safe.
    """
    for _ in range(200):
        cells = np.maximum(1.0, np.trunc(faces / radius))
        if cells.prod() <= _VESIN_MAX_CELLS:
            return radius
        xy, yz = cells[0] / cells[1], cells[1] / cells[2]
        z = np.trunc(np.cbrt(_VESIN_MAX_CELLS / (xy * yz * yz)))
        y = np.trunc(yz * z)
        if min(z, y, np.trunc(xy * y)) >= 1:
            return radius
        radius *= 1.25
    return radius


def _order_statistics(
    target: torch.Tensor, dist2: torch.Tensor, n: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-th and (k+1)-th smallest ``dist2`` of each target atom, ``[n]`` each (inf
    where it has fewer edges, or ``k <= 0``); ``target`` sorted. Per block of atoms, their
    distances in a padded ``[atoms, max count]`` matrix (inf-filled) and ``topk``."""
    inf = torch.full((n,), math.inf, dtype=torch.float64)
    count = torch.bincount(target, minlength=n)  # [n]
    width = int(count.max()) if n else 0
    if k <= 0 or width < k:
        return inf, inf.clone()
    m = min(k + 1, width)
    start = torch.cumsum(count, dim=0) - count  # [n] first edge of each target
    smallest = torch.full((n, m), math.inf, dtype=torch.float64)  # [n, m]
    rows = max(1, _BLOCK // width)
    for a in range(0, n, rows):  # blocks of atoms bound the padded matrix
        b = min(n, a + rows)
        e0, e1 = int(start[a]), int(start[b - 1] + count[b - 1])
        t = target[e0:e1] - a  # [e] row in the block
        slot = torch.arange(e0, e1) - start[a:b][t]  # [e] place in the row
        block = torch.full(((b - a) * width,), math.inf, dtype=torch.float64)
        block[t * width + slot] = dist2[e0:e1]
        smallest[a:b] = torch.topk(block.view(b - a, width), m, largest=False).values
    kth = smallest[:, k - 1]
    next_kth = smallest[:, k] if m > k else inf
    return kth, next_kth


def _cap_mask(
    target: torch.Tensor,  # [E] sorted
    dist2: torch.Tensor,  # [E]
    kth: torch.Tensor,  # [n]
    next_kth: torch.Tensor,  # [n]
    k: int,
    strict: bool,
) -> torch.Tensor | None:
    """``[E]`` bool: the edges kept by the ``max_neighbors = k`` rule (None: all), the
    edges sorted by (target, source, shift) so that ties go to the first."""
    n = kth.shape[0]
    count = torch.bincount(target, minlength=n)  # [n]
    capped = count > k  # [n]
    if k <= 0 or not bool(capped.any()):
        return None
    if not strict:
        limit = torch.where(capped, next_kth + DEGENERACY_TOLERANCE, math.inf)  # [n]
        return dist2 <= limit[target]
    limit = torch.where(capped, kth, math.inf)[target]  # [E]
    keep = dist2 < limit - TIE_TOLERANCE
    tied = ((dist2 - limit).abs() <= TIE_TOLERANCE).nonzero().squeeze(1)  # [T] sorted
    if tied.numel():
        slots = k - torch.bincount(target[keep], minlength=n)  # [n] places left
        t = target[tied]  # [T] sorted
        rank = torch.arange(t.shape[0]) - torch.searchsorted(t, t)  # [T] rank among ties
        keep[tied[rank < slots[t]]] = True
    return keep


def _lexsort(keys: list[torch.Tensor]) -> torch.Tensor:
    """Permutation sorting by ``keys[0]``, then ``keys[1]``, ... (stable sorts from the
    last key to the first)."""
    perm = torch.arange(keys[0].shape[0])
    for key in reversed(keys):
        perm = perm[torch.from_numpy(np.argsort(key[perm].numpy(), kind="stable"))]
    return perm


# --- inputs and fairchem --------------------------------------------------------------------


def _periodic_flags(pbc: torch.Tensor | list[bool], num_systems: int) -> torch.Tensor:
    """``[B, 3]`` bool on the CPU from ``[B, 3]`` flags or 3 flags for every system."""
    flags = torch.as_tensor(pbc).to("cpu", torch.bool)
    if flags.shape == (3,):
        return flags.expand(num_systems, 3).contiguous()
    if flags.shape != (num_systems, 3):
        raise ValueError(
            f"pbc must hold 3 flags or one row of 3 per system ({num_systems}), "
            f"got shape {tuple(flags.shape)}"
        )
    return flags


def _fairchem_neighbor_list(
    pos: torch.Tensor,
    cell: torch.Tensor,
    natoms: torch.Tensor,
    flags: torch.Tensor,
    cutoff: float,
    max_neighbors: int,
    strict: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fairchem's ``radius_graph_pbc`` in float32, one call per run of systems that share
    their periodic axes (it supports one set per call)."""
    from fairchem.core.common.utils import radius_graph_pbc

    from escn_plugin.common.default_dtype import default_dtype

    natoms = torch.as_tensor(natoms, device=pos.device)
    counts = natoms.tolist()
    atom_start = [0, *np.cumsum(counts).tolist()]
    edges, offsets, neighbors = [], [], []
    first = 0
    while first < len(counts):
        last = first + 1  # systems first..last-1 share their periodic axes
        while last < len(counts) and bool((flags[last] == flags[first]).all()):
            last += 1
        a, b = atom_start[first], atom_start[last]
        graph_input = SimpleNamespace(
            pos=pos[a:b].detach().float(),
            cell=cell[first:last].detach().float(),
            natoms=natoms[first:last],
        )
        with torch.no_grad(), default_dtype(torch.float32):
            e, o, k = radius_graph_pbc(
                graph_input, cutoff, max_neighbors, strict, pbc=flags[first].tolist()
            )
        edges.append(e + a)
        offsets.append(o)
        neighbors.append(k)
        first = last
    if not edges:
        return (
            torch.zeros(2, 0, dtype=torch.long, device=pos.device),
            torch.zeros(0, 3, device=pos.device),
            torch.zeros(0, dtype=torch.long, device=pos.device),
        )
    return torch.cat(edges, dim=1), torch.cat(offsets), torch.cat(neighbors)
