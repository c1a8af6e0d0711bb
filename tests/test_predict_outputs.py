"""What `mireg predict` writes: never over an input or an earlier output (unless asked), names that
never clash, the user's file permissions, 4D cine label maps, and the volume tables.

The network is a numpy function that labels each pixel by its intensity, so the expected label maps
and volumes are known exactly and no training is needed.
"""

from __future__ import annotations

import csv
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mireg.errors import DataError
from mireg.inference import InferenceOptions, Predictor, Preprocessing
from mireg.predict import FrameChoice, collect_inputs, predict_scans

from .helpers import write_dicom_series

CLASSES = ["background", "RV", "MYO", "LV"]


def intensity_network(x: np.ndarray) -> np.ndarray:
    """Class k where the (normalised) intensity is nearest k / 3: 0, 1/3, 2/3 and 1 give 0, 1, 2, 3."""
    centres = np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1) / 3
    return (-10 * np.abs(x - centres)).astype(np.float32)


PREDICTOR = Predictor(
    network=intensity_network,
    preprocessing=Preprocessing(spacing=1.5, canvas=32, classes=CLASSES),
    batch=8,
    options=InferenceOptions(),
    name="intensity",
    version="0",
    identity="best.pt e1 sha256:0123456789abcdef",
)

AFFINE = np.diag([1.5, 1.5, 8.0, 1.0])


def phantom(lv: int) -> np.ndarray:
    """A 24 x 24 x 3 frame: an RV box of 4 x 5 x 3 voxels, a MYO box of 6 x 2 x 3, an LV box of
    ``lv`` x 4 x 3; intensities 100, 200, 300 (the maximum, so the percentile scaling keeps them)."""
    image = np.zeros((24, 24, 3), np.float32)
    image[2:6, 2:7] = 100
    image[10:16, 2:4] = 200
    image[10 : 10 + lv, 10:14] = 300
    return image


def voxel_ml() -> float:
    return 1.5 * 1.5 * 8.0 / 1000


def save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), path)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def predict(inputs: list[Path], out: Path, **options: object) -> list[Path]:
    return predict_scans(PREDICTOR, collect_inputs(inputs), out, **options)  # type: ignore[arg-type]


def test_the_label_maps_and_volumes_of_a_scan_are_what_its_intensities_say(tmp_path: Path) -> None:
    scan = save(tmp_path / "in" / "case.nii.gz", phantom(lv=5))
    assert predict([scan], tmp_path / "out") == [tmp_path / "out" / "case.nii.gz"]
    labels = np.asarray(nib.load(tmp_path / "out" / "case.nii.gz").dataobj)
    np.testing.assert_array_equal(labels, np.round(phantom(lv=5) / 100).astype(np.uint8))
    [row] = read_csv(tmp_path / "out" / "volumes.csv")
    assert row["scan"] == "case" and row["frame"] == "" and row["phase"] == ""
    for name, voxels in (("RV", 4 * 5 * 3), ("MYO", 6 * 2 * 3), ("LV", 5 * 4 * 3)):
        assert float(row[f"{name}_ml"]) == pytest.approx(voxels * voxel_ml(), abs=0.006)


def test_prediction_never_writes_over_its_inputs(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    save(scans / "a.nii.gz", phantom(lv=5))
    save(scans / "b.nii.gz", phantom(lv=3))
    before = {p.name: p.read_bytes() for p in scans.iterdir()}
    with pytest.raises(DataError, match=r"a.nii.gz: is an input; mireg predict never writes over its inputs"):
        predict([scans], scans)
    with pytest.raises(DataError, match="is an input"):
        predict([scans], scans, overwrite=True)  # not even when asked to overwrite
    assert {p.name: p.read_bytes() for p in scans.iterdir()} == before  # nothing written, nothing changed


def test_an_earlier_output_is_replaced_only_when_asked(tmp_path: Path) -> None:
    scan = save(tmp_path / "in" / "case.nii.gz", phantom(lv=5))
    out = tmp_path / "out"
    predict([scan], out)
    first = (out / "case.nii.gz").read_bytes()
    save(scan, phantom(lv=2))
    with pytest.raises(
        DataError, match=r"3 output file\(s\) exist already: .*function.csv, .*case.nii.gz, .*volumes.csv"
    ):
        predict([scan], out)
    assert (out / "case.nii.gz").read_bytes() == first
    predict([scan], out, overwrite=True)
    labels = np.asarray(nib.load(out / "case.nii.gz").dataobj)
    assert (labels == 3).sum() == 2 * 4 * 3


def test_output_names_are_checked_for_clashes_before_anything_is_written(tmp_path: Path) -> None:
    scans = tmp_path / "scans"
    save(scans / "x.nii.gz", phantom(lv=5))
    save(scans / "x_probabilities.nii.gz", phantom(lv=3))
    with pytest.raises(DataError, match=r"x_probabilities.nii.gz: two outputs would have this name"):
        predict([scans], tmp_path / "out", save_probabilities=True)
    assert not (tmp_path / "out").exists()
    predict([scans], tmp_path / "out")  # without the probabilities, no clash


def test_outputs_get_the_permissions_of_any_new_file(tmp_path: Path) -> None:
    scan = save(tmp_path / "in" / "case.nii.gz", phantom(lv=5))
    previous = os.umask(0o022)
    try:
        predict([scan], tmp_path / "out", save_probabilities=True)
    finally:
        os.umask(previous)
    for name in ("case.nii.gz", "case_probabilities.nii.gz", "volumes.csv", "cardiac_function.csv"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o644, name


def cine(lvs: list[int]) -> np.ndarray:
    return np.stack([phantom(lv) for lv in lvs], axis=3)


def test_a_4d_cine_is_segmented_frame_by_frame_into_a_4d_label_map(tmp_path: Path) -> None:
    scan = save(tmp_path / "in" / "patient.nii.gz", cine([6, 5, 3, 2, 4]))
    img = nib.load(scan)
    img.header.set_xyzt_units("mm", "msec")
    img.header["pixdim"][4] = 35.0
    nib.save(img, scan)
    predict([scan], tmp_path / "out", save_probabilities=True, frames=FrameChoice(ed=1, es=4))
    out = nib.load(tmp_path / "out" / "patient.nii.gz")
    assert out.shape == (24, 24, 3, 5) and out.header.get_zooms()[3] == 35.0  # the timing is kept
    np.testing.assert_allclose(out.affine, AFFINE)
    for t, lv in enumerate([6, 5, 3, 2, 4]):
        assert (np.asarray(out.dataobj)[..., t] == 3).sum() == lv * 4 * 3
    assert nib.load(tmp_path / "out" / "patient_probabilities.nii.gz").shape == (24, 24, 3, 5, 4)
    rows = read_csv(tmp_path / "out" / "volumes.csv")
    assert [(r["frame"], r["phase"]) for r in rows] == [
        ("1", "ED"),
        ("2", ""),
        ("3", ""),
        ("4", "ES"),
        ("5", ""),
    ]
    [function] = read_csv(tmp_path / "out" / "cardiac_function.csv")
    edv, esv = 6 * 4 * 3 * voxel_ml(), 2 * 4 * 3 * voxel_ml()
    assert function["ED_frame"] == "1" and function["ES_frame"] == "4"
    assert float(function["LV_EF_pct"]) == pytest.approx(100 * (edv - esv) / edv, abs=0.1)


def test_the_frames_asked_for_are_segmented_and_acdc_info_names_ed_and_es(tmp_path: Path) -> None:
    scan = save(tmp_path / "patient001" / "patient001_4d.nii.gz", cine([6, 5, 3, 2, 4]))
    (tmp_path / "patient001" / "Info.cfg").write_text("ED: 1\nES: 4\nGroup: NOR\n")
    predict([scan], tmp_path / "out", frames=FrameChoice(frames=(4, 1)))
    out = np.asarray(nib.load(tmp_path / "out" / "patient001_4d.nii.gz").dataobj)
    assert out.shape == (24, 24, 3, 2)
    assert [(out[..., i] == 3).sum() for i in range(2)] == [2 * 4 * 3, 6 * 4 * 3]  # frames 4, then 1
    [function] = read_csv(tmp_path / "out" / "cardiac_function.csv")
    assert float(function["LV_EF_pct"]) == pytest.approx(100 * (6 - 2) / 6, abs=0.1)
    with pytest.raises(DataError, match=r"ES \(frame 4\) not among the frames segmented"):
        predict([scan], tmp_path / "out2", frames=FrameChoice(frames=(1, 2), ed=1, es=4))
    with pytest.raises(DataError, match=r"--frames asks for frame 9; the scan has frames 1 to 5"):
        predict([scan], tmp_path / "out2", frames=FrameChoice(frames=(9,)))
    plain = save(tmp_path / "in" / "flat.nii.gz", phantom(lv=5))
    with pytest.raises(DataError, match="flat.nii.gz: one volume, not a cine scan"):
        predict([plain], tmp_path / "out2", frames=FrameChoice(ed=1, es=2))
    assert not (tmp_path / "out2").exists()
    predict([scan], tmp_path / "out3", frames=FrameChoice(frames=(1, 2)))  # Info.cfg's ES not asked for
    assert [r["phase"] for r in read_csv(tmp_path / "out3" / "volumes.csv")] == ["ED", ""]
    assert read_csv(tmp_path / "out3" / "cardiac_function.csv") == []  # no ED/ES pair: no function


# ----------------------------------------------------------------------------------------- DICOM


def dicom_cine(folder: Path, lvs: list[int]) -> dict[tuple[int, int], Path]:
    """A cine DICOM series of the phantom's frames (LV of ``lvs[t]`` voxels along X), one folder,
    one SeriesInstanceUID, frames told apart by TriggerTime; ``(frame, slice)`` -> file."""
    files = {}
    for t, lv in enumerate(lvs):
        stored = np.round(phantom(lv)).astype(np.uint16)
        names = [f"IM{t:02d}{z:02d}" for z in range(stored.shape[2])]
        paths = write_dicom_series(
            folder,
            stored,
            AFFINE,
            names=names,
            series_uid="1.2.826.0.1.3680043.8.498.9",
            trigger_time=40.0 * t,
        )
        files.update({(t, z): p for z, p in enumerate(paths)})
    return files


def test_a_cine_dicom_series_gives_one_seg_per_frame_and_its_volumes(tmp_path: Path) -> None:
    pytest.importorskip("highdicom", reason="SEG output needs the clinic extra")
    import pydicom

    files = dicom_cine(tmp_path / "cine", [6, 4, 2])
    written = predict([tmp_path / "cine"], tmp_path / "out", frames=FrameChoice(ed=1, es=3))
    assert written == [tmp_path / "out" / f"cine_frame{t:02d}.dcm" for t in (1, 2, 3)]
    for t in range(3):
        seg = pydicom.dcmread(tmp_path / "out" / f"cine_frame{t + 1:02d}.dcm")
        referenced = {
            i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        }
        assert referenced == {pydicom.dcmread(files[t, z]).SOPInstanceUID for z in range(3)}
    rows = read_csv(tmp_path / "out" / "volumes.csv")
    assert [float(r["LV_ml"]) for r in rows] == pytest.approx(
        [lv * 4 * 3 * voxel_ml() for lv in (6, 4, 2)], abs=0.006
    )
    [function] = read_csv(tmp_path / "out" / "cardiac_function.csv")
    assert float(function["LV_EF_pct"]) == pytest.approx(100 * (6 - 2) / 6, abs=0.1)
    predict([tmp_path / "cine"], tmp_path / "nifti", output_format="nifti", frames=FrameChoice(frames=(2, 3)))
    labels = nib.load(tmp_path / "nifti" / "cine.nii.gz")
    assert labels.shape == (24, 24, 3, 2)
    assert [(np.asarray(labels.dataobj)[..., i] == 3).sum() for i in range(2)] == [4 * 4 * 3, 2 * 4 * 3]


def test_a_dicom_folder_given_as_dot_is_named_after_its_folder_and_never_written_into(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("highdicom", reason="SEG output needs the clinic extra")
    series = tmp_path / "case7"
    write_dicom_series(series, np.round(phantom(5)).astype(np.uint16), AFFINE)
    before = sorted(p.name for p in series.iterdir())
    monkeypatch.chdir(series)
    with pytest.raises(DataError, match=r"case7: is an input DICOM folder; outputs written there would mix"):
        predict([Path(".")], Path("."))
    assert sorted(p.name for p in series.iterdir()) == before
    assert predict([Path(".")], tmp_path / "out") == [tmp_path / "out" / "case7.dcm"]
    assert not (tmp_path / "out" / ".dcm").exists()


def test_a_seg_that_cannot_be_written_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    pytest.importorskip("highdicom", reason="SEG output needs the clinic extra")
    import pydicom

    save(tmp_path / "in" / "a.nii.gz", phantom(5))
    paths = write_dicom_series(tmp_path / "in" / "b", np.round(phantom(5)).astype(np.uint16), AFFINE)
    for path in paths:
        ds = pydicom.dcmread(path)
        del ds.FrameOfReferenceUID
        ds.save_as(path)
    with pytest.raises(DataError, match=r"FrameOfReferenceUID \(0020,0052\) is missing"):
        predict([tmp_path / "in" / "a.nii.gz", tmp_path / "in" / "b"], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # not even the NIfTI input's label map, planned first
    predict([tmp_path / "in" / "b"], tmp_path / "out", output_format="nifti")  # the way out the hint gives


def test_trailing_axes_of_one_are_dropped_and_five_real_axes_refused(tmp_path: Path) -> None:
    five = save(tmp_path / "in" / "five.nii.gz", cine([6, 2])[..., None])  # (X, Y, Z, T, 1)
    predict([five], tmp_path / "out")
    assert nib.load(tmp_path / "out" / "five.nii.gz").shape == (24, 24, 3, 2)
    bad = save(tmp_path / "bad" / "bad.nii.gz", np.stack([cine([6, 2])] * 2, axis=4))
    with pytest.raises(DataError, match=r"bad.nii.gz: 5 dimensions \(24, 24, 3, 2, 2\)"):
        predict([bad], tmp_path / "out2")
