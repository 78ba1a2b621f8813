"""The backbone's node embedding in the form fairchem's own heads read.

Inside the model the node embedding is a plain tensor ``x: [N, K, C]`` (K = sum_i
(lmax_i + 1)^2 coefficients, l-major with m = -l..l within each degree, resolutions one
after the other: the order of the reference eSCN's ``SO3_Embedding.embedding``). fairchem
1.10 heads that read ``emb["node_embedding"]`` expect the reference's embedding object
instead: ``rank2_symmetric_head`` reads ``.lmax_list`` and ``.expand_edge(index)
.embedding``; fairchem's EquiformerV2 heads call its grid and rotation methods. So the
backbone hands out fairchem's own ``SO3_Embedding`` (``fairchem.core.models.
equiformer_v2.so3``) wrapped around the same tensor, no copy: ``.embedding is x``.

As in the reference backbone, the embedding holds every order m of each degree, so its
``mmax_list`` equals ``lmax_list`` (the model's ``mmax_list`` limits the SO(2)
convolutions, not the stored coefficients).
"""

from __future__ import annotations

import torch
from fairchem.core.models.equiformer_v2.so3 import SO3_Embedding

__all__ = ["SO3_Embedding", "as_so3_embedding"]


def as_so3_embedding(x: torch.Tensor, lmax_list: list[int]) -> SO3_Embedding:
    """Wrap ``x: [N, K, C]`` in fairchem's ``SO3_Embedding`` without copying it."""
    num_coefficients = sum((lmax + 1) ** 2 for lmax in lmax_list)
    if x.dim() != 3 or x.shape[1] != num_coefficients:
        raise ValueError(
            f"node embedding of shape {tuple(x.shape)} does not fit lmax_list {lmax_list}: "
            f"expected [N, {num_coefficients}, C]"
        )
    embedding = SO3_Embedding(0, list(lmax_list), x.shape[2], x.device, x.dtype)
    embedding.set_embedding(x)
    return embedding
