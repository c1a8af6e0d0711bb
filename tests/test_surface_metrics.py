"""Surface metrics (DSC, HD95, HD, ASSD) of ``mireg.evaluation.metrics`` against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from mireg.evaluation.metrics import ClassMetrics, class_metrics, surface_distances, volume_metrics


def _approx(m: ClassMetrics, dice: float, hd95: float, hd: float, assd: float) -> None:
    assert m.dice == pytest.approx(dice)
    assert m.hd95 == pytest.approx(hd95)
    assert m.hd == pytest.approx(hd)
    assert m.assd == pytest.approx(assd)


def test_single_voxels_anisotropic_spacing() -> None:
    # Spacing (1, 1, 5) mm; the voxels are 2 slices apart along axis 2 -> 2 * 5 = 10 mm.
    # Each mask is its own one-voxel surface, so every directed set is [10]: HD95 = HD = ASSD = 10.
    a = np.zeros((3, 3, 5), dtype=bool)
    b = np.zeros_like(a)
    a[1, 1, 1] = True
    b[1, 1, 3] = True
    _approx(class_metrics(a, b, (1.0, 1.0, 5.0)), dice=0.0, hd95=10.0, hd=10.0, assd=10.0)


def test_single_voxels_combined_offsets() -> None:
    # Offset of 3 voxels along axis 0 (1 mm) and 1 slice along axis 2 (5 mm): sqrt(3^2 + 5^2) = sqrt(34).
    a = np.zeros((6, 3, 4), dtype=bool)
    b = np.zeros_like(a)
    a[1, 1, 1] = True
    b[4, 1, 2] = True
    d = math.sqrt(34.0)
    _approx(class_metrics(a, b, (1.0, 1.0, 5.0)), dice=0.0, hd95=d, hd=d, assd=d)
    d_ab, d_ba = surface_distances(a, b, (1.0, 1.0, 5.0))
    assert d_ab.tolist() == pytest.approx([d])
    assert d_ba.tolist() == pytest.approx([d])


def test_identical_masks() -> None:
    a = np.zeros((4, 5, 6), dtype=bool)
    a[1:3, 1:4, 2:5] = True
    _approx(class_metrics(a, a.copy(), (2.0, 0.5, 0.5)), dice=1.0, hd95=0.0, hd=0.0, assd=0.0)


def test_surface_is_face_connected_boundary() -> None:
    # A 3x3x3 cube inside a larger array: its surface is the 26 voxels around the centre; the centre
    # has all 6 face neighbours inside. A second mask at the centre only: distances from the 26
    # surface voxels to the centre voxel are 1 (6 faces), sqrt(2) (12 edges), sqrt(3) (8 corners).
    cube = np.zeros((5, 5, 5), dtype=bool)
    cube[1:4, 1:4, 1:4] = True
    centre = np.zeros_like(cube)
    centre[2, 2, 2] = True
    d_cube, d_centre = surface_distances(cube, centre, (1.0, 1.0, 1.0))
    expected = sorted([1.0] * 6 + [math.sqrt(2)] * 12 + [math.sqrt(3)] * 8)
    assert sorted(d_cube.tolist()) == pytest.approx(expected)
    assert d_centre.tolist() == pytest.approx([1.0])  # centre -> nearest cube-surface voxel (a face)
    # A mask filling a whole 3x3x3 array: the border counts as outside, so all voxels but the centre
    # (whose 6 face neighbours are all inside) are surface voxels -> 26.
    full = np.ones((3, 3, 3), dtype=bool)
    d_full, _ = surface_distances(full, full, (1.0, 1.0, 1.0))
    assert d_full.size == 26
    # A 1-voxel-thick slab at the array border: every voxel is on the surface (border = outside).
    slab = np.ones((1, 3, 3), dtype=bool)
    d_slab, _ = surface_distances(slab, slab, (1.0, 1.0, 1.0))
    assert d_slab.size == 9


def test_both_empty() -> None:
    empty = np.zeros((3, 4, 5), dtype=bool)
    assert class_metrics(empty, empty.copy(), (1.0, 1.0, 1.0)) == ClassMetrics(1.0, 0.0, 0.0, 0.0)


@pytest.mark.parametrize("empty_side", ["pred", "gt"])
def test_one_empty(empty_side: str) -> None:
    empty = np.zeros((3, 4, 5), dtype=bool)
    full = empty.copy()
    full[1, 2, 3] = True
    pred, gt = (empty, full) if empty_side == "pred" else (full, empty)
    assert class_metrics(pred, gt, (1.0, 1.0, 1.0)) == ClassMetrics(0.0, None, None, None)


def test_surface_distances_rejects_empty_mask() -> None:
    a = np.zeros((3, 3), dtype=bool)
    b = a.copy()
    b[0, 0] = True
    with pytest.raises(ValueError):
        surface_distances(a, b, (1.0, 1.0))


def test_asymmetric_directed_distances_2d() -> None:
    # 2D, spacing (1, 1). A = single voxel (0, 0); B = line (0, 0), (0, 1), (0, 2).
    # Every voxel of both masks is a surface voxel (each has a 4-neighbour outside).
    #   d(S_A -> S_B) = [0]          (A's voxel is in B)
    #   d(S_B -> S_A) = [0, 1, 2]
    # p95 (numpy linear): A->B: 0; B->A: position 0.95 * 2 = 1.9 -> 1 + 0.9 * (2 - 1) = 1.9.
    # HD95 = max(0, 1.9) = 1.9 (the larger directed percentile), HD = max(0, 2) = 2,
    # ASSD = (0 + (0 + 1 + 2)) / (1 + 3) = 0.75, DSC = 2 * 1 / (1 + 3) = 0.5.
    a = np.zeros((3, 4), dtype=bool)
    b = np.zeros_like(a)
    a[0, 0] = True
    b[0, 0:3] = True
    d_ab, d_ba = surface_distances(a, b, (1.0, 1.0))
    assert d_ab.tolist() == pytest.approx([0.0])
    assert d_ba.tolist() == pytest.approx([0.0, 1.0, 2.0])
    _approx(class_metrics(a, b, (1.0, 1.0)), dice=0.5, hd95=1.9, hd=2.0, assd=0.75)
    _approx(class_metrics(b, a, (1.0, 1.0)), dice=0.5, hd95=1.9, hd=2.0, assd=0.75)  # symmetric


def test_hd95_below_hd_with_one_outlier() -> None:
    # 2D, spacing (2, 1) mm (rows 2 mm apart). GT = row 0, columns 0..18 (19 voxels, all surface).
    # Pred = GT plus one isolated voxel at (10, 0): 20 surface voxels.
    #   d(S_pred -> S_gt) = [0] * 19 + [10 rows * 2 mm = 20]   (nearest GT voxel to (10, 0) is (0, 0))
    #   d(S_gt -> S_pred) = [0] * 19                            (every GT voxel is a pred surface voxel)
    # p95 with numpy's default linear interpolation of the 20 sorted values v: position
    # 0.95 * (20 - 1) = 18.05 -> v[18] + 0.05 * (v[19] - v[18]) = 0 + 0.05 * 20 = 1.0; the other
    # direction gives 0. So HD95 = 1.0 < HD = 20. ASSD = 20 / (20 + 19) = 20 / 39.
    # DSC = 2 * 19 / (20 + 19) = 38 / 39.
    gt = np.zeros((12, 20), dtype=bool)
    gt[0, 0:19] = True
    pred = gt.copy()
    pred[10, 0] = True
    m = class_metrics(pred, gt, (2.0, 1.0))
    _approx(m, dice=38 / 39, hd95=1.0, hd=20.0, assd=20 / 39)
    assert m.hd95 is not None and m.hd is not None and m.hd95 < m.hd


def test_volume_metrics_three_labels() -> None:
    # Spacing (3, 1, 1). Label 1: a 2x2x2 cube at slices 0..1 (pred) and 1..2 (gt); all 8 voxels of each
    #   cube are surface voxels. Overlap 4 voxels -> DSC = 2 * 4 / 16 = 0.5. From pred: the 4 voxels in
    #   slice 1 are on the gt surface (0), the 4 in slice 0 are one slice (3 mm) from it -> [0]*4 + [3]*4,
    #   and the same from gt. HD = 3; p95 position 0.95 * 7 = 6.65 lies between two 3s -> HD95 = 3;
    #   ASSD = (12 + 12) / 16 = 1.5.
    # Label 2: absent in both -> DSC 1, distances 0. Label 3: present in gt only -> DSC 0, None.
    pred = np.zeros((4, 5, 5), dtype=np.int64)
    gt = np.zeros_like(pred)
    pred[0:2, 1:3, 1:3] = 1
    gt[1:3, 1:3, 1:3] = 1
    gt[3, 4, 4] = 3
    out = volume_metrics(pred, gt, [1, 2, 3], (3.0, 1.0, 1.0))
    assert list(out) == [1, 2, 3]
    _approx(out[1], dice=0.5, hd95=3.0, hd=3.0, assd=1.5)
    assert out[2] == ClassMetrics(1.0, 0.0, 0.0, 0.0)
    assert out[3] == ClassMetrics(0.0, None, None, None)


def test_shape_mismatch_and_bad_spacing_raise() -> None:
    with pytest.raises(ValueError, match="shape"):
        volume_metrics(np.zeros((2, 3, 4), dtype=int), np.zeros((2, 3, 5), dtype=int), [1], (1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        class_metrics(np.zeros((2, 3), dtype=bool), np.zeros((3, 2), dtype=bool), (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        volume_metrics(np.zeros((2, 3, 4), dtype=int), np.zeros((2, 3, 4), dtype=int), [1], (1.0, 1.0))


def _blob(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma=2.0) > 0.05


def test_doubling_spacing_doubles_distances() -> None:
    rng = np.random.default_rng(0)
    a, b = _blob(rng, (10, 24, 24)), _blob(rng, (10, 24, 24))
    assert a.any() and b.any() and (a != b).any()
    m1 = class_metrics(a, b, (2.5, 0.8, 1.1))
    m2 = class_metrics(a, b, (5.0, 1.6, 2.2))
    assert m1.hd is not None and m1.hd > 0
    assert m2.dice == pytest.approx(m1.dice)
    for name in ("hd95", "hd", "assd"):
        assert getattr(m2, name) == pytest.approx(2 * getattr(m1, name))


def test_crop_matches_brute_force() -> None:
    # Reference without any cropping: all pairwise distances between surface voxels (small masks,
    # one of them touching the array border), to check the bounding-box crop changes nothing.
    rng = np.random.default_rng(1)
    spacing = np.array([3.0, 1.0, 0.7])
    a = np.zeros((12, 14, 16), dtype=bool)
    b = np.zeros_like(a)
    a[0:3, 2:6, 3:7] = True
    a[5, 10, 12] = True
    b[6:9, 5:8, 8:15] = rng.random((3, 3, 7)) > 0.3
    structure = ndimage.generate_binary_structure(3, 1)

    def surf(m: np.ndarray) -> np.ndarray:
        return np.argwhere(m & ~ndimage.binary_erosion(m, structure, border_value=0)) * spacing

    pa, pb = surf(a), surf(b)
    pair = np.linalg.norm(pa[:, None, :] - pb[None, :, :], axis=-1)
    d_ab, d_ba = surface_distances(a, b, spacing.tolist())
    np.testing.assert_allclose(d_ab, pair.min(axis=1))
    np.testing.assert_allclose(d_ba, pair.min(axis=0))
