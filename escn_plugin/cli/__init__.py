"""Command-line tools (each also a console script, see ``setup.cfg``):

- :mod:`~escn_plugin.cli.demo`: the main job (data -> train -> evaluate -> relax -> report);
- :mod:`~escn_plugin.cli.convert`: a reference ``escn`` checkpoint -> this plugin's;
- :mod:`~escn_plugin.cli.check_data`: check an LMDB dataset before training on it.

The dataset generators run as ``python -m escn_plugin.datasets.oc20_emt`` and
``python -m escn_plugin.datasets.emt_stress``.
"""
