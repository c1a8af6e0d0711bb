"""The public plugin contract: what a backbone, dataset or regulariser plugin imports and subclasses.

A plugin is registered under an entry point (groups ``mireg.backbones``, ``mireg.datasets``,
``mireg.regularizers``) whose value is its *config class*: a strict pydantic model holding the
plugin's recipe options that builds the plugin object. mireg's built-ins follow the same contract.

* Backbone: :class:`BackboneConfig` builds a :class:`Backbone`, an ``nn.Module`` that maps
  ``(B, in_channels, H, W)`` images to ``(B, num_classes, H, W)`` logits and names the modules whose
  outputs regularisers may tap (``taps``).
* Regulariser: :class:`RegularizerConfig` builds a :class:`Regularizer`, an ``nn.Module`` (its
  parameters, e.g. cluster heads, are trained with the network) that turns a :class:`StepContext`
  into a loss. The training loop adds ``weight * loss``.
* Dataset: :class:`DatasetConfig` loads a preprocessed :class:`VolumeStore` (one :class:`VolumeInfo`
  per volume) and may implement ``preprocess`` to fill a :class:`StoreBuilder` from raw files
  (``mireg preprocess NAME RAW OUT``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from mireg.losses import SINGLE_PROCESS, Reduction
from mireg.preprocessing.store import VolumeInfo, VolumeStore

# What a dataset plugin builds and fills, re-exported so that plugins import from here alone. The store
# modules import nothing from this one, so these imports close no cycle.
from mireg.preprocessing.volume import RawVolume, StoreBuilder
from mireg.progress import Progress

__all__ = [
    "Backbone",
    "BackboneConfig",
    "DatasetConfig",
    "Forward",
    "GROUPS",
    "Group",
    "PluginConfig",
    "Progress",
    "Regularizer",
    "RegularizerConfig",
    "RegularizerOutput",
    "StepContext",
    "RawVolume",
    "StoreBuilder",
    "Tap",
    "Transform",
    "VolumeInfo",
    "VolumeStore",
    "reject_options",
    "uniform",
]


class PluginConfig(BaseModel):
    """Base of every plugin's recipe table: ``name`` plus the plugin's own, strictly checked, fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str


# --------------------------------------------------------------------------------------------------
# Backbones


@dataclass(frozen=True)
class Tap:
    """A feature map a regulariser may attach to.

    Attributes:
        kind: ``"encoder"`` maps feed global (pooled) heads, ``"decoder"`` maps feed local heads.
        channels: Number of channels of the map.
    """

    kind: Literal["encoder", "decoder"]
    channels: int


class Backbone(nn.Module):
    """A 2D segmentation network with named feature taps.

    Subclasses set ``taps`` (tap name -> :class:`Tap`, in network order) and implement
    ``tap_module``; the trainer registers forward hooks on those modules once, so tapping costs
    nothing when no regulariser asks for features.
    """

    taps: dict[str, Tap]
    in_channels: int
    num_classes: int
    #: The config the network was made from (set by :meth:`BackboneConfig.create`).
    config: BackboneConfig | None = None
    #: Whether, in training mode, each sample's output depends on that sample alone and a forward
    #: draws no random numbers (no batch norm, dropout or running statistics). A supervised step then
    #: runs the network on its labelled slices only; with False, the default, on every group, since
    #: the others could change the result. :func:`mireg.testing.check_backbone` checks the promise.
    independent_samples: bool = False

    @property
    def size_multiple(self) -> int | None:
        """Input height and width must be multiples of this (1: any size; None, the default: not
        declared). A network that pools ``k`` times by 2 says ``2**k``; :func:`mireg.testing.check_backbone`
        checks the promise, and exports record it, so that deployers know what the network accepts."""
        return None

    def tap_module(self, name: str) -> nn.Module:
        """Return the module whose output is the feature map ``name``."""
        raise NotImplementedError

    def auxiliary_logits(self) -> list[torch.Tensor]:
        """Deep supervision: the auxiliary logits ``(B, num_classes, h, w)`` of the last forward pass
        in training mode, from the highest resolution to the lowest (the main output not included);
        ``[]`` for a backbone without them (the default). Read them right after that forward: the
        next one replaces them. The training step adds them to the supervised loss with nnU-Net's
        weights (:func:`mireg.training.supervised.supervised_loss`) whenever the backbone gives them."""
        return []

    def twin(self) -> Backbone:
        """A new, independently initialised network of the same configuration.

        For regularisers that own a second network (co-training, cross pseudo supervision): keep
        it as a submodule and its parameters are optimised with the rest and checkpointed. A twin
        of a deep-supervised backbone runs its auxiliary heads in training mode, as the original
        does: train them (:meth:`StepContext.supervised_loss` with the twin's
        :meth:`auxiliary_logits`), since multi-process training needs a gradient for every trained
        parameter.
        """
        if self.config is None:
            raise RuntimeError(
                f"{type(self).__name__} was not made by BackboneConfig.create(); it cannot make a twin"
            )
        return self.config.create()


class BackboneConfig(PluginConfig):
    """Recipe table ``[backbone]``."""

    in_channels: int = Field(1, ge=1)
    num_classes: int = Field(ge=2)

    def build(self) -> Backbone:
        """Construct the network (randomly initialised, no downloads unless the recipe asks)."""
        raise NotImplementedError

    def create(self) -> Backbone:
        """:meth:`build` the network and remember this config on it (for :meth:`Backbone.twin`)."""
        network = self.build()
        network.config = self
        return network


# --------------------------------------------------------------------------------------------------
# The equivariant transform T and the step context


def uniform(size: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform draws on [0, 1) of shape ``size`` from ``generator``, on ``device``.

    The numbers are drawn where the generator lives (the run's is on the CPU) and then copied to
    ``device``: the same generator state gives the same numbers whatever the training device.

    Args:
        size: Shape of the draws.
        generator: Random generator, on any device.
        device: Where the draws are returned.
    """
    return torch.rand(size, generator=generator, device=generator.device).to(device, non_blocking=True)


class Transform:
    """A random geometric transform drawn once per sample and replayable on any tensor.

    ``T`` flips each sample along H with probability ``p_h`` and along W with probability ``p_w``
    (docs/methods.md). Flips commute with resizing, so the same draw applies to images, logits and feature
    maps of any resolution with shape ``(N, *, H, W)``.

    Args:
        flip_h: Boolean tensor ``(N,)``: flip sample n along H.
        flip_w: Boolean tensor ``(N,)``: flip sample n along W.
    """

    def __init__(self, flip_h: torch.Tensor, flip_w: torch.Tensor) -> None:
        self.flip_h = flip_h
        self.flip_w = flip_w

    @classmethod
    def draw(
        cls,
        n: int,
        generator: torch.Generator,
        device: torch.device,
        p_h: float = 0.8,
        p_w: float = 0.8,
    ) -> Transform:
        """Draw a transform for ``n`` samples from ``generator`` (on any device), on ``device``."""
        u = uniform((2, n), generator, device)
        return cls(u[0] < p_h, u[1] < p_w)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the transform to ``x`` of shape ``(N, *, H, W)``."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        x = torch.where(self.flip_h.view(shape), x.flip(-2), x)
        return torch.where(self.flip_w.view(shape), x.flip(-1), x)


#: The groups of a step's forward beside the labelled images: the unlabelled images ``x_u`` and their
#: transformed copies ``T(x_u)`` (:attr:`Regularizer.reads`).
Group = Literal["unlabelled", "transformed"]
GROUPS: frozenset[Group] = frozenset({"unlabelled", "transformed"})


class Forward(NamedTuple):
    """What :meth:`StepContext.forward` returns: logits and the requested tapped feature maps."""

    logits: torch.Tensor
    features: dict[str, torch.Tensor]


@dataclass
class StepContext:
    """What a regulariser sees of one training step.

    The network ran once on ``[x_l, x_u, T(x_u)]``; logits and tapped features are split into those
    three groups here. On a backbone that computes each sample alone (``Backbone.independent_samples``)
    the forward leaves out the groups no regulariser of the step reads (:attr:`Regularizer.reads`):
    their logits and features then have no rows. ``x_u`` and ``transform`` are always there.
    Regularisers that need the network on other inputs (a strongly augmented view, an image mixed
    from two others; :mod:`mireg.augment` has the usual ones) call :meth:`forward`, which runs the
    trained network again, with gradients.

    Under multi-process training every process sees its shard of the global batch. A regulariser
    whose loss reduces over the batch (a mean over samples or pixels, a joint summed over samples)
    should reduce with ``reduction``, e.g. ``ctx.reduction.mean(per_pixel)`` instead of
    ``per_pixel.mean()``: then every process computes the loss of the global batch, exactly as one
    process would (and bit for bit the same as the plain mean in a single process).

    Attributes:
        logits_l: ``(n_l, C, H, W)`` logits of the labelled batch.
        logits_u: ``(n_u, C, H, W)`` logits of the unlabelled batch.
        logits_tu: ``(n_u, C, H, W)`` logits of the transformed unlabelled batch ``T(x_u)``.
        features: tap name -> ``(f_l, f_u, f_tu)`` feature maps for the taps regularisers asked for.
        transform: The draw of ``T`` used for ``T(x_u)``.
        step: Global step index (0-based).
        epoch: Epoch index (0-based).
        x_u: The (augmented) unlabelled images ``(n_u, in_channels, H, W)``.
        x_l: The (augmented) labelled images ``(n_l, in_channels, H, W)``.
        y_l: Their labels ``(n_l, H, W)``, int64.
        run_network: The function behind :meth:`forward` (set by the step that builds the context).
        reduction: How to reduce a batch statistic over the processes of the run (``sum`` and
            ``mean``, see :class:`~mireg.losses.Reduction`); a single process's by default.
        generator: The run's random generator, for a regulariser's own random draws (strong
            augmentations, mixing boxes): it is checkpointed, so a resumed run draws what an
            uninterrupted one would. It lives on the CPU whatever the training device, so that a
            seed draws the same numbers on any device: draw with :func:`uniform`
            (on the generator's device, then moved), not ``torch.rand(..., device=x.device)``.
            ``None`` outside training.
        supervise: The function behind :meth:`supervised_loss` (set by the step that builds the
            context); ``None`` in a context made by hand.
    """

    logits_l: torch.Tensor
    logits_u: torch.Tensor
    logits_tu: torch.Tensor
    features: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    transform: Transform
    step: int
    epoch: int
    x_u: torch.Tensor
    x_l: torch.Tensor
    y_l: torch.Tensor
    run_network: Callable[[torch.Tensor, Sequence[str]], Forward]
    reduction: Reduction = SINGLE_PROCESS
    generator: torch.Generator | None = None
    supervise: Callable[[torch.Tensor, Sequence[torch.Tensor]], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, taps: Sequence[str] = ()) -> Forward:
        """Run the trained network on ``x`` ``(N, in_channels, H, W)``; gradients flow.

        Args:
            x: Images the regulariser made, on the training device.
            taps: Feature maps to return; each must be in the regulariser's ``taps``.

        Returns:
            ``(N, C, H, W)`` float32 logits and the tapped features by name.
        """
        return self.run_network(x, taps)

    def supervised_loss(self, logits: torch.Tensor, auxiliary: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """The recipe's supervised loss (``[train] loss``) of logits of the labelled images ``x_l``
        against ``y_l``: the loss the trained network's own labelled logits get, deep-supervised when
        ``auxiliary`` logits are given (:meth:`Backbone.auxiliary_logits`, labelled rows only).

        For a regulariser that trains a second network on the labels (cross pseudo supervision), so
        that both networks learn from the same loss, whatever the recipe's.

        Args:
            logits: ``(n_l, C, H, W)`` logits of ``x_l``.
            auxiliary: Their auxiliary logits at decreasing resolutions; none by default.
        """
        if self.supervise is None:
            raise RuntimeError("this step context was made without a supervised loss (supervise=None)")
        return self.supervise(logits, auxiliary)

    def rng(self) -> torch.Generator:
        """The generator for a regulariser's random draws: :attr:`generator` in training; outside
        it (``generator`` is ``None``: checks, benchmarks) a CPU generator seeded by :attr:`step`,
        so that the draws are still reproducible."""
        if self.generator is not None:
            return self.generator
        return torch.Generator().manual_seed(self.step)


@dataclass
class RegularizerOutput:
    """A regulariser's loss, which the loop multiplies by the recipe's weight, and named values to
    log (scalars, kept on device).

    Attributes:
        loss: The regularisation loss (the loop adds ``weight * loss``).
        logs: Extra values to log under ``<name>/<key>``.
        unweighted: A loss the loop adds as it is, outside the weight: e.g. the supervised loss of
            a second network the regulariser trains (cross pseudo supervision), which the
            regularisation weight must not scale.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    unweighted: torch.Tensor | None = None


# --------------------------------------------------------------------------------------------------
# Regularisers


class Regularizer(nn.Module):
    """A loss term on unlabelled data. Its parameters are optimised with the network's."""

    #: Feature taps the regulariser reads from ``StepContext.features``.
    taps: tuple[str, ...] = ()
    #: The groups of the step's forward whose logits or features it reads, beside the labelled one:
    #: ``"unlabelled"`` (``logits_u``, the second map of each ``features`` entry) and
    #: ``"transformed"`` (``logits_tu``, the third). On a backbone that computes each sample alone the
    #: step runs the network only on the groups some regulariser reads, so a regulariser that reads
    #: fewer than both says so (cross pseudo supervision reads ``x_u``'s logits alone); the default
    #: is both. :func:`mireg.testing.check_regularizer` checks the claim.
    reads: frozenset[Group] = GROUPS

    def forward(self, ctx: StepContext) -> RegularizerOutput:  # noqa: D102
        raise NotImplementedError

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step (e.g. an EMA teacher update). Default: nothing."""

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        """The network to validate, test and checkpoint as "the model" (a mean teacher's teacher).

        Default: the trained ``model`` itself. At most one regulariser of a recipe may replace it.
        """
        return model


class RegularizerConfig(PluginConfig):
    """Recipe table ``[[regularizers]]``: ``weight`` plus the regulariser's own options."""

    weight: float = Field(ge=0.0)
    rampup_epochs: float = Field(
        0.0,
        ge=0.0,
        description="epochs over which the weight rises from ~0 to `weight` (0: full weight from the "
        "first step, the paper's setting)",
    )

    def build(self, backbone: Backbone) -> Regularizer:
        """Construct the regulariser for ``backbone`` (checks that the taps it needs exist)."""
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------
# Datasets


class DatasetConfig(PluginConfig):
    """Recipe table ``[data]``: where the data lives and how patients are split.

    Patients (never single scans) are split into labelled / unlabelled / validation / test, seeded.
    Give the labelled amount either as ``labeled_ratio`` (of the training patients) or as
    ``labeled_patients``; or give ``split_file`` (JSON with lists ``labeled``, ``unlabeled``,
    ``validation``, ``test`` of patient ids) to reproduce a published split.
    """

    #: Whether ``preprocess`` is implemented (``mireg preprocess NAME``).
    can_preprocess: ClassVar[bool] = False

    labeled_ratio: float | None = Field(None, gt=0.0, le=1.0)
    labeled_patients: int | None = Field(None, ge=1)
    val_patients: int = Field(10, ge=1)
    test_patients: int = Field(20, ge=1)
    split_seed: int | None = None
    split_file: Path | None = None

    @model_validator(mode="after")
    def _one_labelled_amount(self) -> DatasetConfig:
        if self.labeled_ratio is not None and self.labeled_patients is not None:
            raise ValueError("give labeled_ratio or labeled_patients, not both")
        return self

    def load(self, progress: Progress | None = None) -> VolumeStore:
        """Return the preprocessed store (building it first if the dataset knows how)."""
        raise NotImplementedError

    @classmethod
    def preprocess(
        cls, raw: Path, builder: StoreBuilder, options: dict[str, str], progress: Progress | None = None
    ) -> None:
        """Read the raw data set under ``raw`` and ``builder.add`` its volumes.

        Set ``builder.classes``; the caller writes the store. ``options`` are the ``-O key=value``
        pairs of ``mireg preprocess``: validate them and reject unknown keys (:func:`reject_options`).
        """
        raise NotImplementedError


def reject_options(dataset: str, options: dict[str, str], known: set[str]) -> None:
    """Raise a :class:`~mireg.errors.DataError` naming any preprocessing option not in ``known``."""
    from mireg.errors import DataError

    unknown = sorted(set(options) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise DataError(f"preprocess {dataset}: unknown option {unknown[0]!r} (options: {allowed})")
