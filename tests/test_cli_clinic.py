"""From research to the clinic, through the real CLI: DICOM in, DICOM SEG out, ONNX export and
prediction without torch, test-time augmentation and largest components in eval and predict."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import mireg
from mireg.data.phantom import generate_patient
from mireg.inference import InferenceOptions, predict_volume
from mireg.predict import load_predictor
from mireg.preprocessing.volume import preprocess_volume
from mireg.recipe import dump_toml

from .helpers import run_fresh_python, synthetic_scan, tiny_recipe, write_dicom_series

pytestmark = pytest.mark.slow

hd = pytest.importorskip("highdicom", reason="DICOM input and SEG output need the clinic extra")
ort = pytest.importorskip("onnxruntime", reason="ONNX prediction needs the onnx extra")
pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra")


def _main(*args: str | Path) -> int:
    from mireg.cli import main

    argv = sys.argv
    sys.argv = ["mireg", *map(str, args)]
    try:
        main()
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A trained tiny run, its ONNX export, and one phantom scan as NIfTI and as a DICOM series."""
    root = tmp_path_factory.mktemp("clinic")
    recipe = root / "tiny.toml"
    recipe.write_text(dump_toml(tiny_recipe(root / "runs")))
    assert _main("train", recipe) == 0
    assert _main("export", root / "runs" / "tiny", "-o", root / "model" / "model.onnx") == 0
    stored, affine = synthetic_scan()
    names = [f"IM{stored.shape[2] - z:03d}" for z in range(stored.shape[2])]  # reversed file order
    write_dicom_series(root / "dicom" / "case", stored, affine, names=names)
    (root / "nifti").mkdir()
    nib.save(nib.Nifti1Image(stored.astype(np.float32), affine), root / "nifti" / "case.nii.gz")
    yield root


def _seg_labels(path: Path, series_folder: Path) -> np.ndarray:
    """The label map ``(X, Y, Z)`` of a SEG file, slices in the series' order along its normal."""
    from mireg.predict import collect_inputs

    (scan,) = collect_inputs([series_folder])
    uids = [ds.SOPInstanceUID for ds in scan.series.datasets()]
    seg = hd.seg.segread(path)
    return seg.get_pixels_by_source_instance(uids, combine_segments=True).transpose(2, 1, 0)


def test_dicom_in_seg_out_labels_the_same_voxels_as_the_nifti_of_the_scan(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, out = workdir / "runs" / "tiny", workdir / "out-seg"
    assert _main("predict", run, workdir / "nifti", "-o", out / "nifti") == 0
    from_nifti = np.asarray(nib.load(out / "nifti" / "case.nii.gz").dataobj)
    assert _main("predict", run, workdir / "dicom" / "case", "-o", out / "seg") == 0
    assert sorted(p.name for p in (out / "seg").iterdir()) == [
        "cardiac_function.csv",
        "case.dcm",
        "volumes.csv",
    ]
    seg_labels = _seg_labels(out / "seg" / "case.dcm", workdir / "dicom" / "case")
    np.testing.assert_array_equal(seg_labels, from_nifti)
    seg = hd.seg.segread(out / "seg" / "case.dcm")
    assert [seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()] == [
        "RV",
        "MYO",
        "LV",
    ]
    assert _main("predict", run, workdir / "dicom" / "case", "-o", out / "as-nifti", "--format", "nifti") == 0
    as_nifti = nib.load(out / "as-nifti" / "case.nii.gz")
    np.testing.assert_allclose(as_nifti.affine, nib.load(workdir / "nifti" / "case.nii.gz").affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(as_nifti.dataobj), from_nifti)


def test_bad_inputs_exit_1_with_one_message_naming_the_file_and_write_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = workdir / "runs" / "tiny"
    broken = workdir / "broken"
    paths = write_dicom_series(broken, np.zeros((8, 8, 5), np.uint16), np.diag([1.0, 1.0, 3.0, 1.0]))
    paths[2].unlink()
    cases = [
        ((broken,), "slice_3.dcm: 1 slice(s) missing before it"),
        ((workdir / "nifti", "--format", "seg"), "case.nii.gz: --format seg needs a DICOM series"),
        ((workdir / "nifti", "--format", "png"), "--format"),
    ]
    write_dicom_series(workdir / "two", np.zeros((8, 8, 3), np.uint16), np.eye(4), series_uid="1.2.7")
    write_dicom_series(
        workdir / "two",
        np.zeros((8, 8, 3), np.uint16),
        np.eye(4),
        series_uid="1.2.8",
        names=["x0", "x1", "x2"],
    )
    cases.append(((workdir / "two",), "two: holds 2 DICOM series: 1.2.7 (3 files, cine); 1.2.8"))
    for args, message in cases:
        out = workdir / "never"
        capsys.readouterr()
        code = _main("predict", run, *args, "-o", out)
        err = capsys.readouterr().err
        assert code in (1, 2), (args, err)
        assert message in " ".join(err.split()), err
        assert "Traceback" not in err and not out.exists()


def test_onnx_export_writes_a_card_and_predicts_like_torch(workdir: Path) -> None:
    model, card_file = workdir / "model" / "model.onnx", workdir / "model" / "model.json"
    card = json.loads(card_file.read_text())
    assert card["network"]["opset"] == 18 and card["network"]["format"] == "onnx"
    assert card["network"]["input_shape"] == ["batch", 1, "height", "width"]
    assert card["network"]["output_shape"] == ["batch", 4, "height", "width"]
    assert card["network"]["size_multiple"] == 16 and card["format_version"] == 2  # the UNet pools 4x
    assert card["preprocessing"] == {
        "spacing": 5.0,
        "canvas": 48,
        "percentiles": [1.0, 99.0],
        "scaling": "minmax",
        "slice_axis": 2,
    }
    assert card["classes"] == ["background", "RV", "MYO", "LV"] and card["recipe"] == "tiny"
    assert card["mireg_version"] == mireg.__version__ and len(card["weights_sha256"]) == 64
    torch_path = load_predictor(workdir / "runs" / "tiny", device="cpu")
    onnx_path = load_predictor(model)
    image = np.asarray(nib.load(workdir / "nifti" / "case.nii.gz").dataobj, dtype=np.float32)
    spacing = (1.4, 1.6, 7.0)
    slices, _, _ = preprocess_volume(image, spacing, 5.0, 48)
    np.testing.assert_allclose(
        onnx_path.network(slices[:, None]), torch_path.network(slices[:, None]), atol=1e-4, rtol=0
    )
    odd = np.random.default_rng(0).random((3, 1, 64, 32), dtype=np.float32)  # dynamic batch and size
    np.testing.assert_allclose(onnx_path.network(odd), torch_path.network(odd), atol=1e-4, rtol=0)
    for options in (InferenceOptions(), InferenceOptions(tta=True, keep_largest=True)):
        a = predict_volume(torch_path.network, image, spacing, torch_path.preprocessing, 16, options)
        b = predict_volume(onnx_path.network, image, spacing, onnx_path.preprocessing, 16, options)
        assert (a.labels == b.labels).mean() >= 0.9999
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-4)


def test_the_onnx_model_segments_scans_of_any_size_over_their_whole_field_of_view(workdir: Path) -> None:
    """197 x 72 voxels of 1.4 mm: 55 x 20 pixels at the model's 5 mm, more than its 48-pixel canvas
    along X and no multiple of 16 either way. Every slice is segmented whole, and ONNX and torch give
    the same labels."""
    scans = workdir / "odd"
    scans.mkdir()
    patient = generate_patient(40, seed=9)
    image, _ = patient.frames[patient.ed_frame]
    big = np.zeros((197, 72, image.shape[2]), np.float32)
    big[: image.shape[0], : min(72, image.shape[1])] = image[:, :72]
    big[197 - image.shape[0] :, : min(72, image.shape[1])] = image[:, :72]  # a heart at each end
    nib.save(nib.Nifti1Image(big, np.diag([1.4, 1.4, 7.0, 1.0])), scans / "odd.nii.gz")
    for model, out in (
        (workdir / "model" / "model.onnx", "odd-onnx"),
        (workdir / "runs" / "tiny", "odd-torch"),
    ):
        assert _main("predict", model, scans, "-o", workdir / out) == 0
    onnx_labels = np.asarray(nib.load(workdir / "odd-onnx" / "odd.nii.gz").dataobj)
    torch_labels = np.asarray(nib.load(workdir / "odd-torch" / "odd.nii.gz").dataobj)
    assert onnx_labels.shape == big.shape and (onnx_labels == torch_labels).mean() >= 0.9999


# Runs `mireg predict` in a fresh interpreter in which importing torch fails.
_NO_TORCH = """
import importlib.abc, json, sys

class _NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not importable here")
        return None

sys.meta_path.insert(0, _NoTorch())
import mireg.export.portable, mireg.predict, mireg.inference
sys.argv = ["mireg", *sys.argv[1:]]
from mireg.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code
torch_loaded = [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
print("\\nRESULT " + json.dumps({"code": code, "torch": torch_loaded}))
"""


def test_the_onnx_model_predicts_in_a_process_where_torch_cannot_be_imported(workdir: Path) -> None:
    out = workdir / "out-notorch"
    args = ["predict", str(workdir / "model" / "model.onnx"), str(workdir / "dicom" / "case"), "-o", str(out)]
    result, done = run_fresh_python(_NO_TORCH, *args)
    assert result == {"code": 0, "torch": []}, done.stderr[-2000:]
    assert (
        _main("predict", workdir / "runs" / "tiny", workdir / "dicom" / "case", "-o", workdir / "out-torch")
        == 0
    )
    with_torch = _seg_labels(workdir / "out-torch" / "case.dcm", workdir / "dicom" / "case")
    without = _seg_labels(out / "case.dcm", workdir / "dicom" / "case")
    assert (with_torch == without).mean() >= 0.9999


def test_a_changed_onnx_file_or_card_is_refused(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = workdir / "tampered"
    copy.mkdir()
    data = bytearray((workdir / "model" / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.onnx").write_bytes(bytes(data))
    card = json.loads((workdir / "model" / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps(card))
    capsys.readouterr()
    assert _main("predict", copy / "model.onnx", workdir / "nifti", "-o", copy / "out") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "model.onnx: SHA-256" in err and "differs from network.sha256" in err and "Traceback" not in err
    card["preprocessing"]["canvas"] = "big"
    (copy / "model.json").write_text(json.dumps(card))
    assert _main("predict", copy / "model.onnx", workdir / "nifti", "-o", copy / "out") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "model.json: preprocessing.canvas:" in err and not (copy / "out").exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # LibTorch still loads it
def test_torchscript_export_computes_the_same_logits(workdir: Path) -> None:
    import torch

    out = workdir / "ts" / "model.pt"
    assert _main("export", workdir / "runs" / "tiny", "-o", out, "--format", "torchscript") == 0
    card = json.loads((workdir / "ts" / "model.json").read_text())
    assert card["network"]["format"] == "torchscript" and card["network"]["opset"] is None
    assert (
        card["weights_sha256"] == json.loads((workdir / "model" / "model.json").read_text())["weights_sha256"]
    )
    x = np.random.default_rng(1).random((2, 1, 48, 48), dtype=np.float32)
    reference = load_predictor(workdir / "runs" / "tiny", device="cpu").network(x)
    with torch.no_grad():
        got = torch.jit.load(str(out))(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, reference, atol=1e-5)


def test_eval_and_predict_take_tta_keep_largest_and_save_probabilities(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = workdir / "runs" / "tiny"
    before = (run / "report.json").read_text()
    assert _main("eval", run, "--tta", "--keep-largest", "--split", "validation") == 0
    assert "tta + keep_largest" in capsys.readouterr().out
    report = json.loads((run / "report_validation_best_tta_largest.json").read_text())
    assert report["inference"] == {"tta": True, "keep_largest": True}
    assert (run / "report.json").read_text() == before
    assert _main("eval", run, "--tta") == 0
    assert json.loads((run / "report_test_best_tta.json").read_text())["inference"]["tta"] is True
    out = workdir / "out-probs"
    assert _main("predict", run, workdir / "nifti", "-o", out, "--save-probabilities") == 0
    labels = np.asarray(nib.load(out / "case.nii.gz").dataobj)
    probabilities = nib.load(out / "case_probabilities.nii.gz")
    assert probabilities.shape == (*labels.shape, 4)
    np.testing.assert_allclose(probabilities.affine, nib.load(out / "case.nii.gz").affine)
    values = np.asarray(probabilities.dataobj)
    np.testing.assert_allclose(values.sum(axis=-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(values.argmax(axis=-1), labels)
    assert _main("predict", run, workdir / "nifti", "-o", out / "largest", "--keep-largest", "--tta") == 0
    largest = np.asarray(nib.load(out / "largest" / "case.nii.gz").dataobj)
    from scipy import ndimage

    for k in (1, 2, 3):
        assert ndimage.label(largest == k)[1] <= 1


def test_export_never_replaces_a_file_unless_asked_and_never_the_checkpoint(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, model = workdir / "runs" / "tiny", workdir / "model" / "model.onnx"
    before = model.read_bytes(), (workdir / "model" / "model.json").read_bytes()
    capsys.readouterr()
    assert _main("export", run, "-o", model) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "model.onnx: exists already" in err and "--overwrite" in err and "Traceback" not in err
    assert (model.read_bytes(), (workdir / "model" / "model.json").read_bytes()) == before
    again = workdir / "again"
    again.mkdir()
    (again / "model.json").write_text("{}")  # only the card's name is taken: still refused
    assert _main("export", run, "-o", again / "model.onnx") == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "model.json: exists already" in err and not (again / "model.onnx").exists()
    assert _main("export", run, "-o", again / "model.onnx", "--overwrite") == 0
    assert json.loads((again / "model.json").read_text())["recipe"] == "tiny"
    checkpoint = (run / "best.pt").read_bytes()
    code = _main("export", run, "-o", run / "best.pt", "--format", "torchscript", "--overwrite")
    assert code == 1 and "best.pt: is the checkpoint being exported" in " ".join(
        capsys.readouterr().err.split()
    )
    assert (run / "best.pt").read_bytes() == checkpoint


@pytest.mark.parametrize(
    "command",
    [("predict", "runs/tiny", "nifti", "-o", "out-run"), ("export", "runs/tiny", "-o", "m/model.onnx")],
    ids=["predict-run", "export"],
)
def test_without_torch_a_command_that_needs_it_says_so(workdir: Path, command: tuple[str, ...]) -> None:
    result, done = run_fresh_python(_NO_TORCH, *command, cwd=workdir)
    err = " ".join(done.stderr.split())
    assert result["code"] == 1 and "needs torch, which is not installed" in err, err
    assert "Traceback" not in err and "pip install mireg" in err
    assert not (workdir / "out-run").exists() and not (workdir / "m").exists()


def test_a_seg_names_the_model_that_made_it_the_same_from_the_run_and_its_export(workdir: Path) -> None:
    import pydicom

    from mireg.export.exporters import weights_sha256
    from mireg.training.state import load_trained

    outs = {}
    for label, model in (("run", workdir / "runs" / "tiny"), ("onnx", workdir / "model" / "model.onnx")):
        outs[label] = workdir / f"seg-id-{label}"
        assert _main("predict", model, workdir / "dicom" / "case", "-o", outs[label]) == 0
    import torch

    trained = load_trained(workdir / "runs" / "tiny" / "best.pt", torch.device("cpu"))
    expected = f"best.pt e{trained.checkpoint.epoch} sha256:{weights_sha256(trained.model)[:16]}"
    for out in outs.values():
        seg = pydicom.dcmread(out / "case.dcm")
        algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "tiny" and algorithm.AlgorithmVersion == expected
        assert seg.SoftwareVersions == f"mireg {mireg.__version__}"
