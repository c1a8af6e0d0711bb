from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mireg.contract import DatasetConfig
from mireg.data.acdc import preprocess_acdc
from mireg.data.phantom import generate_cohort
from mireg.data.splits import Split, make_split
from mireg.errors import DataError
from mireg.preprocessing.store import VolumeStore
from mireg.preprocessing.volume import SliceGeometry, preprocess_volume, restore_labels


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("acdc_raw")
    generate_cohort(root, n_patients=6, seed=1)
    return root


def test_preprocess_reads_ed_and_es_with_their_metadata(raw: Path, tmp_path: Path) -> None:
    store = preprocess_acdc(raw, tmp_path / "store", spacing=4.0, canvas=64)
    assert len(store.volumes) == 12 and store.classes == ["background", "RV", "MYO", "LV"]
    assert store.images.shape[1:] == (64, 64) and store.images.dtype == np.float16
    first = store.volumes[0]
    assert (first.patient, first.phase, first.group) == ("patient001", "ED", "DCM")
    img = nib.load(raw / "training" / "patient001" / "patient001_frame01.nii.gz")
    assert first.shape == img.shape and first.n_slices == img.shape[2]
    assert np.allclose(first.affine, img.affine)
    assert float(store.images.min()) >= 0.0 and float(store.images.max()) <= 1.0
    assert set(np.unique(store.labels)) == {0, 1, 2, 3}
    again = VolumeStore.load(tmp_path / "store")
    assert again.volumes == store.volumes


def test_a_failed_preprocess_leaves_nothing_behind(raw: Path, tmp_path: Path) -> None:
    broken = tmp_path / "raw"
    shutil.copytree(raw, broken)
    gt = broken / "training" / "patient004" / "patient004_frame01_gt.nii.gz"
    data = np.asarray(nib.load(gt).dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, nib.load(gt).affine), gt)
    with pytest.raises(DataError, match=r"patient004_frame01_gt.nii.gz: label value 7"):
        preprocess_acdc(broken, tmp_path / "out", spacing=4.0, canvas=64)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_missing_frames_and_bad_folders_are_named(raw: Path, tmp_path: Path) -> None:
    broken = tmp_path / "raw"
    shutil.copytree(raw, broken)
    (broken / "training" / "patient002" / "patient002_frame01.nii.gz").unlink()
    with pytest.raises(DataError, match=r"patient002_frame01.nii.gz: file not found"):
        preprocess_acdc(broken, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no ACDC patient folders"):
        preprocess_acdc(tmp_path / "empty", tmp_path / "o")
    (broken / "training" / "patient003" / "patient003_frame01.nii.gz").write_bytes(b"not nifti")
    with pytest.raises(DataError, match="patient00[23]_frame01.nii.gz"):
        preprocess_acdc(broken, tmp_path / "out")


def test_geometry_round_trip_restores_labels_on_the_original_grid() -> None:
    label = np.zeros((70, 90, 3), dtype=np.int64)
    label[20:50, 30:60] = 3
    label[30:40, 40:50] = 2
    image = label * 100.0 + 5
    for spacing, canvas in (((1.5, 1.2, 8.0), 64), ((1.0, 1.0, 5.0), 32)):  # pad, and crop
        slices, lab, geometry = preprocess_volume(image, spacing, 2.0, canvas, label)
        assert slices.shape == (3, canvas, canvas) and lab is not None
        probs = np.eye(4, dtype=np.float32)[lab].transpose(0, 3, 1, 2)
        restored = restore_labels(probs, geometry)
        assert restored.shape == label.shape
        assert (restored == label).mean() > 0.97


def test_geometry_offsets_pad_small_and_crop_large_grids() -> None:
    assert SliceGeometry.for_volume((100, 40), (1.0, 1.0), 1.0, 64).offset == (-18, 12)


class _Cfg(DatasetConfig):
    pass


def test_splits_are_by_patient_disjoint_seeded_and_stratified(raw: Path, tmp_path: Path) -> None:
    generate_cohort(tmp_path / "raw20", n_patients=20, seed=2)
    store = preprocess_acdc(tmp_path / "raw20", tmp_path / "s", spacing=6.0, canvas=48)
    cfg = _Cfg(name="x", labeled_ratio=0.25, val_patients=3, test_patients=5)
    split = make_split(store, cfg, seed=1)
    parts = [split.labeled, split.unlabeled, split.validation, split.test]
    assert sum(map(len, parts)) == 20 and len(set().union(*map(set, parts))) == 20
    assert (len(split.test), len(split.validation), len(split.labeled)) == (5, 3, 3)
    groups = {v.patient: v.group for v in store.volumes}
    assert len({groups[p] for p in split.test}) == 5  # one per pathology group
    assert make_split(store, cfg, seed=1) == split and make_split(store, cfg, seed=2) != split
    by_count = make_split(store, _Cfg(name="x", labeled_patients=2, val_patients=3, test_patients=5), seed=1)
    assert len(by_count.labeled) == 2
    with pytest.raises(DataError, match="exceeds"):
        make_split(store, _Cfg(name="x", labeled_patients=50, val_patients=3, test_patients=5), 1)


def test_split_files_are_checked(raw: Path, tmp_path: Path) -> None:
    patients = [f"patient{i:03d}" for i in range(1, 7)]
    good = tmp_path / "split.json"
    good.write_text(
        '{"labeled": ["patient001"], "unlabeled": ["patient002"], '
        '"validation": ["patient003"], "test": ["patient004"]}'
    )
    assert Split.read(good, patients).test == ["patient004"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"labeled": ["patient001"], "test": ["patient001"]}')
    with pytest.raises(DataError, match="appears twice"):
        Split.read(bad, patients)
    bad.write_text('{"labeled": ["patient999"]}')
    with pytest.raises(DataError, match="unknown patient 'patient999'"):
        Split.read(bad, patients)


def test_a_run_split_reads_back_without_the_store(tmp_path: Path) -> None:
    split = Split(["b", "a"], ["c"], ["d"], [])
    path = tmp_path / "split.json"
    path.write_text(split.to_json())
    assert Split.read(path) == split  # any ids: no store to check them against
    path.write_text('{"labeled": ["7", 8]}')  # integer ids read as their decimal form
    assert Split.read(path, ["7", "8"]).labeled == ["7", "8"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, "split.json: cannot read split file"),
        ("{not json", "split.json: cannot read split file"),
        ('["a"]', "split.json: expected an object with lists labeled, unlabeled, validation, test"),
        ('{"labeled": "a"}', "split.json: expected an object with lists"),
        ('{"labeled": ["a"], "train": ["b"]}', "split.json: unknown keys ['train']"),
        ('{"labeled": ["a", null]}', "split.json: labeled[1]: expected a patient id, got None"),
        ('{"labeled": ["a"], "test": [true]}', "split.json: test[0]: expected a patient id, got True"),
        ('{"labeled": ["a"], "unlabeled": ["a"]}', "split.json: unlabeled: patient 'a' appears twice"),
        ('{"labeled": [], "test": ["a"]}', "split.json: labeled is empty"),
    ],
)
def test_split_structure_is_checked_without_patients(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "split.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(DataError) as info:
        Split.read(path)
    assert expected in str(info.value) and str(path) in str(info.value)
