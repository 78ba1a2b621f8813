"""Building under torch.device("meta") (deferred init, parameter counting) works and leaves
the process-wide constant caches intact for real builds afterwards."""

import torch

import escn_plugin

CONFIG = dict(num_layers=2, lmax_list=[3], mmax_list=[2], sphere_channels=8, hidden_channels=8,
              edge_channels=8, num_sphere_samples=16, resolution=[10, 11],
              readout_grid=[8, 9], grid_quadrature="gauss_legendre")  # fmt: skip


def test_meta_build_counts_parameters_and_real_build_still_works():
    with torch.device("meta"):
        meta = escn_plugin.eSCN(**CONFIG)
    assert all(p.is_meta for p in meta.parameters())
    real = escn_plugin.eSCN(**CONFIG)
    assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in real.parameters())
    assert not any(b.is_meta for b in real.buffers())
    # the caches were filled under meta first: the real model's constants must be data
    assert all(torch.isfinite(b).all() for b in real.buffers() if b.is_floating_point())
