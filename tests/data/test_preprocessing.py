"""The numpy preprocessing agrees with the torch resampling that made the stores before it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mireg.preprocessing.volume import resample_slices


@pytest.mark.parametrize("size", [(7, 9), (31, 20), (64, 64), (130, 154)])
def test_bilinear_resampling_matches_torch_interpolate(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(size[0])
    x = (rng.random((3, 2, 41, 53)) * 1000).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear", align_corners=False).numpy()
    result = resample_slices(x, size, "bilinear")
    assert result.dtype == np.float32 and result.shape == expected.shape
    np.testing.assert_allclose(result, expected, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("size", [(7, 9), (31, 20), (41, 53), (130, 154)])
def test_nearest_resampling_matches_torch_exactly(size: tuple[int, int]) -> None:
    labels = np.random.default_rng(1).integers(0, 4, (3, 41, 53)).astype(np.uint8)
    as_float = torch.from_numpy(labels[:, None].astype(np.float32))
    expected = F.interpolate(as_float, size=size, mode="nearest-exact")[:, 0].numpy().astype(np.uint8)
    result = resample_slices(labels, size, "nearest")
    assert result.dtype == np.uint8
    np.testing.assert_array_equal(result, expected)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="cubic"):
        resample_slices(np.zeros((2, 4, 4), np.float32), (3, 3), "cubic")
