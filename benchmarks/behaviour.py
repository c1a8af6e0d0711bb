"""Record what mireg does, through its commands only, and compare two records: the check that a
redesign kept behaviour bit for bit.

    python benchmarks/behaviour.py record OUT          # about 10 minutes on a 2-core CPU
    python benchmarks/behaviour.py compare BEFORE AFTER

A record holds, all on the CPU with fixed seeds:

* ``runs/``: ``phantom_udaiic`` and ``phantom_cps`` trained 2 epochs x 10 steps, and
  ``phantom_udaiic`` over two processes (torchrun, gloo);
* ``study/``: ``mireg study --quick`` on a small study file (partial, udaiic, full);
* ``predict/``: the udaiic run's predictions of one scan as NIfTI and, from the same scan as a DICOM
  series, as DICOM SEG (needs the clinic extra);
* ``export/``: the udaiic run exported to ONNX and its outputs on a fixed input (needs the onnx extra).

``compare`` checks: every ``metrics.csv`` column but ``seconds``, and ``report.json`` byte for byte;
``study.json`` but for minutes and the record's own folder; the NIfTI prediction's header and voxels;
the SEG's pixels and every attribute but UIDs, dates and times; the ONNX outputs exactly. It prints
each difference and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHORT = ["train.epochs=2", "train.iterations_per_epoch=10", 'train.device="cpu"']
STUDY = """name = "behaviour"
seeds = [10, 11]
labeled_ratios = [0.1]
set = ["data.patients=30", 'train.device="cpu"']
runs_dir = "{runs}"

[methods.partial]
recipe = "recipes/phantom_partial.toml"

[methods.udaiic]
recipe = "recipes/phantom_udaiic.toml"

[methods.full]
recipe = "recipes/phantom_full.toml"

[quick]
seeds = 2
set = ["train.epochs=2", "train.iterations_per_epoch=5"]
"""


def _mireg(*args: str | Path, launcher: list[str] | None = None) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "COLUMNS": "120"}
    command = [*(launcher or [sys.executable, "-m"]), "mireg", *map(str, args)]
    print("$", " ".join(command[2:] if launcher is None else command), flush=True)
    subprocess.run(command, cwd=REPO, env=env, check=True)


def _train(out: Path, recipe: str, name: str, launcher: list[str] | None = None) -> None:
    sets = [*SHORT, f'train.runs_dir="{out / "runs"}"', f"name={name}"]
    _mireg(
        "train",
        REPO / "recipes" / f"{recipe}.toml",
        *[a for s in sets for a in ("--set", s)],
        launcher=launcher,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def record(out: Path) -> None:
    if out.exists():
        raise SystemExit(f"{out}: exists; record into a new folder")
    out.mkdir(parents=True)
    _train(out, "phantom_udaiic", "udaiic")
    _train(out, "phantom_cps", "cps")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    _train(out, "phantom_udaiic", "udaiic_ddp", [*torchrun, "--master-port", str(_free_port()), "-m"])
    study = out / "study.toml"  # its recipes copied beside it: the record names no path outside it
    (out / "recipes").mkdir()
    for method in ("partial", "udaiic", "full"):
        name = f"phantom_{method}.toml"
        (out / "recipes" / name).write_text((REPO / "recipes" / name).read_text())
    study.write_text(STUDY.format(runs=out / "study"))
    _mireg("study", study, "--quick")
    _predictions(out)
    _export(out)


def _predictions(out: Path) -> None:
    """One synthetic scan (the clinic tests' oblique scan) as NIfTI and as a DICOM series."""
    sys.path.insert(0, str(REPO))
    from tests.helpers import synthetic_scan

    stored, affine = synthetic_scan()
    scans = out / "scans"
    (scans / "nifti").mkdir(parents=True)
    nib.save(nib.Nifti1Image(stored.astype(np.float32), affine), scans / "nifti" / "case.nii.gz")
    run = out / "runs" / "udaiic"
    _mireg("predict", run, scans / "nifti", "-o", out / "predict" / "nifti")
    if importlib.util.find_spec("pydicom") is None:
        print("no DICOM SEG check: pydicom is not installed (the clinic extra)")
        return
    from tests.helpers import write_dicom_series

    write_dicom_series(scans / "dicom" / "case", stored, affine)
    _mireg("predict", run, scans / "dicom" / "case", "-o", out / "predict" / "seg")


def _fixed_input() -> np.ndarray:
    return np.random.default_rng(0).random((2, 1, 96, 96), dtype=np.float32)


def _export(out: Path) -> None:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        print(f"no ONNX check ({exc})")
        return
    model = out / "export" / "model.onnx"
    _mireg("export", out / "runs" / "udaiic", "-o", model)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    np.save(out / "export" / "outputs.npy", session.run(None, {name: _fixed_input()})[0])


# --------------------------------------------------------------------------------------------------
# Comparing


def _metrics(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


def _without_timing(value: Any, root: str) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v, root) for k, v in value.items() if "minutes" not in k}
    if isinstance(value, list):
        return [_without_timing(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<record>")
    return value


def _dicom_attributes(path: Path) -> dict[str, Any]:
    import pydicom

    def strip(element: dict[str, Any]) -> dict[str, Any]:
        kept = {}
        for tag, item in element.items():
            if item.get("vr") in ("UI", "DA", "TM", "DT") or tag == "7FE00010":
                continue
            if item.get("vr") == "SQ":
                item = {**item, "Value": [strip(v) for v in item.get("Value", [])]}
            kept[tag] = item
        return kept

    return strip(pydicom.dcmread(path).to_json_dict())


def compare(before: Path, after: Path) -> list[str]:
    problems: list[str] = []
    for run in sorted(p.name for p in (before / "runs").iterdir()):
        a, b = before / "runs" / run, after / "runs" / run
        if _metrics(a / "metrics.csv") != _metrics(b / "metrics.csv"):
            problems.append(f"runs/{run}/metrics.csv differs (seconds aside)")
        if (a / "report.json").read_bytes() != (b / "report.json").read_bytes():
            problems.append(f"runs/{run}/report.json differs")
    studies = [
        _without_timing(
            json.loads((root / "study" / "behaviour-quick" / "study.json").read_text()), str(root)
        )
        for root in (before, after)
    ]
    if studies[0] != studies[1]:
        problems.append("study/behaviour-quick/study.json differs (minutes and the record's folder aside)")
    for a in sorted((before / "predict").rglob("*.nii.gz")):
        b = after / a.relative_to(before)
        x, y = nib.load(a), nib.load(b)
        if not (np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj)) and x.header == y.header):
            problems.append(f"{a.relative_to(before)} differs")
    for a in sorted((before / "predict").rglob("*.dcm")):
        b = after / a.relative_to(before)
        import pydicom

        if pydicom.dcmread(a).PixelData != pydicom.dcmread(b).PixelData:
            problems.append(f"{a.relative_to(before)}: pixels differ")
        if _dicom_attributes(a) != _dicom_attributes(b):
            problems.append(f"{a.relative_to(before)}: attributes differ (UIDs, dates and times aside)")
    for a in sorted((before / "predict").rglob("*.csv")):
        if a.read_bytes() != (after / a.relative_to(before)).read_bytes():
            problems.append(f"{a.relative_to(before)} differs")
    onnx = Path("export") / "outputs.npy"
    if (before / onnx).is_file() and not np.array_equal(np.load(before / onnx), np.load(after / onnx)):
        problems.append(f"{onnx}: the ONNX model's outputs differ")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("record").add_argument("out", type=Path)
    both = sub.add_parser("compare")
    both.add_argument("before", type=Path)
    both.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        record(args.out.resolve())
        return
    problems = compare(args.before.resolve(), args.after.resolve())
    for problem in problems:
        print(problem)
    print("identical" if not problems else f"{len(problems)} differences")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
