"""Small, deterministic datasets in the OC20 LMDB format, for tests and demos.

:mod:`escn_plugin.datasets.oc20_emt` builds adsorbate+slab systems labelled with ASE's EMT
calculator and writes S2EF and IS2RE/IS2RS LMDBs that ``fairchem``'s ``format: lmdb``
reads. Generate from the command line with
``python -m escn_plugin.datasets.oc20_emt --out DIR [--seed 0] [--size tiny|demo]``, or
from Python with :func:`generate`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SIZES", "generate"]


def __getattr__(name: str) -> Any:
    # Imported lazily: ``python -m escn_plugin.datasets.oc20_emt`` must not find the module
    # already imported by its package (runpy warns), and AtomsToGraphs pulls in fairchem.
    if name in __all__:
        from escn_plugin.datasets import oc20_emt

        return getattr(oc20_emt, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
