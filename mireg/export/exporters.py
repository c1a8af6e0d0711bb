"""``mireg export``: a trained run's network as ONNX or TorchScript, with its model card.

ONNX goes through torch's ``torch.export``-based exporter at opset :data:`OPSET`, with the batch,
height and width dynamic (height and width multiples of the backbone's ``size_multiple``, which the
card records); a backbone that cannot be exported with a dynamic height and width is exported for
the canvas size only (the card's ``network.input_shape`` says which). The exported
network is checked against the torch one on a batch of random slices before anything is written.
TorchScript (``torch.jit.trace``, deprecated upstream but still what LibTorch loads) is for C++
users; ``mireg predict`` runs the ONNX export. The card (:class:`~mireg.export.portable.ModelCard`) is
written beside the network, as ``<name>.json``; both files are written atomically.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

import mireg
from mireg import registry
from mireg.errors import CheckpointError
from mireg.export.portable import ModelCard, NetworkInfo, PreprocessingInfo, card_path, file_sha256
from mireg.files import atomic_write, atomic_write_text
from mireg.preprocessing.volume import SLICE_AXIS
from mireg.training.rundir import checkpoint_file
from mireg.training.runtime import resolve_device
from mireg.training.state import TrainedModel, load_trained

__all__ = [
    "OPSET",
    "Exporter",
    "OnnxExporter",
    "TorchScriptExporter",
    "check_export_outputs",
    "export_model",
    "export_run",
    "weights_sha256",
]

#: The ONNX opset of exports (ONNX Runtime runs it from version 1.14 on).
OPSET = 18

#: Largest difference allowed between the exported network's logits and torch's on the check batch.
TOLERANCE = 1e-4


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of a network's weights: every tensor of its state dict, in key order, as raw bytes."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_export_outputs(out: Path, checkpoint: Path, overwrite: bool = False) -> None:
    """Refuse to write the network ``out`` or its card over the checkpoint exported, ever, or over
    existing files unless ``overwrite``; before anything is read.

    Raises:
        CheckpointError: Naming the file.
    """
    for path in (out, card_path(out)):
        if path.is_dir():
            raise CheckpointError(f"{path}: is a folder", "give the network's file name: -o model/model.onnx")
        if not path.exists():
            continue
        if checkpoint.exists() and os.path.samefile(path, checkpoint):
            raise CheckpointError(f"{path}: is the checkpoint being exported", "choose another name (-o)")
        if not overwrite:
            raise CheckpointError(
                f"{path}: exists already", "choose another file name (-o), or replace it with --overwrite"
            )


def export_run(
    run: Path, out: Path, fmt: str = "onnx", checkpoint: str = "best", overwrite: bool = False
) -> list[Path]:
    """Export a checkpoint of a run (or a checkpoint file) to ``out`` and its card beside it: what
    ``mireg export`` does. The outputs are checked before the checkpoint is read.

    Args:
        run: A run directory, or a checkpoint file.
        out: The network file; the card goes to ``out`` with ``.json``.
        fmt: The exporter's name (:func:`export_model`).
        checkpoint: ``best``, ``last`` or a ``.pt`` file name of the run.
        overwrite: Replace outputs that exist already (never the checkpoint).

    Returns:
        The network file and the card.
    """
    source = checkpoint_file(run, checkpoint)
    check_export_outputs(out, source, overwrite)
    return export_model(load_trained(source, resolve_device("cpu")), out, fmt)


def export_model(trained: TrainedModel, out: Path, fmt: str = "onnx") -> list[Path]:
    """Export ``trained``'s network to ``out`` and its card beside it.

    Args:
        trained: The network (on the CPU) and its checkpoint.
        out: The network file (``.onnx`` for ONNX); the card goes to ``out`` with ``.json``.
        fmt: The exporter's name: ``onnx``, ``torchscript``, or one a plugin adds (:class:`Exporter`).

    Returns:
        The network file and the card.

    Raises:
        CheckpointError: An unknown format, a file name the card would clash with, or a network
            the exporter cannot translate or whose export computes other logits.
    """
    if fmt not in registry.available("exporter"):
        raise CheckpointError(f"--format: {fmt!r} is not one of {', '.join(registry.available('exporter'))}")
    exporter: Exporter = registry.format_of("exporter", fmt)
    if exporter.suffix is not None and out.suffix != exporter.suffix:
        raise CheckpointError(f"{out}: {exporter.described} file name must end in {exporter.suffix}")
    if out.suffix == ".json":
        raise CheckpointError(f"{out}: the model card takes the .json name; choose another for the network")
    model = trained.model.cpu().eval()
    prep = trained.preprocessing
    canvas, multiple = prep.canvas, trained.size_multiple
    generator = torch.Generator().manual_seed(0)
    check = torch.rand(3, 1, canvas, canvas, generator=generator)
    # A second size (other multiples of the network's, if it declares one; else the canvas again)
    # checks that a dynamic export is dynamic.
    step = multiple or 0
    other = torch.rand(1, 1, canvas + step, canvas + 2 * step, generator=generator)
    with torch.no_grad():
        expected = model(check).float().numpy()
        expected_other = model(other).float().numpy()
    classes = expected.shape[1]
    dynamic = exporter.save(model, check, out)
    got = exporter.run(out, check)
    got_other = exporter.run(out, other) if dynamic else None
    shape: list[int | str] = ["batch", 1, *(("height", "width") if dynamic else (canvas, canvas))]
    out_shape: list[int | str] = ["batch", classes, *shape[2:]]
    if got is not None:
        worst = float(np.abs(got - expected).max())
        if got_other is not None:
            worst = max(worst, float(np.abs(got_other - expected_other).max()))
        if not worst <= TOLERANCE:
            out.unlink(missing_ok=True)
            raise CheckpointError(
                f"{out}: the exported network's logits differ from torch's by {worst:.3g} (> {TOLERANCE})"
            )
    card = ModelCard(
        mireg_version=mireg.__version__,
        recipe=trained.recipe.name,
        dataset=trained.recipe.data.name,
        checkpoint=trained.checkpoint.path.name,
        epoch=trained.checkpoint.epoch,
        weights_sha256=weights_sha256(model),
        classes=list(prep.classes),
        network=NetworkInfo(
            file=out.name,
            format=exporter.name,
            opset=exporter.opset,
            input_shape=shape,
            output_shape=out_shape,
            size_multiple=multiple if "height" in shape else None,
            sha256=file_sha256(out),
        ),
        preprocessing=PreprocessingInfo(
            spacing=prep.spacing, canvas=canvas, percentiles=prep.percentiles, slice_axis=SLICE_AXIS
        ),
        inference={
            "tta": trained.recipe.inference.tta,
            "keep_largest": trained.recipe.inference.keep_largest,
        },
        batch=trained.recipe.train.eval_batch,
    )
    card_file = card_path(out)
    atomic_write_text(card_file, card.to_json())
    return [out, card_file]


class Exporter(ABC):
    """A format of exported networks (``mireg export --format NAME``): writes a network that maps
    slices ``(batch, 1, height, width)`` to logits ``(batch, classes, height, width)``, and runs the
    written file so that :func:`export_model` can check it against torch."""

    #: The name registered, which ``--format`` takes and the model card records.
    name: ClassVar[str]
    #: How messages name its files (``an ONNX export's``).
    described: ClassVar[str]
    #: The ending the file name must have, if any (``.onnx``).
    suffix: ClassVar[str | None] = None
    #: The ONNX opset, for ONNX formats (the card records it).
    opset: ClassVar[int | None] = None

    @abstractmethod
    def save(self, model: nn.Module, example: torch.Tensor, out: Path) -> bool:
        """Write ``model`` (on the CPU, in eval mode) to ``out`` atomically; ``example`` is a batch of
        canvas-sized slices. Returns whether its height and width are dynamic (else the canvas').

        Raises:
            CheckpointError: The network cannot be exported in this format.
        """

    @abstractmethod
    def run(self, out: Path, x: torch.Tensor) -> np.ndarray | None:
        """The written network's logits of ``x``, or None where its runtime is not installed."""


class OnnxExporter(Exporter):
    """ONNX through torch's ``torch.export``-based exporter, at opset :data:`OPSET`; run with ONNX
    Runtime."""

    name = "onnx"
    described = "an ONNX export's"
    suffix = ".onnx"
    opset = OPSET

    def save(self, model: nn.Module, example: torch.Tensor, out: Path) -> bool:
        program, dynamic = _onnx_program(model, example.shape[-1])
        atomic_write(out, lambda tmp: program.save(str(tmp)))
        return dynamic

    def run(self, out: Path, x: torch.Tensor) -> np.ndarray | None:
        return _run_onnx(out, x.numpy())


class TorchScriptExporter(Exporter):
    """TorchScript through ``torch.jit.trace`` (for LibTorch), for the canvas' size only."""

    name = "torchscript"
    described = "a TorchScript export's"

    def save(self, model: nn.Module, example: torch.Tensor, out: Path) -> bool:
        with warnings.catch_warnings():
            # The tracer's deprecation and its note that shape checks become constants (the input
            # size is fixed by the canvas anyway).
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, example[:2])
            atomic_write(out, lambda tmp: torch.jit.save(traced, str(tmp)))
        return False

    def run(self, out: Path, x: torch.Tensor) -> np.ndarray | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.no_grad():
                logits: np.ndarray = torch.jit.load(str(out))(x).float().numpy()
        return logits


def _onnx_program(model: nn.Module, canvas: int) -> tuple[Any, bool]:
    """The ONNX program of ``model``, and whether its height and width are dynamic."""
    example = (torch.zeros(2, 1, canvas, canvas),)
    batch, height, width = torch.export.Dim("batch"), torch.export.Dim("height"), torch.export.Dim("width")
    first_error: Exception | None = None
    for dims, dynamic in (({0: batch, 2: height, 3: width}, True), ({0: batch}, False)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(
                    model,
                    example,
                    None,
                    input_names=["image"],
                    output_names=["logits"],
                    opset_version=OPSET,
                    dynamo=True,
                    dynamic_shapes=(dims,),
                    verbose=False,
                )
            return program, dynamic
        except Exception as exc:  # the exporter raises many types; try the fixed size, then give up
            first_error = first_error or exc
    raise CheckpointError(
        f"the network cannot be exported to ONNX ({type(first_error).__name__}: "
        f"{str(first_error).splitlines()[0] if str(first_error) else ''})",
        "try --format torchscript",
    )


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray | None:
    """The ONNX file's logits of ``x`` with ONNX Runtime, or None when it is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out: np.ndarray = session.run(["logits"], {"image": x})[0]
    return out
