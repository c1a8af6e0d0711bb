"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Parametrize a test over these to run it on the CPU and, marked ``cuda``, on a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def wait_for(
    condition: Callable[[], bool],
    timeout: float = 300,
    shown: Callable[[], str] | None = None,
    every: float = 0.1,
) -> None:
    """Wait until ``condition()`` holds, checking every ``every`` seconds; past ``timeout`` seconds,
    fail, with ``shown()`` (e.g. the end of a log) in the message."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out" + (f":\n{shown()}" if shown else "")
        time.sleep(every)


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks/<name>.py`` (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def tiny_recipe(runs_dir: Path, **changes: Any) -> dict[str, Any]:
    """A recipe that trains in seconds on the CPU: 12 tiny patients, 32x32 crops, a narrow UNet."""
    recipe: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "data": {
            "name": "phantom",
            "patients": 12,
            "spacing": 5.0,
            "canvas": 48,
            "labeled_ratio": 0.5,
            "val_patients": 2,
            "test_patients": 2,
        },
        "backbone": {"name": "unet", "num_classes": 4, "base_channels": 4},
        "regularizers": [
            {"name": "consistency", "weight": 10.0},
            {"name": "mutual_information", "weight": 0.1, "subheads": 2, "clusters": 5},
        ],
        "optim": {"lr": 1e-5, "warmup_epochs": 1, "multiplier": 100, "min_lr": 1e-5},
        "augment": {"crop": 32},
        "train": {
            "epochs": 2,
            "iterations_per_epoch": 3,
            "labeled_batch": 2,
            "unlabeled_batch": 3,
            "device": "cpu",
            "eval_batch": 16,
            "log_every": 2,
            "runs_dir": str(runs_dir),
        },
    }
    for key, value in changes.items():
        recipe[key] = value
    return recipe


def train_steps(raw: dict[str, Any], steps: int, **train: Any) -> tuple[list[dict[str, float]], Any]:
    """Train the first ``steps`` steps of recipe ``raw`` (its ``[train]`` updated with ``train``);
    the logged values of each step and the trainer."""
    from mireg.recipe import validate_recipe
    from mireg.training.loop import Trainer

    raw = copy.deepcopy(raw)
    raw["train"].update(train)
    trainer = Trainer(validate_recipe(raw, "test"))
    trainer.setup()
    trainer.state.model.train()
    out = []
    for _ in range(steps):
        logs = trainer.step()
        assert logs is not None
        out.append({k: float(v) for k, v in logs.items()})
    return out, trainer


def synthetic_scan() -> tuple[Any, Any]:
    """One synthetic cardiac scan as a scanner would store it (uint16, ``(X, Y, Z)``) and an oblique
    affine (30 degrees in-plane, anisotropic, offset)."""
    import numpy as np

    from mireg.data.phantom import generate_patient

    patient = generate_patient(40, seed=9)
    image, _ = patient.frames[patient.ed_frame]
    stored = np.round(image / image.max() * 4000).astype(np.uint16)
    a = np.deg2rad(30.0)
    affine = np.array(
        [
            [np.cos(a) * 1.4, -np.sin(a) * 1.6, 0, 10.0],
            [np.sin(a) * 1.4, np.cos(a) * 1.6, 0, -3.0],
            [0, 0, 7.0, 2.0],
            [0, 0, 0, 1],
        ]
    )
    return stored, affine


def write_dicom_series(
    folder: Path,
    stored: Any,
    affine: Any,
    *,
    names: list[str] | None = None,
    series_uid: str | None = None,
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    frame_of_reference: str = "1.2.826.0.1.3680043.8.498.2",
    slope: float = 1.0,
    intercept: float = 0.0,
    description: str = "cine",
    trigger_time: float | list[float] | None = None,
    temporal_position: int | None = None,
    photometric: str = "MONOCHROME2",
    bits_stored: int = 16,
    position_decimals: int = 6,
) -> list[Path]:
    """Write an ``(X, Y, Z)`` volume of stored (uint16) values as a DICOM MR series with pydicom.

    ``affine`` maps voxel indices to RAS+ mm, as a NIfTI affine; the series' headers get the
    matching ImagePositionPatient, ImageOrientationPatient and PixelSpacing (DICOM is LPS+).
    ``names[z]`` is the file name of slice ``z`` (default ``slice_z.dcm``); InstanceNumber counts
    down, so that neither names nor instance numbers give the slice order.

    One call writes one frame of a cine series: call it once per frame with one ``folder``,
    ``series_uid`` and distinct ``names``, giving each frame its ``trigger_time`` (ms; one for
    all its slices, or one per slice) and/or ``temporal_position`` (TemporalPositionIdentifier);
    neither is written unless given. ``photometric`` and ``bits_stored`` set
    PhotometricInterpretation and BitsStored (HighBit follows); ImagePositionPatient is written
    with ``position_decimals`` decimals.
    """
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    stored = np.asarray(stored)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    col_spacing, row_spacing = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    orientation = [*(lps[:3, 0] / col_spacing), *(lps[:3, 1] / row_spacing)]
    series_uid = series_uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for z in range(stored.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Test^Patient", "", "O"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", ""
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.SeriesDescription = "MR", 3, description
        ds.InstanceNumber = stored.shape[2] - z
        ds.PositionReferenceIndicator = ""
        ds.ImagePositionPatient = [f"{v:.{position_decimals}f}" for v in lps[:3, 3] + z * lps[:3, 2]]
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
        ds.PixelSpacing = [f"{row_spacing:.6f}", f"{col_spacing:.6f}"]
        ds.SliceThickness = f"{np.linalg.norm(lps[:3, 2]):.6f}"
        ds.Rows, ds.Columns = stored.shape[1], stored.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
        if trigger_time is not None:
            ds.TriggerTime = f"{trigger_time[z] if isinstance(trigger_time, list) else trigger_time:g}"
        if temporal_position is not None:
            ds.TemporalPositionIdentifier = temporal_position
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:g}", f"{intercept:g}"
        ds.PixelData = np.ascontiguousarray(stored[:, :, z].T.astype(np.uint16)).tobytes()
        path = folder / (names[z] if names else f"slice_{z}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def strip_attribute(paths: list[Path], keyword: str, how: str) -> None:
    """Delete ``keyword`` from every DICOM file (``how="deleted"``), or make it empty (``"empty"``),
    as anonymisers do."""
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path)
        if how == "deleted":
            delattr(ds, keyword)
        else:
            ds[keyword].value = None
        ds.save_as(path)


def run_fresh_python(
    script: str, *args: str | Path, cwd: Path | None = None, timeout: float = 300, **env: str
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run ``python -c script ARGS`` in a fresh interpreter that imports the mireg these tests import
    (and ``env`` set); the JSON its last line prints after ``RESULT ``, and the finished process."""
    import mireg

    root = str(Path(mireg.__file__).resolve().parent.parent)
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    environment = {**os.environ, "PYTHONPATH": path, **env}
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        env=environment,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert last.startswith("RESULT "), (done.stdout[-3000:], done.stderr[-3000:])
    result: dict[str, Any] = json.loads(last.removeprefix("RESULT "))
    return result, done


@contextmanager
def terminated_when_made(make: str) -> Iterator[None]:
    """Inside the block, SIGTERM arrives the instant ``tempfile.<make>`` (``mkstemp`` or
    ``mkdtemp``) has made a temporary, before it returns; it is acted on as the CLI does (raising
    ``KeyboardInterrupt``)."""
    real = getattr(tempfile, make)

    def made_then_terminated(*args: Any, **kwargs: Any) -> Any:
        made = real(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return made

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    setattr(tempfile, make, made_then_terminated)
    try:
        yield
    finally:
        setattr(tempfile, make, real)
        signal.signal(signal.SIGTERM, previous)
