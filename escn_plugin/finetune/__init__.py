"""Fine-tune eSCN on your own structures in one command (``python -m escn_plugin.finetune``).

Direct (the paper's force head) or direct-to-conservative (eSEN's two-stage recipe: the
backbone of a direct checkpoint, forces = -dE/dx, stress = strain derivative). The command
composes one module per step, each usable on its own:

- :mod:`~escn_plugin.finetune.data`: read structures with ASE, check labels, split, write
  the splits as fairchem LMDBs (with the ``metadata.npz`` fairchem's load balancing needs);
- :mod:`~escn_plugin.finetune.normalization`: element references and normalizers fitted on
  the training split with fairchem's own fitting functions;
- :mod:`~escn_plugin.finetune.start`: the starting checkpoint (this plugin's or fairchem's
  reference ``escn``, plain or hydra): its weights mapped onto the fine-tuned model,
  heads kept, rescaled to the new normalizers, or dropped; the step-0 checkpoint;
- :mod:`~escn_plugin.finetune.config`: the plain fairchem config ``DIR/config.yml``;
- :mod:`~escn_plugin.finetune.trainer`: fairchem's OCPTrainer, plus loading the step-0
  weights (only the weights) before the first step of a fresh run;
- :mod:`~escn_plugin.finetune.evaluate`: held-out errors through ``OCPCalculator``, NVE drift;
- :mod:`~escn_plugin.finetune.report`: ``DIR/report.md``, ``DIR/report.json``, figures;
- :mod:`~escn_plugin.finetune.cli`: the command line, composing the steps.

Nothing is imported here, so that fairchem can import the trainer by its path cheaply.
"""
