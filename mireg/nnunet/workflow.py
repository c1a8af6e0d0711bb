"""nnU-Net v2 trained and scored as one of mireg's runs (``mireg nnunet``).

The recipe gives the data (its store, on mireg's grid), the split (seed and labelled amount: the
same patients a mireg run of that recipe gets), the budget (``train.epochs`` x
``train.iterations_per_epoch``), the device and the test-time flips (``inference.tta``:
nnU-Net's mirroring; ``inference.keep_largest`` applies as in mireg). Everything else is nnU-Net's:
its planning, preprocessing, network, augmentation, loss and optimiser (2d configuration, fold
``all``: every labelled patient trains, as in mireg). Its predictions are scored by mireg's own
evaluator on the store's grid, so its numbers sit beside every mireg run's.

The stages, each skipped when a rerun finds it done (``runs/<name>/nnunet/``)::

    raw/           the labelled training volumes (imagesTr, labelsTr) and the validation and test
                   volumes (imagesTs) as NIfTI, with dataset.json: nnU-Net's raw data set
    preprocessed/  nnUNetv2_plan_and_preprocess -c 2d
    results/       nnUNetv2_train ... 2d all -tr MiregBudgetTrainer (one checkpoint per epoch;
                   a stopped run continues with --c)
    predictions/   nnUNetv2_predict, checkpoint_final.pth

then ``report.json`` (test) and ``report_validation_final.json`` beside the usual ``recipe.toml``,
``split.json`` and ``metrics.csv`` (nnU-Net's epochs; the last row carries the validation DSC).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mireg.data.splits import Split
from mireg.errors import MiregError, RunError, RunInterrupted
from mireg.evaluation.evaluate import VolumeResult, build_report, score_volume
from mireg.evaluation.report import write_reports
from mireg.files import atomic_write, atomic_write_text
from mireg.inference import keep_largest_components
from mireg.interrupts import interrupts_handled_by
from mireg.preprocessing.store import VolumeInfo, VolumeStore
from mireg.processes import ending_with_parent
from mireg.progress import Observer
from mireg.recipe import Recipe
from mireg.training.data import load_data
from mireg.training.rundir import MetricsLog, RunDir

__all__ = ["NNUNET_DIR", "NnUNetRun", "nnunet_version", "require_nnunet", "train_nnunet"]

#: The run folder's nnU-Net tree (its raw, preprocessed, results and predictions folders).
NNUNET_DIR = "nnunet"
DATASET = "Dataset001_mireg"
TRAINER = "MiregBudgetTrainer"
TRAINERS = Path(__file__).parent / "trainers"
_COMMANDS = ("nnUNetv2_plan_and_preprocess", "nnUNetv2_train", "nnUNetv2_predict")


def nnunet_version() -> str | None:
    """The installed nnU-Net v2's version, or None."""
    try:
        return importlib.metadata.version("nnunetv2")
    except importlib.metadata.PackageNotFoundError:
        return None


def require_nnunet() -> str:
    """The installed nnU-Net v2's version.

    Raises:
        MiregError: nnU-Net v2 is not installed.
    """
    version = nnunet_version()
    if version is None:
        raise MiregError(
            "nnU-Net v2 is not installed: the nnunet method trains it",
            "pip install 'mireg[nnunet]'",
        )
    return version


def _command(name: str) -> list[str]:
    """An nnU-Net console script as ``python -c ...``: found through its package's entry point,
    whether or not the environment's ``bin`` folder is on PATH."""
    found = importlib.metadata.entry_points(group="console_scripts", name=name)
    if not found:
        raise MiregError(f"nnU-Net v2 has no {name} command here", "pip install 'mireg[nnunet]'")
    module, _, function = next(iter(found)).value.partition(":")
    code = f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; sys.exit({function}())"
    return [sys.executable, "-c", code]


def _case_name(volume_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", volume_id)


def _write_nifti(path: Path, data: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """A ``(Z, H, W)`` array as NIfTI (voxel axes W, H, Z), atomically. nnU-Net reads it back as
    ``(Z, H, W)`` with that spacing and writes its predictions on the same grid."""
    spacing_z, spacing_h, spacing_w = spacing
    affine = np.diag([spacing_w, spacing_h, spacing_z, 1.0])
    image = nib.Nifti1Image(np.ascontiguousarray(np.transpose(data, (2, 1, 0))), affine)
    atomic_write(path, lambda tmp: nib.save(image, str(tmp)))


def _read_prediction(path: Path) -> np.ndarray:
    """A label map written by nnU-Net, as ``(Z, H, W)``."""
    try:
        data = np.asarray(nib.nifti1.load(str(path)).dataobj)
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: cannot read nnU-Net's prediction ({exc})") from exc
    return np.transpose(data, (2, 1, 0)).astype(np.int64)


@dataclass(frozen=True)
class _Device:
    """``-device`` for nnU-Net and the GPU it may see."""

    kind: str  # "cpu" or "cuda"
    index: int | None


def _device(name: str) -> _Device:
    from mireg.training.runtime import resolve_device

    device = resolve_device(name)
    return _Device(device.type, device.index)


class NnUNetRun:
    """One nnU-Net run in a mireg run folder.

    Args:
        recipe: The run's recipe (data, split, budget, device, inference).
        run: The run folder.
        observer: Receives messages and progress.
    """

    def __init__(self, recipe: Recipe, run: RunDir, observer: Observer | None = None) -> None:
        self.recipe, self.run = recipe, run
        self.obs = observer or Observer()
        self.root = run.file(NNUNET_DIR)
        self.raw = self.root / "raw" / DATASET
        self.preprocessed = self.root / "preprocessed"
        self.results = self.root / "results"
        self.predictions = self.root / "predictions"
        self.model_folder = self.results / DATASET / f"{TRAINER}__nnUNetPlans__2d" / "fold_all"
        self._child: subprocess.Popen[bytes] | None = None
        self._stopped = False

    # ------------------------------------------------------------------------------------ starting

    @staticmethod
    def resumable(run_dir: Path) -> bool:
        """Whether ``run_dir`` holds a started nnU-Net run (any stage continues on a rerun)."""
        return RunDir(run_dir).file(RunDir.RECIPE).is_file() and (run_dir / NNUNET_DIR).is_dir()

    def load(self) -> tuple[VolumeStore, Split]:
        """The recipe's store and its split: those a mireg run of the recipe gets."""
        data = load_data(self.recipe, self.obs.progress)
        return data.store, data.split

    def start(self, split: Split) -> None:
        """Create the run folder (recipe, versions, split) and its nnU-Net tree."""
        from mireg.training.runtime import hardware, resolve_device

        self.run.start(self.recipe, split, hardware(resolve_device(self.recipe.train.device), _threads()))
        self.root.mkdir()

    # ------------------------------------------------------------------------------------- running

    def fit(self, store: VolumeStore, split: Split) -> dict[str, Any]:
        """Every stage not done yet; returns the test report (also written as ``report.json``).

        Raises:
            RunInterrupted: SIGTERM or SIGINT: nnU-Net stops after its last checkpoint.
            RunError: An nnU-Net command failed (its output is above, or in the study's log).
        """
        version = require_nnunet()
        with self._forwarding_signals():
            self._export(store, split)
            self._plan()
            self._train()
            self._predict()
        val = self._score(store, split.validation, "validation", version)
        dice = val["summary"]["dice"]["all"]
        with MetricsLog(self.run.path, keep_epochs=self.recipe.train.epochs) as log:
            log.amend_last(
                {f"val_dice/{name}": stats["mean"] for name, stats in dice.items() if name != "mean"}
                | {"val_dice/mean": dice["mean"]["mean"]}
            )
        return self._score(store, split.test, "test", version)

    def _export(self, store: VolumeStore, split: Split) -> None:
        """nnU-Net's raw data set: the labelled training volumes and the held-out volumes."""
        done = self.raw / "dataset.json"
        if done.is_file():
            return
        self.obs.message(f"{self.recipe.name}: writing nnU-Net's raw data set in {self.raw}")
        if self.raw.exists():  # an export stopped midway: written again whole
            shutil.rmtree(self.raw)
        training = store.volumes_of(split.labeled)
        for v in training:
            case, spacing = _case_name(v.id), (v.spacing[2], store.spacing, store.spacing)
            image = np.asarray(store.volume_images(v), dtype=np.float32)
            _write_nifti(self.raw / "imagesTr" / f"{case}_0000.nii.gz", image, spacing)
            labels = np.asarray(store.volume_labels(v), dtype=np.uint8)
            _write_nifti(self.raw / "labelsTr" / f"{case}.nii.gz", labels, spacing)
        for v in store.volumes_of([*split.validation, *split.test]):
            spacing = (v.spacing[2], store.spacing, store.spacing)
            path = self.raw / "imagesTs" / f"{_case_name(v.id)}_0000.nii.gz"
            _write_nifti(path, np.asarray(store.volume_images(v), dtype=np.float32), spacing)
        dataset = {
            "name": self.recipe.name,
            "description": "written by mireg nnunet from the recipe's store and split",
            # mireg's store holds normalised images: nnU-Net's z-score, never its CT scheme
            "channel_names": {"0": "zscore"},
            "labels": {name: k for k, name in enumerate(store.classes)},
            "numTraining": len(training),
            "file_ending": ".nii.gz",
        }
        atomic_write_text(done, json.dumps(dataset, indent=1))  # last: marks the stage done

    def _plan(self) -> None:
        plans = self.preprocessed / DATASET / "nnUNetPlans.json"
        if (self.preprocessed / DATASET / "preprocessed.done").is_file():
            return
        self.obs.message(f"{self.recipe.name}: nnUNetv2_plan_and_preprocess (2d)")
        processes = str(max(1, _threads()))
        self._nnunet(
            "nnUNetv2_plan_and_preprocess",
            ["-d", "1", "-c", "2d", "-np", processes, "-npfp", processes, "--verify_dataset_integrity"],
        )
        if not plans.is_file():
            raise RunError(f"{plans}: nnU-Net's planning wrote no plans")
        (self.preprocessed / DATASET / "preprocessed.done").touch()

    def _train(self) -> None:
        if (self.model_folder / "checkpoint_final.pth").is_file():
            return
        device = _device(self.recipe.train.device)
        args = ["1", "2d", "all", "-tr", TRAINER, "-device", device.kind]
        if (self.model_folder / "checkpoint_latest.pth").is_file():
            args.append("--c")
            self.obs.message(f"{self.recipe.name}: nnUNetv2_train continues from its last checkpoint")
        else:
            self.obs.message(f"{self.recipe.name}: nnUNetv2_train (2d, fold all)")
        train = self.recipe.train
        budget = {
            "epochs": train.epochs,
            "iterations": train.iterations_per_epoch,
            "val_iterations": max(1, round(train.iterations_per_epoch / 5)),
            "seed": self.recipe.seed,
            "threads": _threads(),
            "run_dir": str(self.run.path),
        }
        self._nnunet("nnUNetv2_train", args, {"MIREG_NNUNET_BUDGET": json.dumps(budget)}, device)
        if not (self.model_folder / "checkpoint_final.pth").is_file():
            raise RunError(f"{self.model_folder}: nnU-Net's training wrote no checkpoint_final.pth")

    def _predict(self) -> None:
        done = self.predictions / "predictions.done"
        if done.is_file():
            return
        self.obs.message(f"{self.recipe.name}: nnUNetv2_predict (validation and test volumes)")
        device = _device(self.recipe.train.device)
        args = ["-i", str(self.raw / "imagesTs"), "-o", str(self.predictions), "-d", "1", "-c", "2d"]
        args += ["-f", "all", "-tr", TRAINER, "-chk", "checkpoint_final.pth", "-device", device.kind]
        args += ["-npp", "1", "-nps", "1", "--disable_progress_bar"]
        if not self.recipe.inference.tta:
            args.append("--disable_tta")
        self._nnunet("nnUNetv2_predict", args, device=device)
        done.touch()

    def _score(self, store: VolumeStore, patients: Sequence[str], split: str, version: str) -> dict[str, Any]:
        """mireg's evaluator on nnU-Net's predictions of ``patients``; writes the report files."""
        keep_largest = self.recipe.inference.keep_largest
        results: list[VolumeResult] = []
        volumes: list[VolumeInfo] = store.volumes_of(patients)
        for i, v in enumerate(volumes):
            prediction = _read_prediction(self.predictions / f"{_case_name(v.id)}.nii.gz")
            truth = np.asarray(store.volume_labels(v))
            if prediction.shape != truth.shape:
                raise RunError(
                    f"{self.predictions}: nnU-Net's prediction of {v.id} has shape {prediction.shape}, "
                    f"the volume {truth.shape}"
                )
            if keep_largest:
                prediction = keep_largest_components(prediction, len(store.classes))
            results.append(score_volume(store, v, prediction, truth))
            self.obs.progress(i + 1, len(volumes), f"scoring {split}")
        meta = {
            "run": self.recipe.name,
            "split": split,
            "checkpoint": "checkpoint_final.pth",
            "epoch": self.recipe.train.epochs,
            "inference": {"tta": self.recipe.inference.tta, "keep_largest": keep_largest},
            "method": f"nnU-Net v2 {version}, 2d, fold all, {TRAINER}",
        }
        report = build_report(results, store.classes[1:], meta)
        # the test report is the run's report.json (a study takes the run as finished by it)
        stem = Path(RunDir.REPORT).stem if split == "test" else self.run.report_stem(split, "final")
        write_reports(report, self.run.path, stem)
        return report

    # --------------------------------------------------------------------------- nnU-Net's commands

    def _nnunet(
        self, name: str, args: list[str], extra: dict[str, str] | None = None, device: _Device | None = None
    ) -> None:
        """Run one nnU-Net command with the run's nnU-Net folders; its output goes to ours."""
        env = {
            **os.environ,
            "nnUNet_raw": str(self.root / "raw"),
            "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results),
            "nnUNet_extTrainer": str(TRAINERS),
            "MPLBACKEND": "Agg",
            **(extra or {}),
        }
        if device is not None and device.kind == "cpu":
            # nnU-Net's augmentation workers would compete with training for the few cores
            env.setdefault("nnUNet_n_proc_DA", "0")
        if device is not None and device.index is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(device.index)
        sys.stdout.flush()
        self._child = subprocess.Popen(
            [*_command(name), *args], env=env, stdin=subprocess.DEVNULL, preexec_fn=ending_with_parent()
        )
        try:
            code = self._child.wait()
        finally:
            self._child = None
        if self._stopped:
            raise RunInterrupted(
                f"{self.recipe.name}: stopped during {name}",
                f"continue with: mireg nnunet --resume {self.run.path}",
            )
        if code != 0:
            raise RunError(f"{name} failed (exit status {code}) for {self.run.path}; its output is above")

    @contextmanager
    def _forwarding_signals(self) -> Iterator[None]:
        """SIGTERM and SIGINT stop the running nnU-Net command (it keeps its last checkpoint)."""

        def stop(signum: int, frame: object) -> None:
            self._stopped = True
            if self._child is not None:
                self._child.send_signal(signal.SIGTERM)

        with interrupts_handled_by(stop):
            yield
        if self._stopped:
            raise RunInterrupted(
                f"{self.recipe.name}: stopped", f"continue with: mireg nnunet --resume {self.run.path}"
            )


def _threads() -> int:
    """CPU threads for nnU-Net: ``OMP_NUM_THREADS`` when set (a study sets it per run), else every core."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else (os.cpu_count() or 1)


def train_nnunet(
    recipe: Recipe | None = None,
    resume: Path | None = None,
    fresh: bool = False,
    observer: Observer | None = None,
) -> tuple[RunDir, dict[str, Any]]:
    """Train nnU-Net on a recipe into a new run folder, or continue the run folder ``resume``; the
    run folder and its test report. What ``mireg nnunet`` does.

    Raises:
        MiregError: nnU-Net is not installed, the run folder is taken or not an nnU-Net run, the
            data cannot be loaded or split, or an nnU-Net command failed.
        RunInterrupted: Stopped by SIGTERM or SIGINT (the run continues with ``resume``).
    """
    from mireg.recipe import load_recipe

    require_nnunet()
    if resume is not None:
        run = RunDir.open(resume)
        if not NnUNetRun.resumable(resume):
            raise RunError(f"{resume}: not an nnU-Net run (no {NNUNET_DIR}/ folder)")
        recipe = load_recipe(run.file(RunDir.RECIPE))
    elif recipe is None:
        raise MiregError("give a recipe, or the run folder to continue")
    else:
        run = RunDir.choose(recipe.train.runs_dir, recipe.name, fresh)
    job = NnUNetRun(recipe, run, observer)
    store, split = job.load()
    if resume is None:
        job.start(split)
    elif run.split() != split:
        raise RunError(f"{run.file(RunDir.SPLIT)}: differs from the split its recipe makes now")
    return run, job.fit(store, split)
