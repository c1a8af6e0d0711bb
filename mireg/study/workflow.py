"""A study as ``mireg study`` runs it, callable from Python: open and check the study file
(:func:`open_study`), then train its runs and write the report (:func:`conduct`)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mireg.errors import MiregError
from mireg.study.executors import Executor, LocalExecutor
from mireg.study.executors.slurm import SlurmExecutor, SlurmOptions
from mireg.study.plan import Order, Study
from mireg.study.report import Row, summarize_study, write_interim_report, write_study_report
from mireg.study.runner import gpu_count, run_study
from mireg.study.runs import RunRecord
from mireg.study.spec import load_study
from mireg.training.runtime import resolve_device

__all__ = ["StudyOutcome", "conduct", "default_jobs", "local_executor", "open_study", "slurm_executor"]


def open_study(path: Path, quick: bool = False, device: str | None = None) -> Study:
    """The study of file ``path``, every configuration's recipe checked before anything trains.

    Args:
        quick: The study's ``[quick]`` preset (fewer seeds and epochs).
        device: ``train.device`` for every run (default: each recipe's).

    Raises:
        RecipeError: The study file, or a recipe it makes, is invalid; or ``device`` is unknown.
        MiregError: The study takes another study's choices, and that study's runs were planned
            from another version of its file.
    """
    spec = load_study(path)
    if device is not None:
        resolve_device(device, "--device")
    study = Study(spec, path, quick, device)
    study.check()
    return study


def default_jobs(device: str | None) -> int:
    """Runs at a time when none is asked for: one per GPU on CUDA, else one."""
    if device is not None and device.startswith("cuda"):
        return max(1, gpu_count())
    return 1


def local_executor(device: str | None, jobs: int | None = None) -> LocalExecutor:
    """Runs as subprocesses here, ``jobs`` at a time (default: :func:`default_jobs`), each on its own
    GPU on CUDA (``device``: the study's ``--device``; None: the recipes', taken as ``auto``)."""
    gpus = gpu_count() if (device or "").startswith("cuda") else 0
    return LocalExecutor(default_jobs(device) if jobs is None else jobs, gpus, device or "auto")


def slurm_executor(study: Study, options: SlurmOptions, jobs: int | None = None) -> SlurmExecutor:
    """Runs as Slurm jobs, at most ``jobs`` queued or running at once (default: no cap); the job
    files go into the study's ``slurm/`` folder.

    Raises:
        MiregError: submitit is not installed, or an ``options.sbatch`` entry is not an sbatch option.
    """
    if importlib.util.find_spec("submitit") is None:
        raise MiregError(
            "--executor slurm needs submitit, which is not installed", "pip install 'mireg[slurm]'"
        )
    if options.gpus is None:
        options = replace(options, gpus=1 if (study.device or "").startswith("cuda") else 0)
    return SlurmExecutor(study.executor_dir("slurm"), options, jobs or study.ready_total())


@dataclass(frozen=True)
class StudyOutcome:
    """A study :func:`conduct` went through.

    Attributes:
        records: Every run's record, in plan order.
        rows: The report's rows.
        paths: The report files written (``study.md`` first; ``interim.md`` first while runs wait).
        waiting: The runs that wait for another study's choices (:meth:`Study.waiting_runs`).
    """

    records: list[RunRecord]
    rows: list[Row]
    paths: list[Path]
    waiting: int = 0

    @property
    def failed(self) -> list[RunRecord]:
        """The runs that did not finish (failed or interrupted): a rerun retries them."""
        return [r for r in self.records if r.status != "done"]


def conduct(
    study: Study,
    executor: Executor | None = None,
    progress: Callable[[int, int, str], None] | None = None,
    order: Order = "seeds",
) -> StudyOutcome:
    """Train (or reuse, or resume) every run of ``study`` (:func:`~mireg.study.runner.run_study`),
    then write its report; runs that failed are in the report with their logs. While some runs wait
    for another study's choices, the runs that can train do, and the report is the interim one
    (:func:`~mireg.study.report.write_interim_report`).

    Args:
        executor: Where the runs train (default: :func:`local_executor` for the study's device).
        progress: ``progress(done, total, description)`` as each run ends.
        order: Which runs train first (:func:`~mireg.study.runner.run_study`).
    """
    records = run_study(study, executor or local_executor(study.device), progress, order)
    waiting = len(study.waiting_runs())
    if waiting:
        made = write_interim_report(study)
        return StudyOutcome(records, made.rows, made.paths, waiting)
    rows = summarize_study(study, records)
    return StudyOutcome(records, rows, write_study_report(study, records, rows))
