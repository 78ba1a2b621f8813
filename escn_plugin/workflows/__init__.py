"""The main job's steps (:mod:`escn_plugin.demo` composes them top to bottom), one concern
per module, each usable on its own:

- :mod:`~escn_plugin.workflows.data`: generate or reuse the OC20-EMT dataset, read it;
- :mod:`~escn_plugin.workflows.element_references`: linear per-element energy references;
- :mod:`~escn_plugin.workflows.configs`: the model and OCPTrainer configs (train, relax);
- :mod:`~escn_plugin.workflows.fairchem_runner`: the stock ``fairchem`` command (train,
  validate, predict, run-relaxations) and what its logs say (learning curve, metrics);
- :mod:`~escn_plugin.workflows.submission`: ``make_submission_file`` and a loading check;
- :mod:`~escn_plugin.workflows.s2ef_metrics`: S2EF MAEs and baselines;
- :mod:`~escn_plugin.workflows.relaxations`: relaxation outputs, energies via OCPCalculator;
- :mod:`~escn_plugin.workflows.relaxation_metrics`: IS2RE / IS2RS metrics;
- :mod:`~escn_plugin.workflows.equivariance`: the trained model's rotation error;
- :mod:`~escn_plugin.workflows.plots`, :mod:`~escn_plugin.workflows.report`: figures,
  ``report.md``, ``results.json``;
- :mod:`~escn_plugin.common.progress`: log and progress lines.
"""
