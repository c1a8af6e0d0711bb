"""Training as a user asks for it: a recipe into a new run folder, or a stopped run continued.

:func:`train` is what ``mireg train`` does, callable from Python: it joins a ``torchrun`` job if in
one, loads the data, starts or resumes, and fits; SIGINT and SIGTERM make the loop save a checkpoint
and stop (a second Ctrl-C stops at once). :func:`next_step` is the rule a study applies to each of
its run folders: nothing to do, continue, or start.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mireg.errors import MiregError, RunError
from mireg.interrupts import interrupts_handled_by
from mireg.progress import Observer
from mireg.recipe import Recipe, load_recipe
from mireg.training.loop import Trainer
from mireg.training.rundir import RunDir
from mireg.training.runtime import Runtime
from mireg.training.state import Checkpoint

__all__ = ["TrainedRun", "next_step", "train"]


@dataclass(frozen=True)
class TrainedRun:
    """A run :func:`train` finished.

    Attributes:
        run: Its folder.
        recipe: The recipe it trained (for a resumed run, as saved in the folder).
        report: The test report (``report.json``); ``{}`` in the processes of a ``torchrun`` job
            other than rank 0.
        is_main: Whether this process wrote the run (rank 0, or the only process).
    """

    run: RunDir
    recipe: Recipe
    report: dict[str, Any]
    is_main: bool


def train(
    recipe: Recipe | None = None,
    resume: Path | None = None,
    fresh: bool = False,
    observer: Observer | None = None,
) -> TrainedRun:
    """Train ``recipe`` into a new folder under its ``train.runs_dir``, or continue the run folder
    ``resume`` from its last checkpoint (with the recipe saved there). In a ``torchrun`` job only
    rank 0 reports to ``observer``.

    Raises:
        MiregError: Neither a recipe nor a run folder, or both; the run folder is taken (without
            ``fresh``) or holds no checkpoint; the data cannot be loaded.
        RunInterrupted: Stopped by SIGINT or SIGTERM after saving a checkpoint (continue with
            ``resume``).
    """
    if (recipe is None) == (resume is None):
        raise MiregError("give a recipe, or the run folder to continue (not both)")
    checkpoint: Checkpoint | None = None
    if resume is not None:
        run = RunDir.open(resume)
        recipe = load_recipe(run.file(RunDir.RECIPE))
        checkpoint = Checkpoint.read(run.checkpoint("last"))
    assert recipe is not None
    runtime = Runtime.start(recipe.train.device)
    obs = (observer or Observer()) if runtime.is_main else Observer()
    if checkpoint is None:
        # Rank 0 chooses the folder for every process; nothing is created until Trainer.start.
        chosen = RunDir.choose(recipe.train.runs_dir, recipe.name, fresh).path if runtime.is_main else None
        run = RunDir(Path(str(runtime.broadcast(chosen))))
    trainer = Trainer(recipe, obs, runtime)
    trainer.setup()
    if checkpoint is None:
        trainer.start(run)
        obs.message(f"run directory: {run}")
    else:
        trainer.resume(checkpoint)
        if checkpoint.epoch < recipe.train.epochs:
            obs.message(f"resuming {run} at epoch {checkpoint.epoch + 1}, step {checkpoint.step}")
        else:
            obs.message(f"{run}: training finished ({checkpoint.epoch} epochs); evaluating on the test split")
    with _stop_on_signals(trainer):
        report = trainer.fit(run)
    runtime.close()
    return TrainedRun(run, recipe, report, runtime.is_main)


@contextmanager
def _stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM ask the trainer to checkpoint and stop; a second Ctrl-C stops at once. The
    handler writes nothing (the trainer announces the stop after the step): output from a handler
    can interrupt a write to the same stream, and Python then fails with a reentrant call."""

    def handler(signum: int, frame: Any) -> None:
        trainer.request_stop(signal.Signals(signum).name)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    with interrupts_handled_by(handler):
        yield


def next_step(run: RunDir, resumable: bool | None = None) -> Literal["finished", "resume", "start"]:
    """What the run meant for folder ``run`` needs: nothing (it wrote its test report), to continue
    from where it stopped, or to start. A folder that a run was killed in before its first
    checkpoint was whole holds only its metadata (and perhaps the ``best.pt`` written just before
    the first ``last.pt``): it is removed, and the run starts again.

    Args:
        resumable: Whether the run can continue, for a run trained by another engine (default: it
            wrote a last checkpoint).

    Raises:
        RunError: The folder holds no checkpoint but files a run writes after its first one: it is
            left alone.
    """
    if run.finished:
        return "finished"
    if run.checkpointed if resumable is None else resumable:
        return "resume"
    if run.path.exists():
        # best.pt alone is the first checkpoint cut short: the run writes it just before last.pt.
        extra = {p.name for p in run.path.iterdir()} - RunDir.BEFORE_CHECKPOINT - {RunDir.BEST}
        if extra:
            raise RunError(f"{run}: holds {sorted(extra)} but no checkpoint; not touching it")
        shutil.rmtree(run.path)
    return "start"
