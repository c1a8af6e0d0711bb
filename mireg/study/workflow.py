"""A study as ``mireg study`` runs it, callable from Python: open and check the study file
(:func:`open_study`), then train its runs and write the report (:func:`conduct`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mireg.study.plan import Study
from mireg.study.report import Row, summarize_study, write_study_report
from mireg.study.runner import gpu_count, run_study
from mireg.study.runs import RunRecord
from mireg.study.spec import load_study
from mireg.training.runtime import resolve_device

__all__ = ["StudyOutcome", "conduct", "default_jobs", "open_study"]


def open_study(path: Path, quick: bool = False, device: str | None = None) -> Study:
    """The study of file ``path``, every configuration's recipe checked before anything trains.

    Args:
        quick: The study's ``[quick]`` preset (fewer seeds and epochs).
        device: ``train.device`` for every run (default: each recipe's).

    Raises:
        RecipeError: The study file, or a recipe it makes, is invalid; or ``device`` is unknown.
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


@dataclass(frozen=True)
class StudyOutcome:
    """A study :func:`conduct` went through.

    Attributes:
        records: Every run's record, in plan order.
        rows: The report's rows.
        paths: The report files written (``study.md`` first).
    """

    records: list[RunRecord]
    rows: list[Row]
    paths: list[Path]

    @property
    def failed(self) -> list[RunRecord]:
        """The runs that did not finish (failed or interrupted): a rerun retries them."""
        return [r for r in self.records if r.status != "done"]


def conduct(
    study: Study, jobs: int = 1, progress: Callable[[int, int, str], None] | None = None
) -> StudyOutcome:
    """Train (or reuse, or resume) every run of ``study`` (:func:`~mireg.study.runner.run_study`),
    then write its report; runs that failed are in the report with their logs."""
    records = run_study(study, jobs, progress)
    rows = summarize_study(study, records)
    return StudyOutcome(records, rows, write_study_report(study, records, rows))
