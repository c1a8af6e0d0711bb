"""``MiregBudgetTrainer``: nnU-Net v2's own trainer on a study's schedule budget.

nnU-Net finds this class by name in the folders of ``nnUNet_extTrainer`` (``mireg nnunet`` points
it here). Everything is nnU-Net's ``nnUNetTrainer`` (network, augmentation, loss, optimiser, poly
schedule) but for what :mod:`mireg.nnunet` hands it in the environment variable
``MIREG_NNUNET_BUDGET`` (JSON):

* ``epochs`` x ``iterations``: the schedule (nnU-Net's is 1000 x 250); its poly decay runs over it;
* ``val_iterations``: nnU-Net's per-epoch pseudo-Dice batches (its 1:5 ratio to training batches);
* ``seed``: seeds Python, NumPy and torch once at the start (nnU-Net itself seeds nothing);
* ``threads``: torch's CPU threads (``nnUNetv2_train -device cpu`` would take every core);
* ``run_dir``: the mireg run folder, whose ``metrics.csv`` gets one row per epoch.

nnU-Net's validation after training is skipped: with fold ``all`` its cases are the training cases;
mireg scores the split's validation and test volumes itself.

A checkpoint is written after every epoch (nnU-Net: every 50), atomically, so that a stopped run
continues from its last epoch (``nnUNetv2_train --c``).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from mireg.training.rundir import MetricsLog

BUDGET_VARIABLE = "MIREG_NNUNET_BUDGET"


class MiregBudgetTrainer(nnUNetTrainer):  # type: ignore[misc]
    """nnU-Net's trainer on mireg's budget (see the module)."""

    # nnU-Net saves the names of these parameters in its checkpoints: the signature must be its own
    def __init__(
        self,
        plans: dict[str, Any],
        configuration: str,
        fold: int,
        dataset_json: dict[str, Any],
        device: torch.device = torch.device("cuda"),  # noqa: B008 - nnU-Net's default
    ) -> None:
        super().__init__(plans, configuration, fold, dataset_json, device)
        budget = json.loads(os.environ[BUDGET_VARIABLE])
        self.num_epochs = int(budget["epochs"])
        self.num_iterations_per_epoch = int(budget["iterations"])
        self.num_val_iterations_per_epoch = int(budget["val_iterations"])
        self.save_every = 1
        self.mireg_run_dir = Path(budget["run_dir"])
        if self.device.type == "cpu" and budget.get("threads"):
            torch.set_num_threads(int(budget["threads"]))
        seed = int(budget["seed"])
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self._mireg_log: MetricsLog | None = None
        self._mireg_epoch_start = 0.0

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's checkpoint, written beside and then moved into place: a kill mid-write leaves
        the previous one intact."""
        partial = f"{filename}.partial"
        super().save_checkpoint(partial)
        if os.path.exists(partial):
            os.replace(partial, filename)

    def on_train_start(self) -> None:
        super().on_train_start()
        # current_epoch is the checkpoint's when continuing: later rows are dropped
        self._mireg_log = MetricsLog(self.mireg_run_dir, keep_epochs=self.current_epoch)

    def on_epoch_start(self) -> None:
        self._mireg_epoch_start = time.perf_counter()
        super().on_epoch_start()

    def on_epoch_end(self) -> None:
        epoch = self.current_epoch  # nnU-Net counts from 0; its on_epoch_end moves it on
        seconds = time.perf_counter() - self._mireg_epoch_start
        row = {
            "epoch": epoch + 1,
            "step": (epoch + 1) * self.num_iterations_per_epoch,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "loss/total": float(self.logger.get_value("train_losses", step=-1)),
            "nnunet/val_loss": float(self.logger.get_value("val_losses", step=-1)),
            "nnunet/pseudo_dice": float(self.logger.get_value("mean_fg_dice", step=-1)),
        }
        if self._mireg_log is not None:  # before the checkpoint: a resumed run drops a later row
            self._mireg_log.write({**row, "seconds": round(seconds, 3)})
        super().on_epoch_end()

    def perform_actual_validation(self, save_probabilities: bool = False) -> None:
        """Nothing: with fold ``all`` nnU-Net's validation cases are its training cases; mireg predicts
        and scores the split's validation and test volumes itself."""

    def on_train_end(self) -> None:
        super().on_train_end()
        if self._mireg_log is not None:
            self._mireg_log.__exit__()
