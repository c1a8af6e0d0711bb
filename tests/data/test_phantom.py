"""Tests for the synthetic ACDC-layout cohort (mireg.data.phantom)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mireg.data.phantom import GROUPS, PhantomPatient, generate_cohort, generate_patient

SEED = 3
N = 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, int]]]:
    root = tmp_path_factory.mktemp("phantom")
    calls: list[tuple[int, int]] = []
    generate_cohort(root, n_patients=N, seed=SEED, progress=lambda i, n: calls.append((i, n)))
    return root, calls


def _info(folder: Path) -> dict[str, str]:
    lines = (folder / "Info.cfg").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def test_layout_and_info(cohort: tuple[Path, list[tuple[int, int]]]) -> None:
    root, calls = cohort
    assert calls == [(1, N), (2, N), (3, N)]
    folders = sorted(p.name for p in (root / "training").iterdir())
    assert folders == ["patient001", "patient002", "patient003"]
    for k, name in enumerate(folders):
        folder = root / "training" / name
        info = _info(folder)
        assert set(info) == {"ED", "ES", "Group", "Height", "Weight", "NbFrame"}
        assert info["ED"] == "1"
        es = int(info["ES"])
        assert 1 < es <= int(info["NbFrame"])
        assert info["Group"] == GROUPS[k % len(GROUPS)]
        assert 140 < float(info["Height"]) < 200
        assert 30 < float(info["Weight"]) < 150
        expected = {
            f"{name}_frame01.nii.gz",
            f"{name}_frame01_gt.nii.gz",
            f"{name}_frame{es:02d}.nii.gz",
            f"{name}_frame{es:02d}_gt.nii.gz",
            "Info.cfg",
        }
        assert {p.name for p in folder.iterdir()} == expected  # no temporary files left behind


def test_nifti_contents(cohort: tuple[Path, list[tuple[int, int]]]) -> None:
    root, _ = cohort
    for folder in sorted((root / "training").iterdir()):
        es = int(_info(folder)["ES"])
        for frame in (1, es):
            stem = folder / f"{folder.name}_frame{frame:02d}"
            img = nib.load(f"{stem}.nii.gz")
            gt = nib.load(f"{stem}_gt.nii.gz")
            image, label = np.asarray(img.dataobj), np.asarray(gt.dataobj)
            assert image.dtype == np.int16 and label.dtype == np.uint8
            assert image.shape == label.shape and image.ndim == 3
            assert 6 <= image.shape[2] <= 10
            assert all(90 <= s <= 210 for s in image.shape[:2])
            zooms = img.header.get_zooms()
            assert zooms == pytest.approx(gt.header.get_zooms())
            assert np.diag(img.affine)[:3] == pytest.approx(zooms)
            assert 1.3 <= zooms[0] == zooms[1] <= 1.9 and 5 <= zooms[2] <= 10
            assert set(np.unique(label)) <= {0, 1, 2, 3}
            assert image.min() >= 0 and 200 < image.max() < 32767
            if frame == 1:
                mid = label[:, :, label.shape[2] // 2]
                assert set(np.unique(mid)) == {0, 1, 2, 3}


def test_cohort_matches_single_patient(cohort: tuple[Path, list[tuple[int, int]]]) -> None:
    root, _ = cohort
    patient = generate_patient(1, SEED)
    assert patient.patient_id == "patient002"
    folder = root / "training" / "patient002"
    assert int(_info(folder)["ES"]) == patient.es_frame
    for frame, (image, label) in patient.frames.items():
        stem = folder / f"patient002_frame{frame:02d}"
        img = nib.load(f"{stem}.nii.gz")
        np.testing.assert_array_equal(np.asarray(img.dataobj), image)
        np.testing.assert_array_equal(np.asarray(nib.load(f"{stem}_gt.nii.gz").dataobj), label)
        assert img.header.get_zooms() == pytest.approx(patient.spacing)


def _same(a: PhantomPatient, b: PhantomPatient) -> bool:
    if a.frames.keys() != b.frames.keys() or a.spacing != b.spacing:
        return False
    return all(
        a.frames[f][0].shape == b.frames[f][0].shape
        and np.array_equal(a.frames[f][0], b.frames[f][0])
        and np.array_equal(a.frames[f][1], b.frames[f][1])
        for f in a.frames
    )


def test_deterministic_and_seed_dependent() -> None:
    a, b = generate_patient(4, 11), generate_patient(4, 11)
    assert _same(a, b)
    meta = (a.height, a.weight, a.n_frames, a.es_frame)
    assert meta == (b.height, b.weight, b.n_frames, b.es_frame)
    assert not _same(a, generate_patient(4, 12))
    assert not _same(a, generate_patient(5, 11))


@pytest.mark.parametrize("index", range(5))
def test_es_cavity_smaller_than_ed(index: int) -> None:
    patient = generate_patient(index, 0)
    assert patient.ed_frame == 1 and patient.es_frame in patient.frames
    ed = (patient.frames[1][1] == 3).sum()
    es = (patient.frames[patient.es_frame][1] == 3).sum()
    assert 0 < es < ed


def test_groups_balanced() -> None:
    counts = Counter(generate_patient(i, 0).group for i in range(10))
    assert counts == dict.fromkeys(GROUPS, 2)
