"""fairchem's OCPTrainer plus one thing: the fine-tune's starting weights, and only those.

fairchem 1.10 has no way to start a plain (non-hydra) model from a checkpoint's weights
alone: ``--checkpoint`` also restores the optimizer, scheduler, step and epoch, and
``finetune_config`` takes hydra checkpoints only. This trainer reads ``task.initial_weights``
(a checkpoint file; only its ``state_dict`` is used) and copies those weights into the
model when a run starts at step 0, before the first optimizer step; the EMA restarts from
them. The optimizer and schedule are the config's, fresh. A run resumed with fairchem's
``--checkpoint`` (step > 0) is left as fairchem restores it, and ``validate``, ``predict``,
``run-relaxations`` and ``OCPCalculator`` never read ``initial_weights`` (the trained
checkpoint holds the weights).

Use it by its path (the stock CLI imports it)::

    trainer: escn_plugin.finetune.trainer.FineTuneTrainer
    task: {initial_weights: DIR/start/initial_checkpoint.pt}

Checkpoints it writes record ``trainer: ocp`` (fairchem records "ocp" for every trainer
but its legacy ``forces``/``energy`` names), so they load with fairchem's own trainer.
"""

from __future__ import annotations

import logging

import torch
from fairchem.core.common.registry import registry
from fairchem.core.common.utils import load_state_dict, match_state_dict
from fairchem.core.modules.exponential_moving_average import ExponentialMovingAverage
from fairchem.core.trainers.ocp_trainer import OCPTrainer

__all__ = ["FineTuneTrainer"]


@registry.register_trainer("escn_plugin_finetune")
class FineTuneTrainer(OCPTrainer):
    """OCPTrainer that loads ``task.initial_weights`` (weights only) before step 1."""

    def train(self, disable_eval_tqdm: bool = False) -> None:
        path = self.config["task"].get("initial_weights")
        if path and self.step == 0:
            self.load_initial_weights(path)
        super().train(disable_eval_tqdm)

    def load_initial_weights(self, path: str) -> None:
        """Copy the ``state_dict`` of checkpoint ``path`` into the model (strict: every
        key must match); restart the EMA from these weights."""
        try:
            checkpoint = torch.load(path, map_location=self.device, weights_only=False)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"task.initial_weights: {path} does not exist; write it again with "
                "python -m escn_plugin.finetune (same --out), or remove the key to train "
                "from fresh weights"
            ) from None
        state = match_state_dict(self.model.state_dict(), checkpoint["state_dict"])
        load_state_dict(self.model, state, strict=True)
        if self.ema is not None:
            self.ema = ExponentialMovingAverage(self.model.parameters(), self.ema_decay)
        logging.info(
            f"Loaded the fine-tune's starting weights from {path} (weights only: fresh "
            "optimizer and learning-rate schedule, step 0)"
        )
