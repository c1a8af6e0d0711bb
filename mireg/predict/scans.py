"""Prediction on new scans: NIfTI files or DICOM series in, NIfTI label maps or DICOM SEG out.

A :class:`Predictor` is a network (a trained run's, through torch, or an exported ONNX model's,
through ONNX Runtime) with what it needs to know of its training data; :mod:`mireg.inference`
segments each scan with it on the scan's own grid. This module imports neither torch nor the
optional DICOM and ONNX libraries until a command needs them: ``mireg predict model.onnx`` runs
without torch.

Outputs are named after their input: ``scan.nii.gz`` -> ``OUT/scan.nii.gz``; the DICOM folder
``case7/`` -> ``OUT/case7.dcm`` (SEG) or ``OUT/case7.nii.gz``; probabilities go to
``OUT/<name>_probabilities.nii.gz`` (``(X, Y, Z, C)`` float32 on the scan's grid). A cine scan (a
4D NIfTI ``(X, Y, Z, T)``, or a DICOM series with several frames at each position) is segmented
frame by frame, every frame or the ones asked for: its NIfTI label map is 4D, with one frame per
frame segmented, and a DICOM cine gets one SEG per frame (``OUT/case7_frame03.dcm``).
``OUT/volumes.csv`` has the volume of each structure in each scan and frame (ml, on the scan's
own grid) and, for cardiac classes, ``OUT/cardiac_function.csv`` the ventricles' volumes, stroke
volumes and ejection fractions and the LV mass of each cine scan whose end-diastole and end-systole
frames are known (:mod:`mireg.predict.volumes`).

Nothing a user has is replaced: every output file is planned, and the whole plan checked, before
anything is read or written: no output is an input or lies in an input DICOM folder, no two outputs
share a name, and none exists already unless ``overwrite`` is given. Every file is written
atomically, with the permissions of any new file of the user.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mireg import registry
from mireg.errors import DataError, MiregError, PluginError
from mireg.inference import (
    InferenceOptions,
    Predictor,
    model_identity,
    predict_volume,
)
from mireg.io.formats import LabelMapWriter, ModelInfo, Scan, ScanReader
from mireg.io.nifti import nifti_reference, write_label_map
from mireg.progress import Progress

__all__ = [
    "FrameChoice",
    "Job",
    "Scan",
    "check_outputs",
    "collect_inputs",
    "is_exported_model",
    "load_predictor",
    "plan_jobs",
    "predict_scans",
]

_FULL_INSTALL = (
    "install mireg with torch (pip install mireg); an exported model (mireg export) predicts "
    "without it: mireg predict model.onnx ..."
)


def is_exported_model(path: Path) -> bool:
    """Whether ``path`` names an exported model (``model.onnx``, or its ``model.json``)."""
    return path.suffix in (".onnx", ".json")


def load_predictor(model: Path, checkpoint: str = "best", device: str = "auto") -> Predictor:
    """The predictor of a run directory, a checkpoint file, or an exported ONNX model.

    Raises:
        CheckpointError: No such run, checkpoint or model; or one that does not load.
        MiregError: A run or checkpoint in an environment without torch (the runtime install).
    """
    if is_exported_model(model):
        from mireg.export.portable import load_onnx_predictor

        return load_onnx_predictor(model)
    try:
        import torch  # noqa: F401 (only to tell the runtime install from the full one)
    except ImportError:
        raise MiregError(
            f"{model}: predicting with a run or checkpoint needs torch, which is not installed",
            _FULL_INSTALL,
        ) from None
    from mireg.evaluation.evaluate import network_function
    from mireg.export.exporters import weights_sha256
    from mireg.training.rundir import checkpoint_file
    from mireg.training.runtime import resolve_device
    from mireg.training.state import load_trained

    trained = load_trained(checkpoint_file(model, checkpoint), resolve_device(device, "--device"))
    return Predictor(
        network=network_function(trained.model, trained.recipe.train.precision),
        preprocessing=trained.preprocessing,
        batch=trained.recipe.train.eval_batch,
        options=trained.recipe.inference.options(),
        name=trained.recipe.name,
        version=str(trained.checkpoint.state.get("mireg_version", "")),
        identity=model_identity(
            trained.checkpoint.path.name, trained.checkpoint.epoch, weights_sha256(trained.model)
        ),
    )


# --------------------------------------------------------------------------------------- inputs


def _readers() -> tuple[list[tuple[ScanReader, bool]], list[str]]:
    """The scan readers, each with whether it is mireg's own, in the order they are asked: file
    formats (their folders' files) before folder formats (DICOM), mireg's own before those of
    plugins, then by name; and why each plugin reader that does not load does not (it is left out: a
    broken plugin breaks no other format)."""
    readers: list[tuple[ScanReader, bool]] = []
    broken: list[str] = []
    for name in registry.available("reader"):
        own = registry.is_own("reader", name)
        try:
            readers.append((registry.format_of("reader", name), own))
        except PluginError as exc:
            if own:
                raise
            broken.append(exc.message)
    return sorted(readers, key=lambda pair: (pair[0].reads_folders, not pair[1])), broken


def _nothing_read(path: Path, readers: list[tuple[ScanReader, bool]], broken: list[str]) -> DataError:
    """The error for a path no reader reads: what mireg's own readers read, then what plugins' do,
    and the plugin readers left out."""
    unloaded = f" ({'; '.join(broken)})" if broken else ""
    if path.is_dir():
        own = " and no ".join(r.contents for r, is_own in readers if is_own)
        added = "".join(f", nor {r.contents}" for r, is_own in readers if not is_own)
        return DataError(f"{path}: holds no {own}{added}{unloaded}")
    kinds = " or ".join(r.file_kind for r, _ in readers if r.file_kind is not None)
    return DataError(
        f"{path}: not {kinds}{unloaded}",
        "give DICOM series as folders (one series per folder, or --series UID)",
    )


def collect_inputs(inputs: Iterable[Path], series_uid: str | None = None) -> list[Scan]:
    """The scans named directly or found (non-recursively) in the folders given.

    A folder is read by the first reader that finds something in it (:mod:`mireg.io.formats`): a
    folder holding NIfTI files contributes them (hidden files skipped); any other folder is read as
    DICOM: its one series, or the one ``series_uid`` names. A file named directly must be of a file
    format (NIfTI, or one a plugin adds).

    Raises:
        DataError: A missing path, a file no reader reads, a folder with nothing any reader reads,
            two inputs with the same output name, a DICOM folder with several series and none chosen
            (they are listed), a bad DICOM file or series (named), or a NIfTI file of more than 4
            dimensions.
    """
    readers, broken = _readers()
    found: list[tuple[Path, ScanReader]] = []
    for path in inputs:
        if not path.exists():
            raise DataError(f"{path}: no such file or folder")
        for reader, _ in readers:
            paths = reader.find(path)
            if paths:
                found.extend((p, reader) for p in paths)
                break
        else:
            raise _nothing_read(path, readers, broken)
    names = [reader.output_name(p) for p, reader in found]
    for i, name in enumerate(names):
        if name in names[:i]:
            clash = found[names.index(name)][0]
            raise DataError(
                f"two inputs share the output name {clash.name or name!r} ({clash} and {found[i][0]})",
                "predict them into different output folders",
            )
    return [reader.open(p, series_uid) for p, reader in found]


# ------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class FrameChoice:
    """Which frames of cine scans to segment, and which are end-diastole and end-systole.

    Frames are numbered from 1. ``frames=None`` segments every frame. ``ed`` and ``es`` (both or
    neither) name the phases for the ejection fractions; without them, a 4D NIfTI scan takes them
    from an ACDC ``Info.cfg`` beside it, if there is one.
    """

    frames: tuple[int, ...] | None = None
    ed: int | None = None
    es: int | None = None

    @property
    def given(self) -> bool:
        return self.frames is not None or self.ed is not None or self.es is not None


@dataclass(frozen=True)
class Job:
    """What predicting one scan reads and writes.

    Attributes:
        scan: The input.
        writer: The label maps' format.
        frames: The frames segmented (indices from 0, in time order; ``(0,)`` for one volume).
        phases: Frame index -> ``ED`` or ``ES``, where known.
        labels: The label map, or (cine DICOM to SEG) one SEG per frame segmented.
        probabilities: The probabilities file, if asked for.
        overlays: The overlay PNGs (one per frame segmented), if asked for.
    """

    scan: Scan
    writer: LabelMapWriter
    frames: tuple[int, ...]
    phases: dict[int, str] = field(default_factory=dict)
    labels: tuple[Path, ...] = ()
    probabilities: Path | None = None
    overlays: tuple[Path, ...] = ()

    @property
    def outputs(self) -> list[Path]:
        return [*self.labels, *([self.probabilities] if self.probabilities else []), *self.overlays]


def _writer(scan: Scan, output_format: str | None) -> LabelMapWriter:
    name = scan.default_writer if output_format is None else output_format
    if name not in registry.available("writer"):
        raise DataError(f"--format: {name!r} is not one of {', '.join(registry.available('writer'))}")
    writer: LabelMapWriter = registry.format_of("writer", name)
    return writer


def _frames_of(scan: Scan, choice: FrameChoice) -> tuple[tuple[int, ...], dict[int, str]]:
    """The frames of ``scan`` to segment (from 0) and the known phases, checked against its frames."""
    count = scan.n_frames
    if count == 1:
        if choice.given:
            raise DataError(
                f"{scan.path}: one volume, not a cine scan: --frames, --ed and --es apply to cine "
                "scans (a 4D NIfTI, or a DICOM series with several frames at each position)"
            )
        return (0,), {}
    numbers = list(choice.frames) if choice.frames is not None else list(range(1, count + 1))
    for option, value in (("--frames", max(numbers)), ("--ed", choice.ed), ("--es", choice.es)):
        if value is not None and value > count:
            raise DataError(f"{scan.path}: {option} asks for frame {value}; the scan has frames 1 to {count}")
    if choice.ed is not None and choice.es is not None:
        phases = {choice.ed - 1: "ED", choice.es - 1: "ES"}
        missing = [f"{name} (frame {i + 1})" for i, name in phases.items() if i + 1 not in numbers]
        if missing:
            raise DataError(
                f"{scan.path}: {' and '.join(missing)} not among the frames segmented (--frames)",
                "add them to --frames",
            )
    else:  # from ACDC's Info.cfg beside a 4D NIfTI, where the phases segmented are known
        ed_es = scan.phases()
        named = zip(("ED", "ES"), ed_es or (), strict=False)
        phases = {n - 1: name for name, n in named if n <= count and n in numbers}
    return tuple(n - 1 for n in numbers), phases


def plan_jobs(
    scans: Sequence[Scan],
    out_dir: Path,
    output_format: str | None = None,
    choice: FrameChoice = FrameChoice(),
    save_probabilities: bool = False,
    overlay: bool = False,
) -> list[Job]:
    """Every scan's output files and frames, checked for the scans' formats and frames.

    Raises:
        DataError: A format the scan cannot have, frames it does not have, a NIfTI file that is
            unreadable or has more than 4 dimensions (its header is read here), or a DICOM series a
            SEG cannot reference (no study or frame of reference, say).
    """
    if (choice.ed is None) != (choice.es is None):
        raise DataError("--ed and --es: give both or neither")
    jobs = []
    for scan in scans:
        count = scan.n_frames  # a NIfTI file's header is read here
        writer = _writer(scan, output_format)
        frames, phases = _frames_of(scan, choice)
        name, cine = scan.name, count > 1
        width = max(2, len(str(count)))
        tags = [f"_frame{t + 1:0{width}d}" if cine else "" for t in frames]
        writer.check(scan, frames)
        jobs.append(
            Job(
                scan,
                writer,
                frames,
                phases,
                writer.paths(scan, out_dir, tags),
                out_dir / f"{name}_probabilities.nii.gz" if save_probabilities else None,
                tuple(out_dir / "overlays" / f"{name}{tag}.png" for tag in tags) if overlay else (),
            )
        )
    return jobs


def _file_id(path: Path) -> tuple[int, int]:
    """What tells a file apart whatever the path to it (a link, another spelling): device and inode."""
    status = path.stat()
    return status.st_dev, status.st_ino


def check_outputs(jobs: Sequence[Job], tables: Sequence[Path], overwrite: bool = False) -> None:
    """Refuse a plan that would write over an input, write one file twice, or replace a file.

    Args:
        jobs: The plan (:func:`plan_jobs`).
        tables: Further files written once for all scans (the volume tables).
        overwrite: Replace outputs that exist already (never inputs).

    Raises:
        DataError: Naming the files: an output that is an input, an output in an input DICOM
            folder, two outputs of one name, outputs that exist (without ``overwrite``).
    """
    producers: dict[Path, str] = {}
    planned = [(str(j.scan.path), p) for j in jobs for p in j.outputs]
    planned += [("the volume tables", t) for t in tables]
    for source, path in planned:
        key = Path(os.path.normcase(path.resolve()))
        if key in producers:
            raise DataError(
                f"{path}: two outputs would have this name (from {producers[key]} and {source})",
                "predict them into different output folders",
            )
        producers[key] = source
    inputs = {_file_id(f) for j in jobs for f in j.scan.input_files}  # every input exists: it was read
    folders = [j.scan.path.resolve() for j in jobs if j.scan.path.is_dir()]
    for path in producers:
        if path.exists() and _file_id(path) in inputs:
            raise DataError(
                f"{path}: is an input; mireg predict never writes over its inputs",
                "choose another output folder (-o)",
            )
        if path.parent in folders:
            raise DataError(
                f"{path.parent}: is an input DICOM folder; outputs written there would mix with the "
                "series' files",
                "choose another output folder (-o)",
            )
    existing = sorted(str(p) for p in producers if p.exists())
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (f" and {len(existing) - 5} more" if len(existing) > 5 else "")
        raise DataError(
            f"{len(existing)} output file(s) exist already: {shown}",
            "choose another output folder, or replace them with --overwrite",
        )


# -------------------------------------------------------------------------------------- outputs


def predict_scans(
    predictor: Predictor,
    scans: list[Scan],
    out_dir: Path,
    output_format: str | None = None,
    options: InferenceOptions | None = None,
    save_probabilities: bool = False,
    overlay: bool = False,
    progress: Progress | None = None,
    frames: FrameChoice = FrameChoice(),
    overwrite: bool = False,
) -> list[Path]:
    """Segment every scan into ``out_dir``, after checking the whole plan (:func:`check_outputs`).

    Args:
        predictor: The network and its preprocessing (:func:`load_predictor`).
        scans: The inputs (:func:`collect_inputs`).
        out_dir: The output folder (created if needed).
        output_format: ``nifti`` or ``seg``; default: ``seg`` for DICOM inputs, ``nifti`` for NIfTI.
        options: Test-time augmentation and largest components; default: the predictor's.
        save_probabilities: Also write the class probabilities (``<name>_probabilities.nii.gz``).
        overlay: Also write PNGs of slices with the predicted contours to ``out_dir/overlays/``.
        progress: ``progress(done, total, description)``.
        frames: Which frames of cine scans to segment, and their ED and ES.
        overwrite: Replace output files that exist already (inputs never).

    Returns:
        The label maps written (SEG files or NIfTI).
    """
    from mireg.predict.volumes import (
        FUNCTION_CSV,
        VOLUMES_CSV,
        VolumeTable,
        structure_volumes,
        voxel_volume_ml,
    )

    jobs = plan_jobs(scans, out_dir, output_format, frames, save_probabilities, overlay)
    classes = predictor.preprocessing.classes
    table = VolumeTable(classes)
    tables = [out_dir / VOLUMES_CSV] + ([out_dir / FUNCTION_CSV] if table.has_function else [])
    check_outputs(jobs, tables, overwrite)
    options = predictor.options if options is None else options
    total, done, written = sum(len(j.frames) for j in jobs), 0, list[Path]()
    model = ModelInfo(tuple(classes), predictor.name, predictor.identity or predictor.version)
    for job in jobs:
        scan, cine = job.scan, job.scan.n_frames > 1
        labels, probabilities = [], []
        for i, frame in enumerate(scan.read(job.frames)):
            result = predict_volume(
                predictor.network,
                frame.image,
                frame.spacing,
                predictor.preprocessing,
                predictor.batch,
                options,
            )
            labels.append(result.labels)
            if save_probabilities:
                probabilities.append(result.probabilities)
            volumes = structure_volumes(result.labels, voxel_volume_ml(frame.affine), classes)
            table.add(scan.name, volumes, frame.t + 1 if cine else None, job.phases.get(frame.t))
            described = scan.path.name + (f" frame {frame.t + 1}" if cine else "")
            if job.overlays:
                from mireg.plots import save_overlay

                save_overlay(
                    job.overlays[i],
                    frame.image.transpose(2, 0, 1),
                    result.labels.transpose(2, 0, 1),
                    None,
                    described,
                )
            if job.writer.per_frame:  # written while the frame's sources are at hand
                job.writer.write(job.labels[i], result.labels, scan, frame, model)
            done += 1
            if progress is not None:
                progress(done, total, described)
        if not job.writer.per_frame:
            stacked = np.stack(labels, axis=3) if cine else labels[0]
            job.writer.write(job.labels[0], stacked, scan, None, model)
        if job.probabilities is not None:
            stacked = np.stack(probabilities, axis=3) if cine else probabilities[0]
            write_label_map(job.probabilities, stacked, nifti_reference(scan), np.float32)
        written.extend(job.labels)
    table.write(out_dir)
    return written
