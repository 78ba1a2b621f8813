"""What fairchem's own code expects of a backbone, kept apart from the model:

- :mod:`~escn_plugin.fairchem_compat.so3_embedding`: the node embedding as fairchem's
  ``SO3_Embedding`` (for fairchem's escn and rank-2 heads);
- :mod:`~escn_plugin.fairchem_compat.eqv2_heads`: the attributes and modules fairchem's
  EquiformerV2 heads read.
"""
