"""A trained run evaluated: a checkpoint of a run folder scored on one of its splits into report
files (the test report after training, ``mireg eval``), and reading a run's test report back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mireg.errors import RunError
from mireg.evaluation.evaluate import build_report, evaluate_volumes
from mireg.evaluation.report import write_reports
from mireg.preprocessing.store import VolumeInfo, VolumeStore
from mireg.progress import Progress
from mireg.training.rundir import RunDir
from mireg.training.runtime import resolve_device
from mireg.training.state import load_trained

__all__ = ["evaluate_run", "read_run_report"]


def evaluate_run(
    run: RunDir,
    split: str = "test",
    checkpoint: str = "best",
    device: torch.device | None = None,
    store: VolumeStore | None = None,
    progress: Progress | None = None,
    on_volume: Callable[[VolumeInfo, np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    tta: bool | None = None,
    keep_largest: bool | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Evaluate a run's checkpoint on one split of its patients and write the report files.

    The one evaluation of a trained run: ``mireg train`` calls it on the test split after the last
    epoch, ``mireg eval`` on any split and checkpoint.

    Args:
        run: The run folder.
        split: ``test`` or ``validation``.
        checkpoint: ``best``, ``last`` or a ``.pt`` file name of the run.
        device: Where to evaluate (default: CUDA when available).
        store: The run's store, when already open.
        progress: Progress of loading or generating the store, then of the volumes evaluated.
        on_volume: Called for each volume (see :func:`~mireg.evaluation.evaluate.evaluate_volumes`).
        tta: Test-time flips on or off; None: as the recipe's ``[inference]`` says.
        keep_largest: Largest connected components only, or not; None: as the recipe says.
            Options other than the recipe's add a suffix to the report's name
            (``report_test_best_tta``), so the training report is never replaced by another kind.

    Returns:
        The report and the paths of the files written (``report*.json|csv|md``).
    """
    device = device or resolve_device("auto")
    trained = load_trained(run.checkpoint(checkpoint), device)
    default = trained.recipe.inference.options()
    options = default.overridden(tta, keep_largest)
    if store is None:
        store = trained.recipe.data.load(progress)
    patients = getattr(run.split(), split)
    total = len(store.volumes_of(patients))
    done = 0

    def volume_done(volume: VolumeInfo, image: np.ndarray, pred: np.ndarray, truth: np.ndarray) -> None:
        nonlocal done
        if on_volume is not None:
            on_volume(volume, image, pred, truth)
        done += 1
        if progress is not None:
            progress(done, total, f"evaluating {split}")

    results = evaluate_volumes(
        trained.model,
        store,
        patients,
        trained.recipe.train.eval_batch,
        trained.recipe.train.precision,
        volume_done if progress is not None or on_volume is not None else None,
        options,
    )
    meta = {
        "run": trained.recipe.name,
        "split": split,
        "checkpoint": trained.checkpoint.path.name,
        "epoch": trained.checkpoint.epoch,
        "inference": {"tta": options.tta, "keep_largest": options.keep_largest},
    }
    report = build_report(results, store.classes[1:], meta)
    stem = run.report_stem(split, checkpoint)
    if options != default:
        stem = f"report_{split}_{Path(checkpoint).stem}{options.suffix() or '_plain'}"
    paths = write_reports(report, run.path, stem)
    return report, paths


def read_run_report(run_dir: Path) -> dict[str, Any]:
    """The test report a run wrote (``report.json``)."""
    path = RunDir(run_dir).file(RunDir.REPORT)
    if not path.is_file():
        raise RunError(
            f"{run_dir}: no {path.name} in this run directory", f"evaluate it first: mireg eval {run_dir}"
        )
    try:
        report: dict[str, Any] = json.loads(path.read_text())
        report["summary"]["dice"]["all"]
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"{path}: not a mireg report ({type(exc).__name__}: {exc})") from exc
    return report
