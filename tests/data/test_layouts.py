"""Every supported raw layout goes through `mireg preprocess` and into a few training steps."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mireg.data.phantom import generate_cohort, generate_patient
from mireg.preprocessing.store import VolumeStore


def _organ_case(seed: int, shape: tuple[int, int, int] = (40, 36, 5)) -> tuple[np.ndarray, np.ndarray]:
    """A bright blob with two zones on a noisy background: (image, labels 0/1/2)."""
    rng = np.random.default_rng(seed)
    x, y = np.mgrid[: shape[0], : shape[1]]
    cx, cy = shape[0] / 2 + rng.uniform(-4, 4), shape[1] / 2 + rng.uniform(-4, 4)
    r = np.hypot(x - cx, y - cy)
    label = np.zeros(shape, dtype=np.uint8)
    for z in range(shape[2]):
        label[..., z][r < 9] = 1
        label[..., z][r < 5] = 2
    image = 100 + 300 * (label > 0) + 50 * (label == 2) + rng.normal(0, 20, shape)
    return image.astype(np.float32), label


def _save(path: Path, array: np.ndarray, zooms: tuple[float, ...] = (0.6, 0.6, 3.6)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*zooms[:3], 1.0])
    nib.save(nib.Nifti1Image(array, affine), path)


def make_msd(root: Path, cases: int = 8, unlabelled: int = 2) -> Path:
    task = root / "Task05_Prostate"
    meta = {
        "name": "Prostate",
        "modality": {"0": "T2", "1": "ADC"},
        "labels": {"0": "background", "1": "PZ", "2": "TZ"},
        "training": [],
        "test": [],
    }
    for i in range(cases + unlabelled):
        image, label = _organ_case(i)
        four_d = np.stack([image, image[::-1] * 0.5], axis=-1)  # T2, ADC
        if i < cases:
            _save(task / "imagesTr" / f"prostate_{i:02d}.nii.gz", four_d)
            _save(task / "labelsTr" / f"prostate_{i:02d}.nii.gz", label)
        else:
            _save(task / "imagesTs" / f"prostate_{i:02d}.nii.gz", four_d)
    (task / "imagesTr" / "._prostate_00.nii.gz").write_bytes(b"macOS resource fork")
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def make_nnunet(root: Path, cases: int = 8) -> Path:
    task = root / "Dataset009_Spleen"
    meta = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "spleen": 1},
        "numTraining": cases,
        "file_ending": ".nii.gz",
    }
    for i in range(cases):
        image, label = _organ_case(100 + i)
        _save(task / "imagesTr" / f"spleen_{i:03d}_0000.nii.gz", image, (0.8, 0.8, 5.0))
        _save(task / "labelsTr" / f"spleen_{i:03d}.nii.gz", (label > 0).astype(np.uint8), (0.8, 0.8, 5.0))
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def make_acdc_png(root: Path, patients: int = 8) -> Path:
    src = root / "ACDC_contrast"
    for index in range(patients):
        patient = generate_patient(index, seed=5)
        part = "val" if index >= patients - 2 else "train"
        for phase, frame in enumerate((patient.ed_frame, patient.es_frame)):
            image, label = patient.frames[frame]
            scaled = (255 * image / max(1, image.max())).astype(np.uint8)
            for s in range(image.shape[2]):
                name = f"patient{index + 1:03d}_{phase:02d}_{s:02d}.png"
                for kind, array in (("img", scaled[..., s]), ("gt", (label[..., s] * 85).astype(np.uint8))):
                    (src / part / kind).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array).save(src / part / kind / name)
    return src


def _train_a_few_steps(cli, write_recipe, data: dict, classes: int) -> None:  # type: ignore[no-untyped-def]
    recipe = write_recipe(data=data, backbone={"name": "unet", "num_classes": classes, "base_channels": 4})
    result = cli("train", recipe, "--set", "train.epochs=1", "--set", "train.iterations_per_epoch=2")
    assert result.code == 0, result


def test_msd_prostate_merges_zones_and_keeps_test_cases_unlabelled(cli, write_recipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    task = make_msd(tmp_path)
    result = cli("preprocess", "msd", task, tmp_path / "store", "--spacing", "1.2", "--canvas", "32")
    assert result.code == 0, result
    assert "10 patients, 10 volumes (8 labelled)" in result.out
    store = VolumeStore.load(tmp_path / "store")
    assert store.classes == ["background", "prostate"] and int(store.labels.max()) == 1
    data = {
        "name": "msd",
        "root": str(tmp_path / "store"),
        "labeled_patients": 2,
        "val_patients": 2,
        "test_patients": 2,
    }
    _train_a_few_steps(cli, write_recipe, data, 2)


def test_msd_options_select_the_channel_and_keep_zones(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    task = make_msd(tmp_path, cases=3, unlabelled=0)
    result = cli(
        "preprocess",
        "msd",
        task,
        tmp_path / "zones",
        "--spacing",
        "1.2",
        "--canvas",
        "32",
        "-O",
        "keep_labels=true",
        "-O",
        "channel=ADC",
    )
    assert result.code == 0, result
    store = VolumeStore.load(tmp_path / "zones")
    assert store.classes == ["background", "PZ", "TZ"] and int(store.labels.max()) == 2
    result = cli("preprocess", "msd", task, tmp_path / "x", "-O", "channel=DWI")
    assert result.code == 1 and "no channel 'DWI'; channels: 0 (T2), 1 (ADC)" in result.err
    result = cli("preprocess", "msd", task, tmp_path / "x", "-O", "colour=red")
    assert result.code == 1 and "unknown option 'colour'" in result.err
    assert not (tmp_path / "x").exists()


def test_nnunet_raw_layout(cli, write_recipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    task = make_nnunet(tmp_path)
    result = cli("preprocess", "msd", task, tmp_path / "store", "--spacing", "1.5", "--canvas", "32")
    assert result.code == 0, result
    store = VolumeStore.load(tmp_path / "store")
    assert store.classes == ["background", "spleen"] and len(store.volumes) == 8
    data = {
        "name": "msd",
        "root": str(tmp_path / "store"),
        "labeled_ratio": 0.5,
        "val_patients": 2,
        "test_patients": 2,
    }
    _train_a_few_steps(cli, write_recipe, data, 2)


def test_acdc_png_slices_group_into_volumes(cli, write_recipe, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = make_acdc_png(tmp_path)
    result = cli("preprocess", "acdc-png", src, tmp_path / "store", "--spacing", "5", "--canvas", "48")
    assert result.code == 0, result
    store = VolumeStore.load(tmp_path / "store")
    assert len(store.volumes) == 16 and {v.phase for v in store.volumes} == {"ED", "ES"}
    ed = store.volume("patient001_ED")
    assert ed.n_slices == generate_patient(0, seed=5).frames[1][0].shape[2]
    assert set(np.unique(store.labels)) == {0, 1, 2, 3}
    data = {
        "name": "acdc-png",
        "root": str(tmp_path / "store"),
        "labeled_patients": 2,
        "val_patients": 2,
        "test_patients": 2,
    }
    _train_a_few_steps(cli, write_recipe, data, 4)


def test_acdc_testing_folder_and_extra_unlabelled_scans(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    raw = tmp_path / "acdc"
    generate_cohort(raw, n_patients=4, seed=2)
    (raw / "testing").mkdir()
    shutil.move(raw / "training" / "patient004", raw / "testing" / "patient004")
    for gt in (raw / "testing" / "patient004").glob("*_gt.nii.gz"):
        gt.unlink()
    extra = tmp_path / "extra"
    image, _ = generate_patient(9, seed=2).frames[1]
    _save(extra / "scan_a.nii.gz", image, (1.5, 1.5, 8.0))
    (extra / "._scan_a.nii.gz").write_bytes(b"macOS resource fork")
    result = cli(
        "preprocess",
        "acdc",
        raw,
        tmp_path / "store",
        "--spacing",
        "5",
        "--canvas",
        "48",
        "--unlabeled",
        extra,
    )
    assert result.code == 0, result
    assert "5 patients, 9 volumes (6 labelled)" in result.out
    store = VolumeStore.load(tmp_path / "store")
    assert store.volume("extra/scan_a").labeled is False
    assert store.volume("patient004_ED").labeled is False


@pytest.mark.parametrize("damage", ["truncated", "four_d", "undeclared", "no_label", "empty"])
def test_bad_data_fails_early_naming_the_file(cli, tmp_path: Path, damage: str) -> None:  # type: ignore[no-untyped-def]
    task = make_msd(tmp_path, cases=3, unlabelled=0)
    target = task / "imagesTr" / "prostate_01.nii.gz"
    if damage == "truncated":
        target.write_bytes(target.read_bytes()[:200])
        expected = "prostate_01.nii.gz: not a readable NIfTI file"
    elif damage == "four_d":
        _save(target, np.zeros((4, 4, 4, 2, 2), np.float32))
        expected = "prostate_01.nii.gz: expected a 3D volume"
    elif damage == "undeclared":
        label = np.asarray(nib.load(task / "labelsTr" / "prostate_01.nii.gz").dataobj).copy()
        label[1, 1, 1] = 3  # dataset.json declares 0, 1 and 2 only
        _save(task / "labelsTr" / "prostate_01.nii.gz", label)
        expected = "labelsTr/prostate_01.nii.gz: label value 3 outside the classes 0..2"
    elif damage == "no_label":
        (task / "labelsTr" / "prostate_01.nii.gz").unlink()
        expected = "prostate_01.nii.gz: missing label map of training case 'prostate_01'"
    else:
        shutil.rmtree(task / "imagesTr")
        (task / "imagesTr").mkdir()
        expected = "imagesTr: no training images found"
    result = cli("preprocess", "msd", task, tmp_path / "out", "--canvas", "32")
    assert result.code == 1, result
    assert expected in result.err and "Traceback" not in result.err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
