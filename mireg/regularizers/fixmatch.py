"""FixMatch for segmentation: weak-to-strong pseudo-labelling (Sohn et al., "FixMatch: Simplifying
Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020).

The weak view is the unlabelled batch as the training augmentation made it, ``x_u``, with the logits
``z_u`` of the step's main pass. Per pixel ``i`` of sample ``n``:

* pseudo-label ``y_ni = argmax_k softmax(z_u)_nki`` and confidence ``c_ni = max_k softmax(z_u)_nki``,
  both detached: no gradient reaches the weak side.
* The strong view ``s = CutMix_B(blur(jitter(x_u)))``:

  - ``jitter``: with probability ``jitter_p`` per sample, a brightness factor then a contrast factor
    (about the sample's mean), each uniform in ``jitter``, clipped to [0, 1]
    (:func:`mireg.augment.intensity_jitter`);
  - ``blur``: with probability ``blur_p`` per sample, a Gaussian of standard deviation uniform in
    [0.1, 2.0] pixels (:func:`mireg.augment.gaussian_blur`);
  - ``CutMix_B``: with probability ``cutmix_p`` per sample, one box ``B_n`` (area a uniform share of
    the image in [0.02, 0.4], height / width log-uniform in [0.3, 1/0.3];
    :func:`mireg.augment.cutmix_boxes`) inside which sample ``n`` takes the pixels of sample
    ``n - 1`` (the batch rolled by one: ``torch.roll(x, 1, 0)``). The pseudo-labels and the
    confidences are mixed with the very same boxes: ``y~ = CutMix_B(y)``, ``c~ = CutMix_B(c)``.

* ``M = {(n, i) : c~_ni >= threshold}``, the confident pixels of the mixed maps, and

  ``L = sum_{(n,i) in M} CE(f(s)_ni, y~_ni) / |M|``  (``L = 0`` when ``M`` is empty),

  where ``f(s)`` are the logits of the trained network run again, with gradients, on ``s``
  (``StepContext.forward``). Both sums run over the global batch (``StepContext.reduction``).
* Logged: ``confident``, the share of the weak view's pixels with ``c >= threshold``.

Defaults: ``threshold = 0.95`` and the recipe weight 1 are FixMatch's ``tau = 0.95`` and
``lambda_u = 1`` (the authors' code, github.com/google-research/fixmatch at d4985a1, ``fixmatch.py``
lines 165 and 167; the mask is ``max p >= tau``, line 116). The strong augmentation replaces
FixMatch's RandAugment / CTAugment + Cutout (made for natural-image classification) by the
intensity, blur and CutMix augmentation UniMatch uses for ACDC (github.com/LiheYoung/UniMatch at
0324f3d, ``more-scenarios/medical/dataset/acdc.py`` lines 59-62: ColorJitter(brightness 0.5,
contrast 0.5) with p 0.8, blur with p 0.5, a CutMix box with p 0.5; ``dataset/transform.py`` lines
25-50 for the blur widths and box sizes). FixMatch averages the masked terms over all unlabelled
items, unconfident ones counting 0 (``fixmatch.py`` line 118); here the mean runs over the
confident pixels only. UniMatch's code takes the CutMix partner from a second unlabelled batch;
here it is the batch rolled by one sample.

Every random draw uses the run's generator (``StepContext.generator``), so a resumed run draws
what an uninterrupted one would. Under multi-process training each process augments its own shard
(the rolled partner is a sample of the same shard) and draws as many numbers as the others, so the
processes' generators stay in step; the shards therefore get the same draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from mireg.augment.views import cutmix_boxes, gaussian_blur, intensity_jitter, mix
from mireg.contract import (
    Backbone,
    Group,
    Regularizer,
    RegularizerConfig,
    RegularizerOutput,
    StepContext,
    uniform,
)
from mireg.losses import SINGLE_PROCESS, Reduction

__all__ = [
    "BLUR_SIGMA",
    "FixMatch",
    "FixMatchConfig",
    "PseudoLabelConfig",
    "StrongAugment",
    "confident_cross_entropy",
    "confident_share",
    "pseudo_labels",
]

#: Range of the blur's standard deviation, in pixels (UniMatch, ``dataset/transform.py`` line 27).
BLUR_SIGMA = (0.1, 2.0)


def pseudo_labels(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Detached pseudo-labels ``(N, H, W)`` int64 and confidences ``(N, H, W)`` of ``(N, C, H, W)`` logits."""
    with torch.no_grad():
        confidence, labels = logits.detach().float().softmax(dim=1).max(dim=1)
    return labels, confidence


@dataclass(frozen=True)
class StrongAugment:
    """The strong view of a batch and its pseudo-labels (see the module docstring).

    Attributes:
        jitter: Range of the brightness factor and of the contrast factor.
        jitter_p: Probability that a sample is jittered.
        blur_p: Probability that a sample is blurred.
        cutmix_p: Probability that a sample gets a box of its rolled neighbour.
    """

    jitter: tuple[float, float] = (0.5, 1.5)
    jitter_p: float = 0.8
    blur_p: float = 0.5
    cutmix_p: float = 0.5

    def __call__(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        confidence: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Strongly augment ``x`` ``(N, C, H, W)``; CutMix ``labels`` and ``confidence`` ``(N, H, W)``
        with the very boxes of the images.

        Returns:
            The strong images, their pseudo-labels and their confidences.
        """
        n, _, height, width = x.shape
        jittered = intensity_jitter(x, generator, self.jitter, self.jitter)
        chosen = uniform((n,), generator, x.device) < self.jitter_p
        x = torch.where(chosen.view(n, 1, 1, 1), jittered, x)
        x = gaussian_blur(x, generator, BLUR_SIGMA, self.blur_p)
        boxes = cutmix_boxes(n, height, width, generator, p=self.cutmix_p, device=x.device)
        return (
            mix(x, x.roll(1, dims=0), boxes),
            mix(labels, labels.roll(1, dims=0), boxes),
            mix(confidence, confidence.roll(1, dims=0), boxes),
        )


def confident_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    confident: torch.Tensor,
    *,
    reduction: Reduction = SINGLE_PROCESS,
) -> torch.Tensor:
    """The mean cross-entropy over the confident pixels of the global batch (0 when there are none).

    Args:
        logits: ``(N, C, H, W)`` logits.
        labels: ``(N, H, W)`` int64 targets.
        confident: ``(N, H, W)`` bool: the pixels that count.
        reduction: How the sums are summed over processes.
    """
    with torch.autocast(device_type=logits.device.type, enabled=False):
        per_pixel = F.cross_entropy(logits.float(), labels, reduction="none")
        mask = confident.float()
        total, count = reduction.sum(torch.stack([(per_pixel * mask).sum(), mask.sum()])).unbind()
        return total / count.clamp(min=1.0)


def confident_share(confidence: torch.Tensor, threshold: float, reduction: Reduction) -> torch.Tensor:
    """The share of the global batch's pixels whose confidence reaches ``threshold`` (no gradient)."""
    with torch.no_grad():
        counts = torch.stack(
            [(confidence >= threshold).sum().float(), confidence.new_tensor(float(confidence.numel()))]
        )
        confident, total = reduction.sum(counts).unbind()
        return confident / total


class FixMatch(Regularizer):
    """Cross-entropy of the strong view against the weak view's confident pseudo-labels.

    Args:
        threshold: Pixels whose (mixed) confidence is below it do not count.
        augment: The strong augmentation.
    """

    #: The step's groups it reads (Regularizer.reads): x_u's logits, the weak view's pseudo-labels.
    reads: frozenset[Group] = frozenset({"unlabelled"})

    def __init__(self, threshold: float = 0.95, augment: StrongAugment | None = None) -> None:
        super().__init__()
        self.threshold = threshold
        self.augment = augment or StrongAugment()

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        g = ctx.rng()
        labels, confidence = pseudo_labels(ctx.logits_u)
        strong, strong_labels, strong_confidence = self.augment(ctx.x_u, labels, confidence, g)
        logits = ctx.forward(strong).logits
        loss = confident_cross_entropy(
            logits, strong_labels, strong_confidence >= self.threshold, reduction=ctx.reduction
        )
        share = confident_share(confidence, self.threshold, ctx.reduction)
        return RegularizerOutput(loss, {"confident": share})


class PseudoLabelConfig(RegularizerConfig):
    """The options of the weak-to-strong regularisers: the confidence threshold and the strong
    augmentation (defaults: UniMatch's on ACDC; see :mod:`mireg.regularizers.fixmatch`)."""

    threshold: float = Field(
        0.95, ge=0.0, le=1.0, description="pixels whose pseudo-label confidence is below it do not count"
    )
    jitter: tuple[float, float] = Field(
        (0.5, 1.5), description="range of the strong view's brightness factor and of its contrast factor"
    )
    jitter_p: float = Field(0.8, ge=0.0, le=1.0, description="probability that a sample is jittered")
    blur_p: float = Field(
        0.5, ge=0.0, le=1.0, description="probability that a sample is blurred (sigma 0.1-2 pixels)"
    )
    cutmix_p: float = Field(
        0.5, ge=0.0, le=1.0, description="probability that a sample gets a CutMix box of its neighbour"
    )

    @model_validator(mode="after")
    def _jitter_range(self) -> PseudoLabelConfig:
        low, high = self.jitter
        if not 0 < low <= high:
            raise ValueError(f"jitter must be a range (low, high) with 0 < low <= high, got {self.jitter}")
        return self

    def strong_augment(self) -> StrongAugment:
        """The strong augmentation these options describe."""
        return StrongAugment(self.jitter, self.jitter_p, self.blur_p, self.cutmix_p)


class FixMatchConfig(PseudoLabelConfig):
    """``[[regularizers]] name = "fixmatch"``: ``weight`` (FixMatch: 1), ``threshold`` (0.95) and the
    strong augmentation's ``jitter``, ``jitter_p``, ``blur_p``, ``cutmix_p``."""

    def build(self, backbone: Backbone) -> FixMatch:
        return FixMatch(self.threshold, self.strong_augment())
