"""Bidirectional copy-paste (BCP; Bai et al., "Bidirectional Copy-Paste for Semi-Supervised Medical
Image Segmentation", CVPR 2023), the self-training stage of the authors' ACDC code.

Sources checked: ``code/ACDC_BCP_train.py`` and ``code/utils/losses.py`` of
github.com/DeepMed-Lab-ECNU/BCP at commit 7879f988872f561231f73eecd5b4e232e54fa2bd (line numbers
below refer to it).

Definition. A teacher ``f_t``, the exponential moving average of the student ``f_s``, gives
pseudo-labels on unlabelled images. One box ``B`` per step, shared by the batch (``generate_mask``,
lines 131-140): ``floor(2/3 H) x floor(2/3 W)`` pixels, its top-left corner uniform on
``{0, ..., H - h_B - 1} x {0, ..., W - w_B - 1}``. With labelled images ``l_a, l_b`` (labels
``y_a, y_b``) and unlabelled ``u_a, u_b``:

* inward:  ``x_in  = l_a`` inside ``B``, ``u_a`` outside; target ``y_a`` inside, ``q_a`` outside;
* outward: ``x_out = u_b`` inside ``B``, ``l_b`` outside; target ``q_b`` inside, ``y_b`` outside;

(lines 358-375), where ``q = LCC(argmax f_t(u))`` (lines 112-117, 363-366): the teacher, in train
mode (line 344), runs on ``u_a`` and on ``u_b`` in two passes, and ``LCC`` keeps, in each slice and
for each foreground class, only the class's largest 8-connected component (``skimage.measure.label``
with its default full connectivity, ties to the component met first in raster order); the other
pixels of the class become background (lines 89-109). The student runs on ``x_in`` and on ``x_out``
in two passes (lines 374-375). For a prediction ``p = softmax(f_s(x))``, a target ``t`` and a region
``R`` (the box or its complement), over the batch's pixels (``mix_loss``, lines 167-179, and
``DiceLoss`` with a mask, ``code/utils/losses.py`` lines 79-134)::

    Dice_R = 1/C sum_c [1 - (2 sum_R p_c t_c + 1e-10) / (sum_R p_c^2 + sum_R t_c + 1e-10)]
    CE_R   = sum_R CE(p, t) / (|R| + 1e-16)

(``t_c`` one-hot, the background class included), and the loss (lines 376-383) is::

    L = 1/2 sum_{x in {x_in, x_out}} sum_{R in {B, not B}} w_R(x) (Dice_R + CE_R)

with ``w = 1`` on a region whose target is a ground truth and ``w = alpha`` where it is a
pseudo-label. After every optimiser step ``theta_t = d theta_t + (1 - d) theta_s`` (line 390, the
whole state dict: batch-norm running statistics are averaged too).

Defaults, from the same file: ``alpha = 0.5`` (``--u_weight``, line 48; the paper's alpha),
``ema_decay = 0.99`` (constant, line 390), ``box_fraction = 2/3`` (line 135),
``largest_component = true`` (``nms=1``, lines 365-366), and the student is the network evaluated
(``evaluate = "student"``): validation and the saved best model use ``model`` (lines 414-433), which
``code/test_ACDC.py`` (lines 91-93) tests. The recipe weight multiplies ``L``; BCP's own total is
``L`` itself (weight 1; its ``consistency_weight``, line 370, is computed but never used).

Pairing in mireg's batch. BCP splits 12 labelled and 12 unlabelled images in halves (``a`` the first
6, ``b`` the last 6, lines 310 and 358-361). Here, with ``n_l`` labelled and ``n_u`` unlabelled
images, ``k = max(1, min(n_l, n_u) // 2)``: the ``a`` images are the first ``k`` of each group, the
``b`` images the next ``k``. Images past the first ``2k`` of a group are not used by this loss; a
group of one image serves as both ``a`` and ``b``.

What differs from BCP's own pipeline:

* BCP first pre-trains the student for 10000 iterations on copy-paste mixes of labelled images only
  (``pre_train``, lines 193-302, ``--pre_iterations``), then starts both student and teacher from the
  best pre-trained checkpoint (lines 335-336). mireg runs no such stage: the teacher starts as a
  copy of the freshly initialised student.
* mireg's step adds its supervised cross-entropy on the unmixed labelled batch (and runs its main
  forward on ``[x_l, x_u, T(x_u)]``); BCP's self-training loss is ``L`` alone.
* Optimiser, augmentation, batch composition and validation are mireg's (Adam with warm-up and
  cosine; its batched affine and intensity jitter), not BCP's (SGD, lr 0.01 constant, momentum 0.9,
  weight decay 1e-4; rot90/flip or a rotation, slices resized to 256 x 256; validation every 200
  iterations).
* Of the teacher's buffers only floating-point ones (running means and variances) are averaged;
  integer ones (``num_batches_tracked``) keep the teacher's own count.
* Under multi-process training each process pairs the images of its own shard of the batch; the
  sums of the loss are reduced over the processes (``ctx.reduction``).
* The largest components are found on the training device (label propagation with pointer
  jumping), not with scikit-image on the CPU; deciding that the propagation has converged is a host
  sync per round, the only ones of this loss (none with ``largest_component = false``).

The box is drawn from ``ctx.rng()`` (in training the run's checkpointed generator), so a resumed
run draws the boxes an uninterrupted one would.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mireg.augment.views import mix
from mireg.contract import Backbone, Group, Regularizer, RegularizerConfig, RegularizerOutput, StepContext

__all__ = ["BCP", "BCPConfig", "copy_paste_box", "largest_components", "pair_indices"]

_DICE_SMOOTH = 1e-10
_CE_EPS = 1e-16


def copy_paste_box(
    height: int,
    width: int,
    fraction: float,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """BCP's box: ``floor(fraction * H) x floor(fraction * W)`` pixels, corner uniform as in BCP.

    The top row is uniform on ``{0, ..., H - h_B - 1}`` (NumPy's ``randint(0, H - h_B)``), the left
    column likewise (0 where the box fills the side).

    Args:
        height: Image height.
        width: Image width.
        fraction: Side of the box as a share of the image side.
        generator: Random generator; drawn on its own device.
        device: Where the mask is made.

    Returns:
        ``(height, width)`` bool mask, true inside the box.
    """
    box_h = max(1, math.floor(height * fraction + 1e-6))
    box_w = max(1, math.floor(width * fraction + 1e-6))
    top = torch.randint(max(height - box_h, 1), (1,), generator=generator, device=generator.device)
    left = torch.randint(max(width - box_w, 1), (1,), generator=generator, device=generator.device)
    top, left = top.to(device), left.to(device)
    rows = torch.arange(height, device=device)[:, None]
    cols = torch.arange(width, device=device)[None, :]
    return (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)


def pair_indices(n_labeled: int, n_unlabeled: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Indices ``(l_a, l_b, u_a, u_b)`` of the images mixed: see the module docstring."""
    k = max(1, min(n_labeled, n_unlabeled) // 2)
    first = torch.arange(k, device=device)
    second = torch.arange(k, 2 * k, device=device)
    return first, second.clamp(max=n_labeled - 1), first, second.clamp(max=n_unlabeled - 1)


#: Propagation rounds between two convergence checks in :func:`largest_components`.
_ROUNDS_PER_CHECK = 4


def largest_components(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Keep, per slice and foreground class, the class's largest 8-connected component.

    Pixels of a foreground class outside its largest component become background (0); between
    components of equal size, the one whose first pixel comes first in raster order is kept (as
    ``np.argmax`` over ``skimage.measure.label``'s sequential labels does).

    Args:
        labels: ``(N, H, W)`` integer label maps.
        num_classes: Number of classes, background (0) included.

    Returns:
        ``(N, H, W)`` int64 label maps.
    """
    n, h, w = labels.shape
    pixels = h * w
    if pixels >= 2**24:  # the component ids are float32 (for max pooling) and must be exact
        raise ValueError(f"slices of {h} x {w} pixels are too large")
    classes = torch.arange(1, num_classes, device=labels.device)
    member = (labels[:, None] == classes.view(1, -1, 1, 1)).reshape(-1, 1, h, w)
    outside = float(pixels)
    index = torch.arange(pixels, device=labels.device, dtype=torch.float32).view(1, 1, h, w)
    # Every pixel carries the id (raster index) of a pixel of its component; the ids fall to the
    # component's smallest index by 3 x 3 minimum propagation and pointer jumping.
    # The ids stop changing once converged, so convergence is checked (a host sync) every few rounds.
    ids = torch.where(member, index, outside)
    while True:
        previous = ids
        for _ in range(_ROUNDS_PER_CHECK):
            pooled = -F.max_pool2d(-ids, kernel_size=3, stride=1, padding=1)
            flat = torch.where(member, pooled, outside).flatten(1)
            jumped = flat.gather(1, flat.long().clamp(max=pixels - 1))
            ids = torch.where(member.flatten(1), torch.minimum(flat, jumped), outside).view_as(ids)
        if torch.equal(ids, previous):
            break
    component = ids.long().flatten(1)
    sizes = torch.zeros(component.shape[0], pixels + 1, device=labels.device)
    sizes.scatter_add_(1, component, member.flatten(1).float())
    largest = sizes[:, :pixels].argmax(dim=1, keepdim=True)
    keep = (member.flatten(1) & (component == largest)).view(n, -1, h, w)
    return (keep.long() * classes.view(1, -1, 1, 1)).sum(dim=1)


def _region_sums(logits: torch.Tensor, target: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """``(2, 3C + 2)`` sums over the pixels outside (row 0) and inside (row 1) the box:
    ``sum p_c t_c``, ``sum p_c^2``, ``sum t_c`` per class, the summed cross-entropy, the pixel count."""
    c = logits.shape[1]
    p = logits.softmax(dim=1)
    onehot = F.one_hot(target, c).permute(0, 3, 1, 2).to(p.dtype)
    ce = F.cross_entropy(logits, target, reduction="none")
    rows = []
    for region in (~inside, inside):
        m = region.to(p.dtype)
        mc = m[:, None]
        rows.append(
            torch.cat(
                [
                    (p * onehot * mc).sum(dim=(0, 2, 3)),
                    (p * p * mc).sum(dim=(0, 2, 3)),
                    (onehot * mc).sum(dim=(0, 2, 3)),
                    (ce * m).sum().view(1),
                    m.sum().view(1),
                ]
            )
        )
    return torch.stack(rows)


class BCP(Regularizer):
    """The teacher network (not optimised), its EMA update and the bidirectional copy-paste loss."""

    #: The step's groups it reads (Regularizer.reads): none; its logits come from images it mixes.
    reads: frozenset[Group] = frozenset()

    def __init__(
        self,
        student: Backbone,
        alpha: float = 0.5,
        ema_decay: float = 0.99,
        box_fraction: float = 2 / 3,
        largest_component: bool = True,
        evaluate: Literal["student", "teacher"] = "student",
    ) -> None:
        super().__init__()
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.num_classes = student.num_classes
        self.alpha = alpha
        self.ema_decay = ema_decay
        self.box_fraction = box_fraction
        self.largest_component = largest_component
        self.evaluate = evaluate

    @torch.no_grad()
    def pseudo_labels(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's labels for ``x`` (train mode, one pass): argmax, then the largest components."""
        self.teacher.train()
        labels = self.teacher(x).float().argmax(dim=1)
        return largest_components(labels, self.num_classes) if self.largest_component else labels

    def mixes(
        self, ctx: StepContext
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """The step's box ``(H, W)`` and the inward and outward (image, target) pairs."""
        x_l, y_l, x_u = ctx.x_l, ctx.y_l, ctx.x_u
        l_a, l_b, u_a, u_b = pair_indices(len(x_l), len(x_u), x_l.device)
        height, width = x_l.shape[-2:]
        box = copy_paste_box(height, width, self.box_fraction, ctx.rng(), x_l.device)
        q_a, q_b = self.pseudo_labels(x_u[u_a]), self.pseudo_labels(x_u[u_b])
        boxes = box.expand(len(l_a), *box.shape)
        inward = (mix(x_u[u_a], x_l[l_a], boxes), mix(q_a, y_l[l_a], boxes))
        outward = (mix(x_l[l_b], x_u[u_b], boxes), mix(y_l[l_b], q_b, boxes))
        return box, inward, outward

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        box, (x_in, t_in), (x_out, t_out) = self.mixes(ctx)
        boxes = box.expand(len(x_in), *box.shape)
        sums = torch.stack(
            [
                _region_sums(ctx.forward(x_in).logits, t_in, boxes),
                _region_sums(ctx.forward(x_out).logits, t_out, boxes),
            ]
        )  # (2 images, 2 regions [outside, inside], 3C + 2)
        sums = ctx.reduction.sum(sums)
        c = self.num_classes
        intersect, p_sq, t_sum = sums[..., :c], sums[..., c : 2 * c], sums[..., 2 * c : 3 * c]
        dice = (1 - (2 * intersect + _DICE_SMOOTH) / (p_sq + t_sum + _DICE_SMOOTH)).mean(dim=-1)
        ce = sums[..., 3 * c] / (sums[..., 3 * c + 1] + _CE_EPS)
        a = self.alpha
        # Inward: pseudo-labels outside the box, ground truth inside; outward: the reverse.
        weights = torch.tensor([[a, 1.0], [1.0, a]], device=sums.device, dtype=sums.dtype)
        dice_total, ce_total = (weights * dice).sum(), (weights * ce).sum()
        loss = (dice_total + ce_total) / 2
        return RegularizerOutput(loss, {"dice": dice_total.detach(), "ce": ce_total.detach()})

    @torch.no_grad()
    def after_step(self, model: nn.Module, step: int) -> None:
        d = self.ema_decay
        for t, s in zip(self.teacher.parameters(), model.parameters(), strict=True):
            t.mul_(d).add_(s.detach(), alpha=1.0 - d)
        for tb, sb in zip(self.teacher.buffers(), model.buffers(), strict=True):
            if tb.is_floating_point():
                tb.mul_(d).add_(sb.detach(), alpha=1.0 - d)

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        return self.teacher if self.evaluate == "teacher" else model


class BCPConfig(RegularizerConfig):
    """``[[regularizers]] name = "bcp"``: bidirectional copy-paste with a mean teacher.

    ``weight`` (BCP: 1), ``alpha`` (the weight of pseudo-labelled regions), ``ema_decay``,
    ``box_fraction``, ``largest_component`` and ``evaluate``; defaults and sources in
    :mod:`mireg.regularizers.bcp`.
    """

    alpha: float = Field(0.5, ge=0, description="weight of the pseudo-labelled regions (BCP: 0.5)")
    ema_decay: float = Field(0.99, ge=0, lt=1, description="teacher EMA decay, constant (BCP: 0.99)")
    box_fraction: float = Field(2 / 3, gt=0, lt=1, description="box side / image side (BCP: 2/3)")
    largest_component: bool = Field(
        True, description="keep each class's largest connected component in pseudo-labels (BCP: true)"
    )
    evaluate: Literal["student", "teacher"] = Field(
        "student", description="the network validated, tested and checkpointed (BCP: the student)"
    )

    def build(self, backbone: Backbone) -> BCP:
        return BCP(
            backbone,
            self.alpha,
            self.ema_decay,
            self.box_fraction,
            self.largest_component,
            self.evaluate,
        )
