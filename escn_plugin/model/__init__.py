"""The model: from an atom batch to energies, forces and stress.

- :mod:`~escn_plugin.model.escn`: backbone, heads and the plain model, top to bottom;
- :mod:`~escn_plugin.model.arguments`: every constructor argument, its default and check;
- :mod:`~escn_plugin.model.inputs`: the input stage (checks, wrap, neighbours, exact edge
  vectors);
- :mod:`~escn_plugin.model.energy_gradients`: forces and stress as energy derivatives.
"""

from escn_plugin.model.escn import (
    eSCN,
    eSCNBackbone,
    eSCNEnergyGradientHead,
    eSCNEnergyHead,
    eSCNForceHead,
)

__all__ = ["eSCN", "eSCNBackbone", "eSCNEnergyGradientHead", "eSCNEnergyHead", "eSCNForceHead"]
