"""Batched augmentation on the training device.

* :mod:`~mireg.augment.paper`: the paper's training augmentation (``[augment] preset = "paper"``);
* :mod:`~mireg.augment.strong`: nnU-Net v2's 2D training augmentation (``preset = "strong"``);
* :mod:`~mireg.augment.views`: the strong augmentations pseudo-labelling regularisers apply to their
  own views of a batch (intensity jitter, blur, CutMix boxes and mixing);
* :mod:`~mireg.augment.warp`: the one-``grid_sample`` warp and the Gaussian kernels they share.

All are plain functions of device tensors: nothing runs per sample on the CPU. Random numbers come
from :func:`mireg.contract.uniform`: drawn from the run's generator, which lives on the CPU, then
moved to the data's device. A seed therefore gives the same draws on the CPU and on a GPU (a
generator on CUDA draws other numbers than one on the CPU from the same seed), so a run trains the
same steps on either, up to floating-point rounding.

The functions a regulariser plugin uses are importable from here (``from mireg.augment import
cutmix_boxes, mix``).
"""

from mireg.augment.paper import augment_batch
from mireg.augment.strong import augment_strong_batch
from mireg.augment.views import cutmix_boxes, gaussian_blur, intensity_jitter, mix
from mireg.augment.warp import gaussian_kernels, warp_batch

__all__ = [
    "augment_batch",
    "augment_strong_batch",
    "cutmix_boxes",
    "gaussian_blur",
    "gaussian_kernels",
    "intensity_jitter",
    "mix",
    "warp_batch",
]
