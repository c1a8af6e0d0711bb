"""The MetaImage reader: the contract, the geometry, clear errors, and mireg predict reading .mha."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from mireg_example.metaimage import MetaImageReader, MetaImageScan, write_metaimage

from mireg import registry
from mireg.errors import DataError
from mireg.inference import InferenceOptions, Predictor, Preprocessing
from mireg.predict import collect_inputs, predict_scans
from mireg.testing import check_reader

SPACING = (1.5, 1.25, 8.0)
OFFSET = (10.0, -20.0, 30.0)


def phantom() -> np.ndarray:
    """A bright box in a dark volume ``(X, Y, Z)``, int16 as scanners store it."""
    image = np.full((48, 40, 3), 20, np.int16)
    image[12:30, 10:25, :] = 400
    return image


@pytest.fixture
def scan_file(tmp_path: Path) -> Path:
    path = tmp_path / "scans" / "case1.mha"
    path.parent.mkdir()
    write_metaimage(path, phantom(), SPACING, OFFSET)
    return path


def test_the_reader_is_registered_and_obeys_the_contract(scan_file: Path) -> None:
    assert registry.discover("reader")["metaimage"][0].distribution == "mireg-example"
    (scan,) = check_reader(registry.format_of("reader", "metaimage"), scan_file)
    (frame,) = scan.read([0])
    np.testing.assert_array_equal(frame.image, phantom().astype(np.float32))
    assert frame.spacing == SPACING
    # LPS+ to RAS+: X and Y flipped, the origin too.
    expected = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    expected[:3, 3] = (-OFFSET[0], -OFFSET[1], OFFSET[2])
    np.testing.assert_allclose(frame.affine, expected)


def test_mireg_predict_reads_a_folder_of_mha_files_and_keeps_their_geometry(
    scan_file: Path, tmp_path: Path
) -> None:
    (scan,) = collect_inputs([scan_file.parent])
    assert isinstance(scan, MetaImageScan) and scan.name == "case1"

    def bright(x: np.ndarray) -> np.ndarray:  # slices (N, 1, H, W) in [0, 1] -> logits: bright is class 1
        return np.concatenate([0.5 - x, x - 0.5], axis=1).astype(np.float32)

    predictor = Predictor(
        network=bright,
        preprocessing=Preprocessing(spacing=1.25, canvas=64, classes=["background", "box"]),
        batch=4,
        options=InferenceOptions(),
        name="threshold",
        version="0",
    )
    (written,) = predict_scans(predictor, [scan], tmp_path / "out")
    assert written == tmp_path / "out" / "case1.nii.gz"
    label_map = nib.load(written)
    np.testing.assert_allclose(label_map.affine, scan.affine)
    np.testing.assert_array_equal(np.asarray(label_map.dataobj), phantom() > 200)
    assert "case1" in (tmp_path / "out" / "volumes.csv").read_text()


def test_a_file_of_no_format_names_every_file_format(tmp_path: Path) -> None:
    (tmp_path / "scan.txt").write_text("x")
    with pytest.raises(
        DataError, match=r"scan.txt: not a NIfTI file \(.nii or .nii.gz\) or a MetaImage file"
    ):
        collect_inputs([tmp_path / "scan.txt"])


@pytest.mark.parametrize(
    ("line", "replacement", "message"),
    [
        ("NDims = 3", "NDims = 2", "NDims = '2'; this reader reads NDims = 3"),
        ("ElementType = MET_SHORT", "ElementType = MET_LONG", "ElementType = 'MET_LONG' is not one of"),
        ("ElementDataFile = LOCAL", "ElementDataFile = case1.raw", "ElementDataFile = .case1.raw.: only"),
        (
            "ElementSpacing = 1.5 1.25 8.0",
            "ElementSpacing = 1.5 1.25",
            "ElementSpacing = '1.5 1.25' is not 3",
        ),
    ],
)
def test_a_header_this_reader_cannot_read_is_an_error_naming_the_file_and_key(
    scan_file: Path, line: str, replacement: str, message: str
) -> None:
    data = scan_file.read_bytes()
    assert line.encode() in data
    scan_file.write_bytes(data.replace(line.encode(), replacement.encode(), 1))
    with pytest.raises(DataError, match=f"case1.mha: {message}"):
        MetaImageReader().open(scan_file)
