"""Structure volumes, ventricular function and their CSV tables, against hand computations."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import mireg.predict.volumes as volumes_module
from mireg.errors import DataError
from mireg.predict.volumes import (
    FUNCTION_CSV,
    VOLUMES_CSV,
    VolumeTable,
    ejection_fractions,
    frame_volumes,
    structure_volumes,
    voxel_volume_ml,
)

CLASSES = ["background", "RV", "MYO", "LV"]
SPACING = (1.5, 1.5, 8.0)  # mm: a typical short-axis cine stack
VOXEL_ML = 1.5 * 1.5 * 8.0 / 1000.0  # 0.018 ml


def _rotation(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    """Rodrigues' rotation matrix: an oblique (double-oblique) orientation."""
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def _affine(linear: np.ndarray, origin: tuple[float, float, float] = (-120.0, 85.5, 33.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = origin
    return affine


AFFINES = {
    "anisotropic": _affine(np.diag(SPACING)),
    "flipped x": _affine(np.diag([-1.5, 1.5, 8.0])),
    "DICOM LPS to RAS": _affine(np.diag([-1.0, -1.0, 1.0]) @ np.diag(SPACING)),
    "permuted axes": _affine(np.array([[0.0, 0.0, 8.0], [1.5, 0.0, 0.0], [0.0, -1.5, 0.0]])),
    "oblique": _affine(_rotation((0.3, -0.5, 0.8), 0.7) @ np.diag(SPACING)),
    "oblique and flipped": _affine(_rotation((1.0, 2.0, -0.4), 2.1) @ np.diag([1.5, -1.5, 8.0])),
}


def _phantom(rv: tuple[int, int, int], myo: tuple[int, int, int], lv: tuple[int, int, int]) -> np.ndarray:
    """A ``(64, 64, 12)`` map with three disjoint boxes of the given sizes (label 1, 2, 3)."""
    labels = np.zeros((64, 64, 12), np.uint8)
    labels[: rv[0], : rv[1], : rv[2]] = 1
    labels[20 : 20 + myo[0], 20 : 20 + myo[1], : myo[2]] = 2
    labels[40 : 40 + lv[0], 40 : 40 + lv[1], : lv[2]] = 3
    return labels


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


# -------------------------------------------------------------------------------------- voxel volume


@pytest.mark.parametrize("name", list(AFFINES))
def test_the_voxel_volume_is_the_spacing_product_for_any_orientation(name: str) -> None:
    assert voxel_volume_ml(AFFINES[name]) == pytest.approx(1.5 * 1.5 * 8.0 / 1000, rel=1e-12)
    assert voxel_volume_ml(AFFINES[name][:3, :3]) == pytest.approx(0.018, rel=1e-12)


def test_the_voxel_volume_of_a_saved_oblique_nifti_matches_its_zooms(tmp_path: Path) -> None:
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.uint8), AFFINES["oblique and flipped"]), str(path))
    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image)
    assert voxel_volume_ml(image.affine) == pytest.approx(0.018, rel=1e-6)  # sform is float32
    assert voxel_volume_ml(image.affine) == pytest.approx(np.prod(image.header.get_zooms()) / 1000, rel=1e-6)


@pytest.mark.parametrize(
    "affine, message",
    [
        (np.eye(2), "4 x 4"),
        (np.diag([1.5, 1.5, 0.0, 1.0]), "singular"),
        (np.diag([1.5, np.nan, 8.0, 1.0]), "non-finite"),
    ],
)
def test_a_bad_affine_is_a_data_error(affine: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        voxel_volume_ml(affine)


# ------------------------------------------------------------------------------------------ volumes


@pytest.mark.parametrize("name", ["anisotropic", "oblique and flipped", "permuted axes"])
def test_box_volumes_are_the_hand_computed_ones(name: str) -> None:
    labels = _phantom(rv=(10, 20, 5), myo=(7, 9, 11), lv=(15, 12, 3))
    volumes = structure_volumes(labels, voxel_volume_ml(AFFINES[name]), CLASSES)
    assert list(volumes) == ["RV", "MYO", "LV"]
    assert volumes["RV"] == pytest.approx(10 * 20 * 5 * 1.5 * 1.5 * 8 / 1000, rel=1e-12)  # 18 ml
    assert volumes["MYO"] == pytest.approx(7 * 9 * 11 * 1.5 * 1.5 * 8 / 1000, rel=1e-12)  # 12.474 ml
    assert volumes["LV"] == pytest.approx(15 * 12 * 3 * 1.5 * 1.5 * 8 / 1000, rel=1e-12)  # 9.72 ml


def test_a_ball_volume_is_its_voxel_count_times_the_voxel_volume() -> None:
    x, y, z = np.ogrid[:40, :40, :40]
    ball = (x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2 <= 12**2
    labels = ball.astype(np.int16) * 3
    volumes = structure_volumes(labels, 0.001, CLASSES)  # 1 mm isotropic: 1 voxel = 0.001 ml
    assert volumes["LV"] == pytest.approx(int(ball.sum()) * 0.001, rel=1e-12)
    # A digital ball of radius 12 voxels is close to 4/3 pi r^3 (about 7.24 ml).
    assert volumes["LV"] == pytest.approx(4 / 3 * math.pi * 12**3 / 1000, rel=0.02)


def test_an_empty_class_has_zero_ml() -> None:
    labels = _phantom(rv=(10, 20, 5), myo=(0, 0, 0), lv=(3, 3, 3))
    volumes = structure_volumes(labels, VOXEL_ML, CLASSES)
    assert volumes["MYO"] == 0.0
    assert structure_volumes(np.zeros((5, 5, 5), np.uint8), VOXEL_ML, CLASSES) == {
        "RV": 0.0,
        "MYO": 0.0,
        "LV": 0.0,
    }


def test_float_label_maps_as_nibabel_reads_them_are_accepted() -> None:
    labels = _phantom(rv=(10, 20, 5), myo=(1, 1, 1), lv=(2, 2, 2)).astype(np.float64)
    assert structure_volumes(labels, VOXEL_ML, CLASSES)["RV"] == pytest.approx(18.0)


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.full((4, 4, 4), 4, np.uint8), "label 4, outside 0..3"),
        (np.full((4, 4, 4), -1, np.int8), "label -1"),
        (np.full((4, 4, 4), 0.5), "not whole numbers"),
        (np.zeros((4, 4), np.uint8), "3D"),
        (np.zeros((4, 4, 4, 2), np.uint8), "3D"),
    ],
)
def test_a_bad_label_map_is_a_data_error(labels: np.ndarray, message: str) -> None:
    with pytest.raises(DataError, match=message):
        structure_volumes(labels, VOXEL_ML, CLASSES)


@pytest.mark.parametrize("voxel", [0.0, -0.018, math.nan])
def test_a_bad_voxel_volume_is_a_data_error(voxel: float) -> None:
    with pytest.raises(DataError, match="voxel volume"):
        structure_volumes(np.zeros((2, 2, 2), np.uint8), voxel, CLASSES)


def test_frame_volumes_are_the_volumes_of_each_frame() -> None:
    frames = [_phantom((10, 20, 5), (7, 9, 11), (15, 12, 3)), _phantom((4, 5, 6), (1, 2, 3), (0, 0, 0))]
    cine = np.stack(frames, axis=-1)
    per_frame = frame_volumes(cine, VOXEL_ML, CLASSES)
    assert per_frame == [structure_volumes(f, VOXEL_ML, CLASSES) for f in frames]
    assert per_frame[1]["RV"] == pytest.approx(4 * 5 * 6 * VOXEL_ML) and per_frame[1]["LV"] == 0.0


# ------------------------------------------------------------------------------------- EF and mass


def test_ejection_fractions_of_a_phantom_ed_es_pair() -> None:
    # Voxel counts: ED RV 1000, MYO 700, LV 1000; ES RV 600, MYO 800, LV 400 (0.018 ml each).
    ed_map = _phantom(rv=(10, 25, 4), myo=(10, 10, 7), lv=(10, 20, 5))  # RV 18 ml, MYO 12.6, LV 18
    es_map = _phantom(rv=(10, 15, 4), myo=(10, 10, 8), lv=(10, 8, 5))  # RV 10.8, MYO 14.4, LV 7.2
    ed = structure_volumes(ed_map, VOXEL_ML, CLASSES)
    es = structure_volumes(es_map, VOXEL_ML, CLASSES)
    result = ejection_fractions(ed, es)
    assert list(result) == [
        "LV_EDV_ml",
        "LV_ESV_ml",
        "LV_SV_ml",
        "LV_EF_pct",
        "LV_mass_g",
        "RV_EDV_ml",
        "RV_ESV_ml",
        "RV_SV_ml",
        "RV_EF_pct",
    ]
    assert result["LV_EDV_ml"] == pytest.approx(18.0)
    assert result["LV_ESV_ml"] == pytest.approx(7.2)
    assert result["LV_SV_ml"] == pytest.approx(10.8)
    assert result["LV_EF_pct"] == pytest.approx(60.0)  # (1000 - 400) / 1000 voxels
    assert result["RV_SV_ml"] == pytest.approx(7.2)
    assert result["RV_EF_pct"] == pytest.approx(40.0)  # (1000 - 600) / 1000
    assert result["LV_mass_g"] == pytest.approx(700 * VOXEL_ML * 1.05)  # MYO at ED, not ES


def test_ejection_fraction_of_round_volumes() -> None:
    result = ejection_fractions({"LV": 150.0, "RV": 160.0}, {"LV": 60.0, "RV": 80.0})
    assert result == {
        "LV_EDV_ml": 150.0,
        "LV_ESV_ml": 60.0,
        "LV_SV_ml": 90.0,
        "LV_EF_pct": 60.0,
        "RV_EDV_ml": 160.0,
        "RV_ESV_ml": 80.0,
        "RV_SV_ml": 80.0,
        "RV_EF_pct": 50.0,
    }
    assert ejection_fractions({"MYO": 100.0}, {"MYO": 90.0}) == {"LV_mass_g": pytest.approx(105.0)}
    assert ejection_fractions({"MYO": 100.0}, {}, myocardial_density=1.055)["LV_mass_g"] == pytest.approx(
        105.5
    )


def test_an_edv_of_zero_gives_no_ejection_fraction_and_no_error() -> None:
    result = ejection_fractions({"LV": 0.0, "RV": 0.0}, {"LV": 0.0, "RV": 3.0})
    assert math.isnan(result["LV_EF_pct"]) and math.isnan(result["RV_EF_pct"])
    assert result["LV_SV_ml"] == 0.0 and result["RV_SV_ml"] == -3.0


def test_a_ventricle_without_its_cavity_class_is_left_out() -> None:
    assert ejection_fractions({"RV": 10.0, "Aorta": 5.0}, {"RV": 5.0, "Aorta": 5.0}) == {
        "RV_EDV_ml": 10.0,
        "RV_ESV_ml": 5.0,
        "RV_SV_ml": 5.0,
        "RV_EF_pct": 50.0,
    }


def test_negative_volumes_are_refused() -> None:
    with pytest.raises(ValueError, match="ED volume of LV"):
        ejection_fractions({"LV": -1.0}, {"LV": 1.0})


# ------------------------------------------------------------------------------------------- table


def _acdc_like_table() -> VolumeTable:
    """patient001 as two 3D files (ED frame 1, ES frame 12), patient002 as a 3-frame cine, and a
    static scan."""
    table = VolumeTable(CLASSES)
    table.add(
        "patient001",
        structure_volumes(_phantom((10, 25, 4), (10, 10, 7), (10, 20, 5)), VOXEL_ML, CLASSES),
        1,
        "ED",
    )
    table.add(
        "patient001",
        structure_volumes(_phantom((10, 15, 4), (10, 10, 8), (10, 8, 5)), VOXEL_ML, CLASSES),
        12,
        "ES",
    )
    cine = np.stack(
        [
            _phantom((10, 10, 10), (5, 5, 4), (10, 10, 3)),  # frame 1: LV 300 voxels = 5.4 ml
            _phantom((10, 10, 9), (5, 5, 4), (10, 10, 1)),  # frame 2 (ES): LV 100 voxels = 1.8 ml
            _phantom((10, 10, 10), (5, 5, 4), (10, 10, 2)),  # frame 3
        ],
        axis=-1,
    )
    table.add_cine("patient002", cine, VOXEL_ML, ed=1, es=2)
    table.add("static", {"RV": 1.0, "MYO": 0.0, "LV": 2.006})
    return table


def test_the_volume_csv_round_trips_through_dictreader(tmp_path: Path) -> None:
    paths = _acdc_like_table().write(tmp_path)
    assert paths == [tmp_path / VOLUMES_CSV, tmp_path / FUNCTION_CSV]
    header, rows = _read(tmp_path / VOLUMES_CSV)
    assert header == ["scan", "frame", "phase", "RV_ml", "MYO_ml", "LV_ml"]
    assert rows == [
        {
            "scan": "patient001",
            "frame": "1",
            "phase": "ED",
            "RV_ml": "18.00",
            "MYO_ml": "12.60",
            "LV_ml": "18.00",
        },
        {
            "scan": "patient001",
            "frame": "12",
            "phase": "ES",
            "RV_ml": "10.80",
            "MYO_ml": "14.40",
            "LV_ml": "7.20",
        },
        {
            "scan": "patient002",
            "frame": "1",
            "phase": "ED",
            "RV_ml": "18.00",
            "MYO_ml": "1.80",
            "LV_ml": "5.40",
        },
        {
            "scan": "patient002",
            "frame": "2",
            "phase": "ES",
            "RV_ml": "16.20",
            "MYO_ml": "1.80",
            "LV_ml": "1.80",
        },
        {
            "scan": "patient002",
            "frame": "3",
            "phase": "",
            "RV_ml": "18.00",
            "MYO_ml": "1.80",
            "LV_ml": "3.60",
        },
        {"scan": "static", "frame": "", "phase": "", "RV_ml": "1.00", "MYO_ml": "0.00", "LV_ml": "2.01"},
    ]
    # The header once, first (no index column, no BOM); RFC 4180 line ends on every row.
    data = (tmp_path / VOLUMES_CSV).read_bytes()
    assert data.startswith(b"scan,frame,phase,") and data.count(b"scan,frame") == 1
    assert data.count(b"\r\n") == 7 and data.count(b"\n") == 7


def test_the_function_csv_has_one_row_per_ed_es_pair(tmp_path: Path) -> None:
    _acdc_like_table().write(tmp_path)
    header, rows = _read(tmp_path / FUNCTION_CSV)
    assert header == [
        "scan",
        "ED_frame",
        "ES_frame",
        "LV_EDV_ml",
        "LV_ESV_ml",
        "LV_SV_ml",
        "LV_EF_pct",
        "LV_mass_g",
        "RV_EDV_ml",
        "RV_ESV_ml",
        "RV_SV_ml",
        "RV_EF_pct",
    ]
    assert [r["scan"] for r in rows] == ["patient001", "patient002"]  # "static" has no pair
    assert rows[0] == {
        "scan": "patient001",
        "ED_frame": "1",
        "ES_frame": "12",
        "LV_EDV_ml": "18.00",
        "LV_ESV_ml": "7.20",
        "LV_SV_ml": "10.80",
        "LV_EF_pct": "60.0",
        "LV_mass_g": "13.23",  # 12.6 ml x 1.05 g/ml
        "RV_EDV_ml": "18.00",
        "RV_ESV_ml": "10.80",
        "RV_SV_ml": "7.20",
        "RV_EF_pct": "40.0",
    }
    # patient002: LV 300 -> 100 voxels, RV 1000 -> 900 voxels.
    assert (rows[1]["ED_frame"], rows[1]["ES_frame"]) == ("1", "2")
    assert rows[1]["LV_EF_pct"] == "66.7" and rows[1]["RV_EF_pct"] == "10.0"


def test_an_edv_of_zero_is_an_empty_cell_and_no_negative_zero() -> None:
    table = VolumeTable(CLASSES)
    table.add("a", {"RV": 0.0, "MYO": 0.0, "LV": 0.3}, phase="ED")
    table.add("a", {"RV": 0.0, "MYO": 0.0, "LV": 0.1 + 0.2}, phase="ES")  # 0.3 - 0.30000000000000004
    rows = list(csv.DictReader(table.function_csv().splitlines()))
    assert rows[0]["RV_EF_pct"] == "" and rows[0]["RV_SV_ml"] == "0.00"
    assert rows[0]["LV_SV_ml"] == "0.00" and rows[0]["LV_EF_pct"] == "0.0"  # never "-0.00"
    assert rows[0]["ED_frame"] == "" and rows[0]["ES_frame"] == ""


def test_scan_names_with_commas_and_quotes_survive() -> None:
    table = VolumeTable(["background", "LV"])
    table.add('case, "7"', {"LV": 1.0})
    rows = list(csv.DictReader(table.volumes_csv().splitlines()))
    assert rows == [{"scan": 'case, "7"', "frame": "", "phase": "", "LV_ml": "1.00"}]


def test_the_files_are_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written: list[Path] = []
    real = volumes_module.atomic_write_text

    def spy(path: Path, text: str) -> None:
        written.append(path)
        real(path, text)

    monkeypatch.setattr(volumes_module, "atomic_write_text", spy)
    (tmp_path / VOLUMES_CSV).write_text("stale\n")
    _acdc_like_table().write(tmp_path)
    assert written == [tmp_path / VOLUMES_CSV, tmp_path / FUNCTION_CSV]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([VOLUMES_CSV, FUNCTION_CSV])  # no temporary
    assert "stale" not in (tmp_path / VOLUMES_CSV).read_text()


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / VOLUMES_CSV).write_text("previous\n")
    table = _acdc_like_table()

    def broken() -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(table, "volumes_csv", broken)
    with pytest.raises(RuntimeError):
        table.write(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [VOLUMES_CSV]
    assert (tmp_path / VOLUMES_CSV).read_text() == "previous\n"


def test_classes_without_ventricles_write_no_function_table(tmp_path: Path) -> None:
    table = VolumeTable(["background", "liver", "tumour"])
    table.add("ct1", {"liver": 1500.0, "tumour": 12.345})
    assert table.write(tmp_path) == [tmp_path / VOLUMES_CSV]
    header, rows = _read(tmp_path / VOLUMES_CSV)
    assert header == ["scan", "frame", "phase", "liver_ml", "tumour_ml"]
    assert rows[0]["liver_ml"] == "1500.00" and rows[0]["tumour_ml"] == "12.35"


@pytest.mark.parametrize(
    "ed, es, message",
    [(0, 2, "ED frame 0 is outside"), (1, 4, "ES frame 4 is outside"), (2, 2, "same frame")],
)
def test_cine_phases_outside_the_frames_are_data_errors(ed: int, es: int, message: str) -> None:
    table = VolumeTable(CLASSES)
    with pytest.raises(DataError, match=message):
        table.add_cine("p", np.zeros((4, 4, 2, 3), np.uint8), VOXEL_ML, ed=ed, es=es)
    assert table.volume_rows() == []


def test_duplicate_rows_are_data_errors() -> None:
    volumes = {"RV": 1.0, "MYO": 1.0, "LV": 1.0}
    table = VolumeTable(CLASSES)
    table.add("p", volumes, 1, "ED")
    with pytest.raises(DataError, match="frame 1"):
        table.add("p", volumes, 1, "ES")
    with pytest.raises(DataError, match="ED row"):
        table.add("p", volumes, 2, "ED")
    with pytest.raises(DataError, match="one row only"):
        table.add("p", volumes)
    with pytest.raises(DataError, match="count from 1"):
        table.add("q", volumes, 0)
    with pytest.raises(DataError, match="already in the volume table"):
        table.add_cine("p", np.zeros((2, 2, 2, 2), np.uint8), VOXEL_ML)
    table.add("p", volumes, 2, "ES")  # a distinct frame and phase is fine
    assert len(table.volume_rows()) == 2


def test_volumes_of_other_classes_are_refused() -> None:
    with pytest.raises(ValueError, match="expected the classes"):
        VolumeTable(CLASSES).add("p", {"LV": 1.0})
    with pytest.raises(ValueError, match="phase"):
        VolumeTable(CLASSES).add("p", {"RV": 1.0, "MYO": 1.0, "LV": 1.0}, phase="MID")


def test_the_module_does_not_import_torch() -> None:
    code = "import sys, mireg.predict.volumes; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
