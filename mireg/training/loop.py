"""Training a recipe into a run folder: set up, fit (the epoch loop), then test.

The pieces, each in its own module:

* :mod:`mireg.network`: the recipe's network and loss terms (checked first on the meta device);
* :mod:`mireg.training.data`: its data (the store and its pools; :mod:`mireg.training.feed` brings each step's
  slices to the device);
* :mod:`mireg.training.state`: :class:`~mireg.training.state.TrainState`, everything a checkpoint holds;
* :mod:`mireg.training.step`: one optimisation step;
* :mod:`mireg.training.rundir`: the run folder and every write in it;
* :mod:`mireg.training.runtime`: one process or a ``torchrun`` job, chosen once.

Here: :meth:`Trainer.fit`, the loop. Per epoch it sets the learning rate, takes the epoch's steps
(stopping cleanly on request), validates (3D DSC on whole validation volumes), writes the
``metrics.csv`` row and the ``last`` checkpoint (and ``best`` when validation improves). At the end
the best checkpoint is evaluated on the test split into ``report.json`` (a stop request then stops
between volumes; resuming evaluates again). In a ``torchrun`` job only rank 0 writes the run.
"""

from __future__ import annotations

import math
import time
from contextlib import closing, nullcontext
from typing import Any

import torch

from mireg.errors import RunError, RunInterrupted
from mireg.evaluation.evaluate import validation_dice
from mireg.inference import Preprocessing
from mireg.network import build_network
from mireg.plots import plot_curves
from mireg.progress import Observer
from mireg.recipe import Recipe
from mireg.training.checkpoint import save_checkpoint
from mireg.training.data import RunData, load_data
from mireg.training.evaluation import evaluate_run
from mireg.training.feed import Feed, open_feed
from mireg.training.rundir import RunDir
from mireg.training.runtime import Runtime
from mireg.training.schedule import lr_at_epoch
from mireg.training.state import Checkpoint, RunningMeans, TrainState
from mireg.training.step import TrainStep

__all__ = ["Trainer"]


def _memory_format(name: str, device: torch.device) -> torch.memory_format:
    if name == "channels_last" or (name == "auto" and device.type == "cuda"):
        return torch.channels_last
    return torch.contiguous_format


class Trainer:
    """Trains one recipe.

    ``Trainer(recipe)`` joins a ``torchrun`` job if in one; :meth:`setup` loads the data and builds
    the state and the step; :meth:`fit` trains into a run folder.

    Args:
        recipe: The validated (and so checked) recipe.
        observer: Receives progress.
        runtime: The process set-up (default: from ``recipe.train.device`` and the environment).
    """

    def __init__(
        self, recipe: Recipe, observer: Observer | None = None, runtime: Runtime | None = None
    ) -> None:
        self.recipe = recipe
        self.obs = observer or Observer()
        self.runtime = runtime or Runtime.start(recipe.train.device)
        self.runtime.check_batches(recipe.train.labeled_batch, recipe.train.unlabeled_batch)
        self._stop_requested: str | None = None  # the name of the signal that asked to stop
        self._stop_announced = False

    def setup(self) -> None:
        """Load the data, build the network, the training state and the step."""
        recipe, runtime = self.recipe, self.runtime
        torch.manual_seed(recipe.seed)
        self.data: RunData = load_data(recipe, self.obs.progress)
        model, terms = build_network(recipe)
        runtime.convert_batch_norm([model, *(t.regularizer for t in terms)])
        memory_format = _memory_format(recipe.train.memory_format, runtime.device)
        model.to(runtime.device).to(memory_format=memory_format)
        if recipe.train.compile:
            model.compile()  # in place: state-dict keys and forward hooks stay as they are
        for term in terms:
            term.regularizer.to(runtime.device)
        store = self.data.store
        info = Preprocessing(store.spacing, store.canvas, list(store.classes))
        self.state = TrainState.create(recipe, info, model, terms, runtime.device)
        self.feed: Feed = open_feed(recipe, self.data, runtime.device)
        self.step = TrainStep(self.state, self.feed, runtime, memory_format)
        split = self.data.split
        self.obs.message(
            f"{recipe.name}: {len(split.labeled)} labelled / {len(split.unlabeled)} "
            f"unlabelled / {len(split.validation)} validation / {len(split.test)} test "
            f"patients ({len(self.data.labeled)} labelled slices) on {runtime.device}, "
            f"data {self.feed.placement}"
        )

    def start(self, run: RunDir) -> None:
        """Begin a new run: create its folder and write its metadata (rank 0), after :meth:`setup`,
        so that a recipe or data error leaves no folder behind."""
        if self.runtime.is_main:
            run.start(self.recipe, self.data.split, self.runtime.hardware())

    def resume(self, checkpoint: Checkpoint) -> None:
        """Continue from a checkpoint of this run (after :meth:`setup`)."""
        self.state.load_state_dict(checkpoint.state)

    # ----------------------------------------------------------------------------------------- loop

    def request_stop(self, reason: str = "stop") -> None:
        """Ask the loop to checkpoint and stop after the current step. Signal handlers call this
        (``reason``: the signal's name); it only records the request, which the loop announces to
        the observer after the step, so that a handler never writes to a stream it interrupted."""
        self._stop_requested = reason

    def _check_finite(self, means: dict[str, float], run: RunDir) -> None:
        bad = [k for k, v in means.items() if not math.isfinite(v) and k != "total"]
        if bad or not math.isfinite(means.get("total", 0.0)):
            term = bad[0] if bad else "total"
            raise RunError(
                f"non-finite loss in term {term!r} at epoch {self.state.epoch + 1}, around step "
                f"{self.state.step}; the last good checkpoint is {run.file(RunDir.LAST)}",
                "lower the learning rate or the regulariser weights, or set train.skip_nonfinite = true",
            )

    def _train_epoch(self, run: RunDir) -> dict[str, float]:
        """The (rest of the) current epoch's steps; returns the epoch means of the logged values."""
        cfg, state = self.recipe.train, self.state
        self.obs.epoch_start(state.epoch, cfg.epochs, cfg.iterations_per_epoch)
        state.model.train()
        while state.iteration < cfg.iterations_per_epoch:
            logs = self.step()
            if logs is None:
                state.running.skipped += 1
            else:
                state.running.add(logs)
            state.iteration += 1
            if state.iteration % cfg.log_every == 0 or state.iteration == cfg.iterations_per_epoch:
                means = state.running.means()
                self._check_finite(means, run)
                self.obs.step(state.iteration, means)
            if self._stop_requested is not None and not self._stop_announced:
                self.obs.stopping(self._stop_requested)
                self._stop_announced = True
            requested = self._stop_requested is not None
            if self.runtime.stop_agreed(requested, boundary=state.iteration % cfg.log_every == 0):
                if self.runtime.is_main:
                    save_checkpoint(state.state_dict(), run.file(RunDir.LAST))
                raise RunInterrupted(
                    f"{run}: stopped at epoch {state.epoch + 1}, step {state.step}; "
                    f"checkpoint saved to {run.file(RunDir.LAST)}",
                    f"continue with: mireg train --resume {run}",
                )
        means = state.running.means()
        if cfg.skip_nonfinite:
            means["skipped_steps"] = state.running.skipped
        state.iteration, state.running = 0, RunningMeans()
        return means

    def _validate(self) -> dict[str, float]:
        data, cfg = self.data, self.recipe.train
        dice = validation_dice(
            self.state.eval_model,
            data.store,
            data.split.validation,
            cfg.eval_batch,
            cfg.precision,
        )
        return {f"val_dice/{k}": v for k, v in dice.items()}

    def fit(self, run: RunDir) -> dict[str, Any]:
        """Train the remaining epochs into ``run``, then evaluate the best checkpoint on the test
        split (the test report ``report.json``, returned), and the last one (:meth:`_test_last`);
        in a multi-process run, rank 0 tests and the others return ``{}``.
        """
        cfg, state = self.recipe.train, self.state
        main = self.runtime.is_main
        log_file = run.metrics_log(keep_epochs=state.epoch) if main else nullcontext()
        with log_file as log, closing(self.feed):  # the feed's reading thread stops either way
            while state.epoch < cfg.epochs:
                lr = lr_at_epoch(state.epoch, cfg.epochs, self.recipe.optim)
                for group in state.optimizer.param_groups:
                    group["lr"] = lr
                started = time.perf_counter()
                row: dict[str, Any] = {"epoch": state.epoch + 1, "lr": lr}
                means = self._train_epoch(run)
                skipped = means.pop("skipped_steps", None)
                row.update({f"loss/{k}": v for k, v in means.items()})
                if skipped is not None:
                    row["skipped_steps"] = int(skipped)
                row.update(self._validate())
                row["step"] = state.step
                row["seconds"] = round(time.perf_counter() - started, 2)
                improved = row.get("val_dice/mean", float("nan")) > state.best
                if improved:
                    state.best = row["val_dice/mean"]
                row["best"] = int(improved)
                state.epoch += 1
                # The row goes first: a kill before the checkpoint replays this epoch on resume, and
                # rows past the checkpoint's epoch are dropped then (MetricsLog).
                if log is not None:
                    log.write(row)
                if main:
                    checkpoint = state.state_dict()
                    if improved:
                        save_checkpoint(checkpoint, run.file(RunDir.BEST))
                    save_checkpoint(checkpoint, run.file(RunDir.LAST))
                self.obs.epoch_end(row)
        if not main:
            return {}
        plot_curves(run.file(RunDir.METRICS), run.file(RunDir.CURVES))
        report = self._test(run, "best")
        self._test_last(run)
        return report

    def _test(self, run: RunDir, checkpoint: str) -> dict[str, Any]:
        """Evaluate ``checkpoint`` on the test split into its report, stopping between volumes if
        asked (:meth:`_stop_before_testing`)."""
        self._stop_before_testing(run)
        left = len(self.data.store.volumes_of(self.data.split.test))

        def after_volume(*_: Any) -> None:
            nonlocal left
            left -= 1
            if left:  # after the last volume only the report is left to write: it is written
                self._stop_before_testing(run)

        report, _ = evaluate_run(
            run, "test", checkpoint, self.runtime.device, self.data.store, on_volume=after_volume
        )
        return report

    def _test_last(self, run: RunDir) -> None:
        """Also test the last checkpoint (``report_test_last.json``): what the run gives without
        choosing an epoch on validation, as a method that keeps its final weights (nnU-Net) is
        tested. The run is finished by then (``report.json``), so a stop request skips it instead
        of interrupting the run; ``mireg eval RUN --checkpoint last`` writes it later."""
        try:
            self._test(run, "last")
        except RunInterrupted:
            self.obs.message(
                f"{run}: the last checkpoint's test report was not written (stopped); "
                f"write it with: mireg eval {run} --checkpoint last"
            )

    def _stop_before_testing(self, run: RunDir) -> None:
        """Honour a stop request that came after the last step (during the last validation or the
        test evaluation): training is over and checkpointed, so the run stops here, before its
        report is written, and ``mireg train --resume`` evaluates it again from the start."""
        if self._stop_requested is None:
            return
        raise RunInterrupted(
            f"{run}: stopped ({self._stop_requested}) before writing its test report; its training "
            "is finished and its checkpoints are saved",
            f"write the report with: mireg train --resume {run}",
        )
