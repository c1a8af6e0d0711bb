"""A study's finished runs without their checkpoints (``mireg study STUDY --archive DIR``).

The archive is small (a run's recipe, split, metrics, test reports, versions and log: about 50 kB;
checkpoints and the curves plot are left out, ``metrics.csv`` holding the curves' numbers), so it
can be kept beside a paper, committed, or carried to another machine. It is a study folder: a
study started from a copy of it (``runs/studies/NAME``) reuses every run in it and trains the rest.
Runs not finished are left out, since a run folder with results but no checkpoint cannot go on.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mireg.errors import MiregError
from mireg.files import atomic_write
from mireg.study.plan import Study
from mireg.study.runs import RunKey
from mireg.training.rundir import RunDir

__all__ = ["Archived", "archive_study"]


@dataclass(frozen=True)
class Archived:
    """What :func:`archive_study` did.

    Attributes:
        folder: The archive (``DIR/NAME``).
        runs: The finished runs now in it.
        left_out: Runs of the study started but not finished, not archived.
    """

    folder: Path
    runs: list[str]
    left_out: int


def archive_study(study: Study, into: Path) -> Archived:
    """Copy the study's finished runs, their recipes and logs, and its reports where written (the
    final one, the interim one) into ``into/NAME`` (``NAME``: the study folder's name), leaving out
    checkpoints (``*.pt``), nnU-Net's trees and the curves plot. Runs already in the archive are
    replaced by the study's copy, one at a time; others there (from another machine) are kept. With
    no run finished, nothing is written.

    Raises:
        MiregError: ``into/NAME`` is (or is inside) the study's own folder, or a file cannot be read
            or written (naming it).
    """
    from mireg.nnunet.workflow import NNUNET_DIR

    target = into / study.out.name
    here, there = study.out.resolve(), target.resolve()
    if there == here or there.is_relative_to(here) or here.is_relative_to(there):
        raise MiregError(
            f"{target}: the archive would hold, or be inside, the study's own folder {study.out}",
            "archive into another folder, e.g. docs/studies",
        )
    plan, _ = study.standing()
    finished = [
        RunKey(run.method, run.config, run.amount, run.seed)
        for run in plan
        if run.state == "done" and run.config is not None
    ]
    left_out = sum(run.state == "resume" for run in plan)
    if not finished:
        return Archived(target, [], left_out)
    leave_out = ("*.pt", NNUNET_DIR, RunDir.CURVES)
    try:
        for key in finished:
            _replace_tree(study.run_dir(key).path, target / "runs" / key.name, leave_out)
            if study.recipe_file(key).is_file():  # (the run's own recipe.toml is in its folder)
                _replace_file(study.recipe_file(key), target / "recipes" / f"{key.name}.toml")
            if study.log(key).is_file():
                _replace_file(study.log(key), target / "logs" / f"{key.name}.log")
        for report in (*study.report_files(), *study.report_files(interim=True)):
            if report.is_file():
                _replace_file(report, target / report.name)
    except OSError as exc:
        where = exc.filename or target
        raise MiregError(
            f"{where}: cannot archive the study there ({exc.strerror or exc})",
            f"the runs archived before it are complete in {target}; fix the cause and archive again",
        ) from None
    return Archived(target, [key.name for key in finished], left_out)


def _replace_file(source: Path, destination: Path) -> None:
    """Copy ``source`` over ``destination``, swapped in whole."""

    def copy(tmp: Path) -> None:
        shutil.copy2(source, tmp)

    atomic_write(destination, copy)


def _replace_tree(source: Path, destination: Path, leave_out: tuple[str, ...]) -> None:
    """Copy folder ``source`` but the names matching ``leave_out`` to ``destination``: into a folder
    beside it first, then swapped in, so that an archive never holds half a run. A swap that was cut
    short before (the earlier copy set aside, the new one not yet in place) is undone first."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.name}.partial")
    old = destination.with_name(f".{destination.name}.old")
    if old.exists() and not destination.exists():
        old.rename(destination)
    for leftover in (partial, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    try:
        shutil.copytree(source, partial, ignore=shutil.ignore_patterns(*leave_out))
        if destination.exists():
            destination.rename(old)
        partial.rename(destination)
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    if old.exists():
        shutil.rmtree(old)
