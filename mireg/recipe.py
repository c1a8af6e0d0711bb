"""Recipes: TOML files validated by pydantic, with ``--set key.path=value`` overrides.

A recipe is data: it is parsed with ``tomllib`` and nothing in it is evaluated. Each plugin table
(``[data]``, ``[backbone]``, ``[[regularizers]]``) names its plugin with ``name`` and is validated by
that plugin's own config class. Every problem is reported at once, each with its key path, e.g.
``recipes/x.toml: regularizers[1].wieght: unknown key``.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SerializeAsAny, ValidationError, model_validator

from mireg import registry
from mireg.contract import BackboneConfig, DatasetConfig, PluginConfig, RegularizerConfig
from mireg.errors import PluginError, RecipeError, key_path, validation_messages
from mireg.inference import InferenceOptions
from mireg.network import check_recipe
from mireg.precision import Precision
from mireg.schema import Strict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "AugmentConfig",
    "InferenceConfig",
    "OptimConfig",
    "Recipe",
    "TrainConfig",
    "apply_override",
    "dump_toml",
    "format_problems",
    "load_recipe",
    "read_toml",
    "validate_recipe",
    "validation_messages",
]


class OptimConfig(Strict):
    """``[optim]``: the optimiser and its per-epoch schedule.

    The paper's (docs/methods.md): Adam, a linear warm-up to ``lr * multiplier``, then cosine annealing to
    ``min_lr``. nnU-Net's (``name = "sgd"``, ``schedule = "poly"``): SGD with Nesterov momentum 0.99,
    ``lr * multiplier * (1 - epoch / epochs) ** poly_exponent``, gradients clipped to norm 12.
    """

    name: Literal["adam", "sgd"] = Field("adam", description="adam, or sgd (with momentum)")
    lr: float = Field(1e-7, gt=0, description="base learning rate")
    weight_decay: float = Field(1e-5, ge=0)
    momentum: float = Field(0.99, ge=0, lt=1, description="sgd: momentum")
    nesterov: bool = Field(True, description="sgd: Nesterov momentum")
    schedule: Literal["warmup_cosine", "poly"] = Field(
        "warmup_cosine", description="warmup_cosine: warm-up then cosine; poly: polynomial decay"
    )
    warmup_epochs: int = Field(10, ge=0)
    multiplier: float = Field(400.0, ge=1, description="peak lr = lr * multiplier")
    min_lr: float = Field(1e-7, ge=0, description="lr at the end of the cosine")
    poly_exponent: float = Field(0.9, gt=0, description="poly: the decay's exponent")
    clip_grad_norm: float | None = Field(None, gt=0, description="clip the gradients' norm to this")

    @model_validator(mode="after")
    def _poly_has_no_warmup(self) -> OptimConfig:
        if self.schedule == "poly" and self.warmup_epochs:
            raise ValueError("the poly schedule has no warm-up: set optim.warmup_epochs = 0")
        return self


#: The keys of ``[augment]`` that only the ``paper`` preset reads.
_PAPER_AUGMENT_KEYS = ("rotation", "flip_prob", "brightness", "contrast")


class AugmentConfig(Strict):
    """``[augment]``: training augmentation, batched on the device, one affine warp per sample.

    ``preset = "paper"``: rotation, flips and the random crop, then brightness and contrast jitter,
    with the ranges below (:mod:`mireg.augment.paper`). ``preset = "strong"``: nnU-Net v2's 2D training
    augmentation with its own probabilities and ranges (:mod:`mireg.augment.strong`); the paper's
    keys do not apply to it, and set to anything but their defaults they are an error.
    """

    preset: Literal["paper", "strong"] = Field("paper", description="paper, or strong (nnU-Net's 2D)")
    crop: int = Field(224, ge=16, multiple_of=16, description="random crop side")
    rotation: float = Field(45.0, ge=0, le=180, description="max rotation in degrees")
    flip_prob: float = Field(0.5, ge=0, le=1, description="probability of each axis flip")
    brightness: tuple[float, float] = (0.5, 1.5)
    contrast: tuple[float, float] = (0.5, 1.5)

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for key in ("brightness", "contrast"):
            low, high = getattr(self, key)
            if not 0 < low <= high:
                raise ValueError(f"{key} must be a range (low, high) with 0 < low <= high")
        # Compared with the defaults (not with the keys set): a saved recipe writes every key.
        fields = type(self).model_fields
        given = [k for k in _PAPER_AUGMENT_KEYS if getattr(self, k) != fields[k].default]
        if self.preset == "strong" and given:
            raise ValueError(
                f"{', '.join(given)}: the strong preset has nnU-Net's own; they apply to preset paper"
            )
        return self


class TrainConfig(Strict):
    """``[train]``: loop sizes, device and precision."""

    epochs: int = Field(100, ge=1)
    iterations_per_epoch: int = Field(300, ge=1)
    labeled_batch: int = Field(4, ge=1)
    unlabeled_batch: int = Field(10, ge=1)
    transform_prob: float = Field(0.8, ge=0, le=1, description="flip probability of T per axis")
    loss: Literal["ce", "dice_ce"] = Field(
        "ce", description="supervised loss: ce (cross-entropy), or dice_ce (nnU-Net's Dice + cross-entropy)"
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    precision: Precision = Field(
        "fp32", description="fp32: IEEE float32 (no TF32 on CUDA); bf16: the network under bf16 autocast"
    )
    memory_format: Literal["auto", "channels_last", "contiguous"] = Field(
        "auto", description="layout of images and activations; auto: channels_last on CUDA"
    )
    compile: bool = Field(False, description="torch.compile the network (the first steps compile it)")
    eval_batch: int = Field(32, ge=1, description="slices per forward pass at evaluation")
    data_placement: Literal["auto", "resident", "streamed"] = Field(
        "auto",
        description="resident: the store on the training device; streamed: read from disk ahead of "
        "each step; auto: resident when it fits train.resident_gb",
    )
    resident_gb: float | None = Field(
        None,
        gt=0,
        description="largest store (GB) auto keeps resident (default: a quarter of the GPU's memory, "
        "half of the machine's on the CPU)",
    )
    runs_dir: Path = Path("runs")
    log_every: int = Field(10, ge=1, description="steps between progress updates")
    skip_nonfinite: bool = Field(
        False, description="skip steps whose loss is not finite (counted in metrics) instead of stopping"
    )


class InferenceConfig(Strict):
    """``[inference]``: how evaluation and prediction segment a volume by default.

    ``mireg eval`` and ``mireg predict`` take these unless told otherwise (``--tta/--no-tta``,
    ``--keep-largest/--no-keep-largest``), and ``mireg export`` writes them into ``model.json``.
    """

    tta: bool = Field(False, description="average the probabilities of the flipped slices")
    keep_largest: bool = Field(False, description="keep the largest 3D component of each structure")

    def options(self) -> InferenceOptions:
        return InferenceOptions(tta=self.tta, keep_largest=self.keep_largest)


class _RecipeSettings(Strict):
    """The recipe's own keys (everything but the plugin tables)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    seed: int = 10
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    inference: InferenceConfig = InferenceConfig()


class Recipe(_RecipeSettings):
    """A whole experiment: settings plus the plugin configs it names."""

    data: SerializeAsAny[DatasetConfig]
    backbone: SerializeAsAny[BackboneConfig]
    regularizers: list[SerializeAsAny[RegularizerConfig]] = Field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON/TOML-able), without unset optional values."""
        return self.model_dump(mode="json", exclude_none=True)


# --------------------------------------------------------------------------------------------------
# Reading and validating

_PLUGIN_TABLES: dict[str, str] = {"data": "dataset", "backbone": "backbone"}


def _plugin(kind: str, table: Any, loc: tuple[Any, ...], errors: list[str]) -> PluginConfig | None:
    if not isinstance(table, dict):
        errors.append(f"{key_path(loc)}: expected a table with a 'name' key")
        return None
    name = table.get("name")
    if not isinstance(name, str):
        errors.append(f"{key_path(loc + ('name',))}: missing required key (the {kind} plugin's name)")
        return None
    try:
        config_class = registry.load(kind, name)
    except PluginError as exc:
        errors.append(f"{key_path(loc + ('name',))}: {exc.message}")
        return None
    try:
        return config_class.model_validate(table)
    except ValidationError as exc:
        errors.extend(validation_messages(exc, loc))
        return None


def validate_recipe(raw: dict[str, Any], source: str) -> Recipe:
    """Validate a parsed recipe; every problem is collected into one :class:`RecipeError`.

    Once the schema holds, the backbone and every regulariser are built on the meta device
    (:func:`mireg.network.check_recipe`), so a wrong tap, radius count or plugin option fails here,
    before any data is read.
    """
    errors: list[str] = []
    resolved: dict[str, Any] = dict(raw)
    for key, kind in _PLUGIN_TABLES.items():
        if key not in raw:
            errors.append(f"{key}: missing required table")
        else:
            resolved[key] = _plugin(kind, raw[key], (key,), errors)
    regs = raw.get("regularizers", [])
    if not isinstance(regs, list):
        errors.append("regularizers: expected an array of tables ([[regularizers]])")
        regs = []
    resolved["regularizers"] = [
        _plugin("regularizer", table, ("regularizers", i), errors) for i, table in enumerate(regs)
    ]
    if errors:  # some plugin table failed: still check the other keys, to report all at once
        try:
            _RecipeSettings.model_validate(
                {k: v for k, v in raw.items() if k not in (*_PLUGIN_TABLES, "regularizers")}
            )
        except ValidationError as exc:
            errors.extend(validation_messages(exc))
        raise RecipeError(format_problems(source, errors))
    try:
        recipe = Recipe.model_validate(resolved)
    except ValidationError as exc:
        raise RecipeError(format_problems(source, validation_messages(exc))) from None
    try:
        check_recipe(recipe)
    except RecipeError as exc:
        raise RecipeError(format_problems(source, [exc.message]), exc.hint) from None
    return recipe


def format_problems(source: str, errors: list[str]) -> str:
    """``source: problem``, or ``source: N problems`` followed by one indented line each."""
    if len(errors) == 1:
        return f"{source}: {errors[0]}"
    return f"{source}: {len(errors)} problems\n" + "\n".join(f"  {e}" for e in errors)


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; syntax errors name the line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
    try:
        table: dict[str, Any] = tomllib.loads(text)
        return table
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}") from None


_SEGMENT = re.compile(r"^([A-Za-z0-9_\-]+)((?:\[\d+\])*)$")


def _parse_value(text: str) -> Any:
    """A TOML literal (``0.1``, ``true``, ``[1, 3]``, ``"x"``); anything else is a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``key.path=value`` override to a parsed recipe in place.

    Path segments are table keys or list indices (``regularizers[1].weight`` or
    ``regularizers.1.weight``); an entry of ``regularizers`` may also be named by its plugin name
    (``regularizers.mutual_information.weight``).
    """
    key, sep, text = assignment.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {assignment!r}: expected key.path=value")
    parts: list[str | int] = []
    for segment in key.strip().split("."):
        match = _SEGMENT.match(segment)
        if not match:
            raise RecipeError(f"--set {assignment!r}: bad key segment {segment!r}")
        parts.append(int(match[1]) if match[1].isdigit() else match[1])
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", match[2]))
    node: Any = raw
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = key_path(parts[: i + 1])
        if isinstance(node, list):
            if isinstance(part, str):  # a list of plugin tables addressed by plugin name
                named = [
                    j for j, item in enumerate(node) if isinstance(item, dict) and item.get("name") == part
                ]
                if len(named) != 1:
                    raise RecipeError(
                        f"--set {assignment!r}: {where}: "
                        f"{'no' if not named else 'more than one'} entry named {part!r}"
                    )
                part = named[0]
            if not 0 <= part < len(node):
                raise RecipeError(
                    f"--set {assignment!r}: {where}: index out of range (the list has {len(node)} entries)"
                )
        elif isinstance(node, dict):
            if isinstance(part, int):
                part = str(part)
        else:
            raise RecipeError(f"--set {assignment!r}: {key_path(parts[:i])} is a value, not a table")
        if last:
            node[part] = _parse_value(text.strip())
        else:
            if isinstance(node, dict) and part not in node:
                node[part] = {}
            node = node[part]


def load_recipe(path: Path, overrides: Iterable[str] = ()) -> Recipe:
    """Read, override and validate a recipe file."""
    raw = read_toml(path)
    for assignment in overrides:
        apply_override(raw, assignment)
    return validate_recipe(raw, str(path))


# --------------------------------------------------------------------------------------------------
# Writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_toml(data: dict[str, Any]) -> str:
    """Write a recipe-shaped dict (scalars, arrays, tables, arrays of tables) as TOML."""
    lines: list[str] = []

    def table(d: dict[str, Any], header: str | None) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_tables(v)}
        if header is not None:
            lines.append("")
            lines.append(header)
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        for k, v in d.items():
            prefix = f"{header.strip('[]')}." if header and not header.startswith("[[") else ""
            if isinstance(v, dict):
                table(v, f"[{prefix}{k}]")
            elif _is_tables(v):
                for item in v:
                    table(item, f"[[{prefix}{k}]]")

    table(data, None)
    return "\n".join(lines).lstrip("\n") + "\n"


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
