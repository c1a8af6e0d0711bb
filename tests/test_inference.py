"""Inference shared by evaluation, prediction and exported models: TTA, largest components, volumes."""

from __future__ import annotations

import numpy as np

from mireg.inference import (
    FLIPS,
    InferenceOptions,
    Network,
    Preprocessing,
    keep_largest_components,
    predict_volume,
    segment_slices,
    softmax,
    window_starts,
    window_weight,
)


def ramp_network(x: np.ndarray) -> np.ndarray:
    """Not flip-equivariant: class 1's logit grows with the column index, class 2's with the row."""
    n, _, h, w = x.shape
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    logits = np.stack([x[:, 0], x[:, 0] + cols / w, x[:, 0] + rows / h], axis=1)
    return logits.astype(np.float32)


def pixelwise_network(x: np.ndarray) -> np.ndarray:
    """Flip-equivariant: each pixel's logits depend on its own intensity only."""
    return np.concatenate([1 - x, x, 2 * x - 0.5], axis=1).astype(np.float32)


def test_tta_averages_the_probabilities_of_the_four_flips_flipped_back() -> None:
    slices = np.random.default_rng(0).random((5, 6, 8)).astype(np.float32)
    got = segment_slices(ramp_network, slices, batch=2, tta=True)
    x = slices[:, None]
    expected = np.mean(
        [np.flip(softmax(ramp_network(np.flip(x, axes).copy())), axes) for axes in FLIPS], axis=0
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_allclose(got, got[:, :, ::-1, ::-1], rtol=1e-5)  # symmetric under both flips
    plain = segment_slices(ramp_network, slices, batch=2)
    assert not np.allclose(plain, got)
    np.testing.assert_allclose(plain.sum(axis=1), 1, rtol=1e-6)


def test_tta_changes_nothing_for_a_flip_equivariant_network_and_batches_do_not_matter() -> None:
    slices = np.random.default_rng(1).random((7, 6, 8)).astype(np.float32)
    plain = segment_slices(pixelwise_network, slices, batch=3)
    np.testing.assert_allclose(segment_slices(pixelwise_network, slices, batch=3, tta=True), plain, rtol=1e-6)
    np.testing.assert_array_equal(segment_slices(pixelwise_network, slices, batch=1), plain)


def test_keep_largest_keeps_each_structures_largest_6_connected_component() -> None:
    labels = np.zeros((10, 10, 6), dtype=np.uint8)
    labels[1:4, 1:4, 0:3] = 1  # 27 voxels: kept
    labels[7:9, 7:9, 4:6] = 1  # 8 voxels: removed
    labels[5:7, 0:2, 0:2] = 2  # the only component of class 2: kept
    labels[0, 9, 0] = labels[1, 8, 1] = 3  # touch at a corner only: two components of one voxel
    labels[9, 0, 5] = 3
    out = keep_largest_components(labels, 4)
    assert (out[1:4, 1:4, 0:3] == 1).all() and (out[7:9, 7:9, 4:6] == 0).all()
    assert (out[5:7, 0:2, 0:2] == 2).all()
    assert (out == 3).sum() == 1 and out[0, 9, 0] == 3  # of equal sizes the first in scan order stays
    assert labels[7, 7, 4] == 1  # the input is not changed
    assert (keep_largest_components(np.zeros((3, 3, 3), np.uint8), 4) == 0).all()


def test_keep_largest_connects_across_slices_in_3d() -> None:
    labels = np.zeros((6, 6, 3), dtype=np.uint8)
    labels[0:2, 0:2, 0] = 1
    labels[1, 1, 1] = 1  # joins the two slices' squares into one component
    labels[1:3, 1:3, 2] = 1
    labels[5, 5, 2] = 1
    out = keep_largest_components(labels, 2)
    assert out.sum() == labels.sum() - 1 and out[5, 5, 2] == 0


def test_predict_volume_maps_back_to_the_scan_grid_with_both_options() -> None:
    image = np.zeros((30, 24, 4), dtype=np.float32)
    image[5:20, 4:18, :] = 100.0  # a bright block: class 1
    image[26:29, 20:23, 1] = 100.0  # a small separate bright block: removed by keep_largest
    prep = Preprocessing(spacing=1.0, canvas=32, classes=["background", "a", "b"])
    plain = predict_volume(pixelwise_network, image, (1.0, 1.0, 5.0), prep, batch=3)
    assert plain.labels.shape == image.shape and plain.probabilities.shape == (*image.shape, 3)
    assert (plain.labels[5:20, 4:18] > 0).all() and (plain.labels[26:29, 20:23, 1] > 0).all()
    np.testing.assert_array_equal(plain.probabilities.argmax(axis=-1), plain.labels)
    both = predict_volume(
        pixelwise_network, image, (1.0, 1.0, 5.0), prep, batch=3, options=InferenceOptions(True, True)
    )
    assert (both.labels[26:29, 20:23, 1] == 0).all()
    np.testing.assert_array_equal(both.labels[:24], plain.labels[:24])


def fixed_size_network(window: int) -> Network:
    """A pixelwise network that accepts only ``window`` x ``window`` slices, like an export of fixed
    input size (or a UNet given a size it cannot pool)."""

    def run(x: np.ndarray) -> np.ndarray:
        assert x.shape[2:] == (window, window), f"got {x.shape[2:]}, accepts only {window}x{window}"
        return pixelwise_network(x)

    return run


def test_windows_cover_an_axis_evenly_with_the_overlap_asked() -> None:
    assert window_starts(32, 32) == [0] and window_starts(20, 32) == [0]
    assert window_starts(48, 32) == [0, 16]
    starts = window_starts(100, 32)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(0 < b - a <= 16 for a, b in zip(starts, starts[1:], strict=False))  # >= half overlap
    weight = window_weight(32)
    assert weight.shape == (32, 32) and weight.min() > 0 and weight.max() == 1.0
    assert weight[16, 16] > weight[0, 16] > weight[0, 0]


def test_slices_larger_than_the_window_are_segmented_window_by_window() -> None:
    slices = np.random.default_rng(2).random((3, 70, 45)).astype(np.float32)
    whole = segment_slices(pixelwise_network, slices, batch=2)
    tiled = segment_slices(fixed_size_network(32), slices, batch=2, window=32)
    np.testing.assert_allclose(tiled, whole, rtol=1e-5, atol=1e-6)  # a pixelwise network: blending is exact
    tiled_tta = segment_slices(fixed_size_network(32), slices, batch=2, tta=True, window=32)
    np.testing.assert_allclose(tiled_tta, whole, rtol=1e-5, atol=1e-6)


def test_the_whole_field_of_view_is_segmented_beyond_the_training_canvas() -> None:
    """A 160 mm field of view and a 32 mm canvas at 1 mm: the structures near the edges, which a crop
    to the canvas would label background, are found; the network only ever sees 32 x 32 windows."""
    image = np.zeros((160, 120, 2), dtype=np.float32)
    image[2:12, 3:15, :] = 100.0  # a corner far outside a central 32 x 32 crop
    image[150:158, 100:118, :] = 100.0
    image[75:85, 55:65, :] = 100.0  # the centre
    prep = Preprocessing(spacing=1.0, canvas=32, classes=["background", "a", "b"])
    result = predict_volume(fixed_size_network(32), image, (1.0, 1.0, 5.0), prep, batch=4)
    expected = pixelwise_network(np.moveaxis(image, 2, 0)[:, None] / 100.0).argmax(axis=1)
    np.testing.assert_array_equal(result.labels, np.moveaxis(expected, 0, 2))
    assert (result.labels[2:12, 3:15] > 0).all() and (result.labels[150:158, 100:118] > 0).all()
