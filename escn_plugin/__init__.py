"""escn-plugin: eSCN (Passaro & Zitnick, ICML 2023) for fairchem-core 1.10.

Use in a fairchem YAML config by full path (works with the stock ``fairchem`` command)::

    model:
      name: escn_plugin.eSCN

or, for fairchem's hydra model, ``backbone: {model: escn_plugin.eSCNBackbone, ...}`` with
heads ``escn_plugin.eSCNEnergyHead`` / ``escn_plugin.eSCNForceHead`` (or, with
``direct_forces: False``, the one head ``escn_plugin.eSCNEnergyGradientHead``). Once this package is
imported, the short names in :data:`REGISTERED_NAMES` resolve too.
"""

from fairchem.core.common.registry import registry

import escn_plugin.datasets.checked_lmdb  # noqa: F401  (registers the checked LMDB datasets)
import escn_plugin.so2  # noqa: F401  (registers SO(2) implementations and oracles)
import escn_plugin.so3  # noqa: F401  (registers rotation backends)
from escn_plugin.model import (
    eSCN,
    eSCNBackbone,
    eSCNEnergyGradientHead,
    eSCNEnergyHead,
    eSCNForceHead,
)

__version__ = "0.1.0"

#: fairchem registry names (fairchem's own ``escn*`` names belong to the reference model)
REGISTERED_NAMES = {
    "escn_plugin": eSCN,
    "escn_plugin_backbone": eSCNBackbone,
    "escn_plugin_energy_head": eSCNEnergyHead,
    "escn_plugin_force_head": eSCNForceHead,
    "escn_plugin_energy_gradient_head": eSCNEnergyGradientHead,
}
for _name, _cls in REGISTERED_NAMES.items():
    registry.register_model(_name)(_cls)

__all__ = [
    "REGISTERED_NAMES",
    "eSCN",
    "eSCNBackbone",
    "eSCNEnergyGradientHead",
    "eSCNEnergyHead",
    "eSCNForceHead",
]
