"""What the study's scheduler (:mod:`mireg.study.runner`) asks of the thing that runs its runs.

A run is handed over as a :class:`Launch`: where its recipe, folder and log are. Whatever process
trains it calls :meth:`Launch.arguments` when it starts, so a run that was stopped (a study killed,
a cluster job preempted and requeued) resumes from its checkpoint instead of starting over.

An :class:`Executor` starts launches, tells which of them ended and how (:class:`Ending`), and says
what happens to the ones in flight when the study itself stops. :class:`~.local.LocalExecutor`
starts subprocesses on this machine, :class:`~.slurm.SlurmExecutor` submits Slurm jobs; another
backend (a cloud batch service, Ray) is one more subclass.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mireg.study.runs import resumable
from mireg.training.rundir import RunDir
from mireg.training.workflow import next_step

__all__ = ["INTERRUPTED_CODES", "Ending", "Executor", "Handle", "Launch", "Status"]

Status = Literal["done", "interrupted", "failed"]
INTERRUPTED_CODES = (130, 143, -2, -15)  # how ``mireg train`` ends when a signal stops it
Handle = object  # an executor's own token for a launch in flight (a process, a job id)


@dataclass(frozen=True)
class Launch:
    """One run, as a process that trains it needs it; plain data, so a cluster job can carry it.

    Attributes:
        name: The run's name in its study.
        engine: ``mireg`` or ``nnunet``.
        recipe: The recipe file the study wrote for it.
        run: The run folder.
        log: Where its output goes (appended to, across resumes).
        processes: Training processes (``torchrun`` when more than one, one per GPU).
    """

    name: str
    engine: str
    recipe: Path
    run: Path
    log: Path
    processes: int = 1

    def arguments(self) -> list[str] | None:
        """The ``mireg`` arguments that train the run, or resume it from where it stopped; None
        when it finished (:func:`~mireg.training.workflow.next_step`).

        Raises:
            RunError: The run folder holds results but no checkpoint.
        """
        run = RunDir(self.run)
        step = next_step(run, resumable(self.engine, run))
        if step == "finished":
            return None
        command = "nnunet" if self.engine == "nnunet" else "train"
        if step == "resume":
            return [command, "--resume", str(self.run)]
        return [command, str(self.recipe)]

    def command(self, arguments: list[str]) -> list[str]:
        """The command line that runs ``mireg`` with ``arguments`` (under ``torchrun`` when the run
        trains in several processes)."""
        if self.processes > 1 and self.engine != "nnunet":
            torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
            return [*torchrun, f"--nproc-per-node={self.processes}", "-m", "mireg", *arguments]
        return [sys.executable, "-m", "mireg", *arguments]

    def environment(self, threads: int) -> dict[str, str]:
        """The process environment of a run: this one's, with ``threads`` OpenMP threads."""
        return {**os.environ, "OMP_NUM_THREADS": str(max(1, threads)), "COLUMNS": "120"}


@dataclass(frozen=True)
class Ending:
    """How a launch ended.

    Attributes:
        status: ``done`` (it exited cleanly), ``interrupted`` (stopped with a checkpoint: running
            the study again resumes it) or ``failed``.
        note: What the executor knows beyond the run's own log: a cluster job's id, final state and
            log file. Empty when there is nothing to add.
    """

    status: Status
    note: str = ""


class Executor(ABC):
    """Runs a study's launches. The scheduler keeps at most :attr:`capacity` in flight, calls
    :meth:`attach` before :meth:`start` for each, :meth:`poll` until all ended, and :meth:`stop`
    if the study itself is stopped."""

    #: ``--executor`` name.
    name: str = ""
    #: What trains the runs (:func:`mireg.training.runtime.hardware`; "": not known, as on a
    #: cluster): the time left is counted from the runs finished there first.
    machine: str = ""

    def __init__(self, capacity: int, processes: int = 1) -> None:
        self.capacity = max(1, capacity)
        self.processes = max(1, processes)  # training processes per run

    def attach(self, launch: Launch) -> Handle | None:
        """The launch's job, when one started earlier (by a study process that stopped) is still in
        flight; None otherwise. Locally nothing outlives the study, so nothing is attached."""
        return None

    @abstractmethod
    def start(self, launch: Launch, arguments: list[str], slot: int) -> Handle:
        """Start training (or resuming) the run.

        Args:
            arguments: ``launch.arguments()`` as the scheduler found them; a job that starts later
                (queued on a cluster) asks the launch again when it starts.
            slot: Which of the :attr:`capacity` places it takes (a local run's GPU).
        """

    @abstractmethod
    def poll(self, handles: Mapping[str, Handle]) -> dict[str, Ending]:
        """The launches among ``handles`` (by run name) that ended since they started."""

    def describe(self, handles: Mapping[str, Handle]) -> str:
        """One line on the launches in flight, for the progress display ("" when nothing to add)."""
        return ""

    @abstractmethod
    def stop(self, handles: Mapping[str, Handle]) -> str:
        """The study stops (Ctrl+C, SIGTERM, an error) with ``handles`` in flight; returns a line that
        says what became of them."""
