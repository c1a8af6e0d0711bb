"""Exported models: the model card (``model.json``) and prediction through ONNX Runtime, without torch.

``mireg export RUN -o model.onnx`` (:mod:`mireg.export.exporters`) writes the network and, beside it, a card
with everything prediction needs besides the network: the training data's in-plane spacing, canvas,
intensity percentiles and slice axis, the class names, the default inference options, the mireg
version, the recipe, and SHA-256 checksums of the network file and of the weights. This module reads
the card and runs the network with ONNX Runtime through :mod:`mireg.inference`, the same numpy
preprocessing and postprocessing as the torch path; it imports neither torch nor anything that does.

The network's one input is ``image``, ``(N, 1, H, W)`` float32 slices on the canvas (intensities in
[0, 1]); its one output is ``logits``, ``(N, C, H, W)`` float32. Softmax, test-time augmentation and
the mapping back to the scan's grid happen outside it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationError

from mireg.errors import CheckpointError, validation_messages
from mireg.inference import InferenceOptions, Network, Predictor, Preprocessing, model_identity
from mireg.schema import Strict

__all__ = [
    "CARD_FORMAT",
    "ModelCard",
    "card_path",
    "file_sha256",
    "load_onnx_predictor",
    "read_card",
]

#: ``format`` of a model card (its ``format_version``, 1, changes when its meaning does).
CARD_FORMAT = "mireg-model"

_ONNX_HINT = "install the ONNX support: pip install 'mireg[onnx]'"


class NetworkInfo(Strict):
    """The network file: its format, interface and checksum."""

    file: str = Field(description="file name, beside the card")
    format: str = Field(description="the exporter's name: onnx, torchscript, or one a plugin adds")
    opset: int | None = Field(None, description="ONNX opset (onnx only)")
    input: str = "image"
    output: str = "logits"
    input_shape: list[int | str] = Field(description="dimension sizes, or names of the dynamic ones")
    output_shape: list[int | str]
    size_multiple: int | None = Field(
        None,
        ge=1,
        description="a dynamic height and width must be multiples of this (None: not recorded, as "
        "in cards of format version 1)",
    )
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the network file")


class PreprocessingInfo(Strict):
    """How a scan becomes the network's input (:mod:`mireg.preprocessing.volume`)."""

    spacing: float = Field(gt=0, description="in-plane spacing (mm) slices are resampled to, bilinearly")
    canvas: int = Field(ge=1, description="side of the square canvas slices are centred on")
    percentiles: tuple[float, float] = Field(description="intensities clipped to these percentiles")
    scaling: Literal["minmax"] = Field("minmax", description="then scaled linearly to [0, 1]")
    slice_axis: int = Field(2, ge=0, le=2, description="voxel axis slices are taken along")


class ModelCard(Strict):
    """``model.json``: everything prediction needs besides the network."""

    format: Literal["mireg-model"] = "mireg-model"
    format_version: Literal[1, 2] = Field(2, description="2 adds network.size_multiple")
    mireg_version: str
    recipe: str
    dataset: str
    checkpoint: str = Field(description="the checkpoint file exported")
    epoch: int
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the weights")
    classes: list[str] = Field(min_length=2)
    network: NetworkInfo
    preprocessing: PreprocessingInfo
    inference: dict[Literal["tta", "keep_largest"], bool]
    batch: int = Field(32, ge=1, description="slices per network call")

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1) + "\n"

    def to_preprocessing(self) -> Preprocessing:
        p = self.preprocessing
        return Preprocessing(p.spacing, p.canvas, list(self.classes), (p.percentiles[0], p.percentiles[1]))

    def options(self) -> InferenceOptions:
        return InferenceOptions(
            tta=self.inference.get("tta", False), keep_largest=self.inference.get("keep_largest", False)
        )


def card_path(network_file: Path) -> Path:
    """The card beside a network file: ``model.onnx`` -> ``model.json``."""
    return network_file.with_suffix(".json")


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_card(path: Path) -> ModelCard:
    """Read and validate a model card.

    Raises:
        CheckpointError: Missing, not JSON, or not a valid card (the key at fault is named).
    """
    if not path.is_file():
        raise CheckpointError(
            f"{path}: model card not found", "export the model with `mireg export RUN -o FILE`"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not a readable JSON model card ({exc})") from None
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        problems = validation_messages(exc)
        raise CheckpointError(
            f"{path}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        ) from None


def load_onnx_predictor(path: Path) -> Predictor:
    """The :class:`~mireg.inference.Predictor` of an exported ONNX model (``model.onnx`` or its
    ``model.json``).

    The network file's checksum is checked against the card before it is loaded.

    Raises:
        CheckpointError: Missing or invalid card or network, a checksum mismatch, a card of a
            TorchScript export, or ONNX Runtime not installed.
    """
    card_file = path if path.suffix == ".json" else card_path(path)
    card = read_card(card_file)
    network_file = card_file.parent / card.network.file
    if card.network.format != "onnx":
        raise CheckpointError(
            f"{card_file}: network.format is {card.network.format!r}; mireg predict runs ONNX exports",
            "export with --format onnx, or predict with the run directory",
        )
    if not network_file.is_file():
        raise CheckpointError(f"{network_file}: the network file named by {card_file.name} is missing")
    digest = file_sha256(network_file)
    if digest != card.network.sha256:
        raise CheckpointError(
            f"{network_file}: SHA-256 {digest[:12]}... differs from network.sha256 "
            f"{card.network.sha256[:12]}... in {card_file.name}",
            "the file was changed or replaced after export; export it again",
        )
    return Predictor(
        network=_onnx_network(network_file, card.network.input, card.network.output),
        preprocessing=card.to_preprocessing(),
        batch=card.batch,
        options=card.options(),
        name=card.recipe,
        version=card.mireg_version,
        identity=model_identity(card.checkpoint, card.epoch, card.weights_sha256),
    )


def _onnx_network(path: Path, input_name: str, output_name: str) -> Network:
    """An ONNX Runtime session (CPU) as a :data:`~mireg.inference.Network`."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError(
            f"{path}: running ONNX models needs onnxruntime, which is not installed", _ONNX_HINT
        ) from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own types for invalid or unsupported graphs
        raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc

    def run(x: np.ndarray) -> np.ndarray:
        out: np.ndarray = session.run([output_name], {input_name: np.ascontiguousarray(x, np.float32)})[0]
        return out

    return run
