"""Check mireg-runtime end to end: ``python runtime/check.py [--work DIR] [--source SPEC]``.

What hospital deployers run is ``pip install ./runtime`` (or its git URL) and then
``mireg predict model.onnx ...`` with no torch installed; this script does exactly that, so that CI
catches a torch import on the prediction path, a dependency the runtime forgot, or a build that
needs more than the repository:

1. With the current environment's mireg (torch, the clinic and onnx extras, pytest: CI's main
   environment or ``nox -s runtime``): train a tiny model (seconds), export it to ONNX, write one
   synthetic scan as NIfTI and as a DICOM series, and predict both for reference.
2. Build the runtime's wheel and check what it holds: every module of ``mireg/`` and its metadata,
   mireg's version, the ``mireg`` command, and no dependency of the torch stack.
3. Install the runtime into a fresh virtual environment with one ``pip install`` of ``--source``
   (default: this folder), then check there that torch cannot be imported and no distribution of the
   torch stack is installed, that ``mireg --help`` and ``mireg --version`` work, and that
   ``mireg predict`` writes a NIfTI label map from the NIfTI scan and a DICOM SEG (and an overlay)
   from the DICOM series, equal to the reference predictions.

Exits 0 when every step passed, 1 at the first that did not (saying which and why). Everything is
written under ``--work`` (default: a temporary folder, removed afterwards unless a step failed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # mireg depends on tomli there
    import tomli as tomllib

RUNTIME = Path(__file__).resolve().parent
REPO = RUNTIME.parent

#: Distributions the runtime must neither declare nor bring in (nor any ``nvidia-*``).
TORCH_STACK = frozenset(
    {"torch", "torchvision", "torchaudio", "timm", "segmentation-models-pytorch", "triton"}
)


class CheckFailed(Exception):
    """A step of the check failed; the message says which and why."""


def canonical(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Segmentation_Models.PyTorch`` ->
    ``segmentation-models-pytorch``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def is_torch_stack(name: str) -> bool:
    """Whether distribution ``name`` is torch, a package built on it, or one of its CUDA wheels."""
    name = canonical(name)
    return name in TORCH_STACK or name.startswith("nvidia-")


def mireg_version() -> str:
    """mireg's version, as its pyproject.toml declares it (the runtime's version too)."""
    with open(REPO / "pyproject.toml", "rb") as fh:
        version: str = tomllib.load(fh)["project"]["version"]
    return version


def mireg_modules() -> set[str]:
    """Every module of the repository's ``mireg`` package, as paths in a wheel (``mireg/cli.py``)."""
    package = REPO / "mireg"
    return {
        f"mireg/{path.relative_to(package).as_posix()}"
        for path in package.rglob("*.py")
        if "__pycache__" not in path.relative_to(package).parts
    }


def run(command: Sequence[str | Path], log: Path, env: dict[str, str] | None = None) -> str:
    """Run ``command`` in ``log``'s folder (never the repository's, whose ``mireg/`` would shadow an
    installed one for ``python -c``), its output appended to ``log``; its stdout.

    Raises:
        CheckFailed: It exited non-zero (the end of its output is in the message).
    """
    shown = " ".join(str(c) for c in command)
    print(f"$ {shown}", flush=True)
    done = subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        env=env,
        cwd=log.parent,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {shown}\n{done.stdout}{done.stderr}\n")
    if done.returncode != 0:
        raise CheckFailed(
            f"`{shown}` exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}\n(full log: {log})"
        )
    return done.stdout


# ------------------------------------------------------------------------------ 1. the fixtures


@dataclass(frozen=True)
class Fixtures:
    """An exported model, one scan as NIfTI and as a DICOM series, and their reference predictions."""

    model: Path
    nifti: Path
    dicom: Path
    reference: Path

    @property
    def reference_labels(self) -> Path:
        return self.reference / self.nifti.name

    @property
    def reference_seg(self) -> Path:
        return self.reference / f"{self.dicom.name}.dcm"


def make_fixtures(work: Path, log: Path) -> Fixtures:
    """Train and export a tiny model and write its inputs, with this environment's mireg (torch)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))  # tests.helpers: the tests' tiny recipe and DICOM writer
    import nibabel as nib
    import numpy as np

    from mireg.data.phantom import generate_patient
    from mireg.recipe import dump_toml
    from tests.helpers import tiny_recipe, write_dicom_series

    recipe = tiny_recipe(work / "runs")
    recipe["train"].update(epochs=1, iterations_per_epoch=2)
    (work / "tiny.toml").write_text(dump_toml(recipe), encoding="utf-8")
    env = {**os.environ, "MIREG_CACHE": str(work / "cache")}  # never the user's cache
    mireg = [sys.executable, "-m", "mireg"]
    run([*mireg, "train", work / "tiny.toml"], log, env)
    model = work / "model" / "model.onnx"
    run([*mireg, "export", work / "runs" / "tiny", "-o", model], log, env)

    patient = generate_patient(40, seed=9)
    image, _ = patient.frames[patient.ed_frame]
    stored = np.round(image / image.max() * 4000).astype(np.uint16)
    affine = np.array([[1.4, 0, 0, 10.0], [0, 1.6, 0, -3.0], [0, 0, 7.0, 2.0], [0, 0, 0, 1]])
    dicom = work / "dicom" / "series"
    write_dicom_series(dicom, stored, affine)
    nifti = work / "nifti" / "scan.nii.gz"
    nifti.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(stored.astype(np.float32), affine), nifti)

    fixtures = Fixtures(model, nifti, dicom, work / "reference")
    run([*mireg, "predict", model, nifti, dicom, "-o", fixtures.reference], log, env)
    return fixtures


# --------------------------------------------------------------------------------- 2. the wheel


def check_wheel(work: Path, log: Path) -> Path:
    """Build the runtime's wheel and check its files and metadata; the wheel.

    Raises:
        CheckFailed: A module of ``mireg/`` missing, anything else but its metadata in it, another
            version than mireg's, no ``mireg`` command, or a dependency of the torch stack.
    """
    dist = work / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", RUNTIME, "-w", dist], log)
    (wheel,) = dist.glob("mireg_runtime-*.whl")
    version = mireg_version()
    info = f"mireg_runtime-{version}.dist-info/"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"{info}METADATA").decode() if f"{info}METADATA" in names else ""
        entry_points = archive.read(f"{info}entry_points.txt").decode() if metadata else ""
    modules = {n for n in names if n.startswith("mireg/")}
    expected = mireg_modules()
    problems = []
    if modules != expected:
        problems.append(
            f"mireg modules missing {sorted(expected - modules)}, extra {sorted(modules - expected)}"
        )
    if other := sorted(n for n in names - modules if not n.startswith(info)):
        problems.append(f"files outside mireg/ and {info}: {other}")
    if f"\nVersion: {version}\n" not in metadata:
        problems.append(f"its METADATA does not give mireg's version {version}")
    requires = re.findall(r"^Requires-Dist: ([A-Za-z0-9._-]+)", metadata, re.MULTILINE)
    if torch := [r for r in requires if is_torch_stack(r)]:
        problems.append(f"it requires {torch}")
    if not re.search(r"^mireg = mireg\.cli:main$", entry_points, re.MULTILINE):
        problems.append("no `mireg = mireg.cli:main` console script")
    if problems:
        raise CheckFailed(f"{wheel.name}: " + "; ".join(problems))
    print(f"ok: {wheel.name}: {len(modules)} modules of mireg/, requires {', '.join(requires)}")
    return wheel


# ------------------------------------------------------------------------- 3. the runtime alone


def folder_size(folder: Path) -> int:
    """Bytes of the files under ``folder`` (links not followed)."""
    return sum(
        os.lstat(os.path.join(root, name)).st_size for root, _, files in os.walk(folder) for name in files
    )


def alone() -> dict[str, str]:
    """The environment of commands run in the runtime's virtual environment: no ``PYTHONPATH``, which
    could reach the repository's ``mireg`` or another environment's packages."""
    env = {**os.environ, "COLUMNS": "120"}
    env.pop("PYTHONPATH", None)
    return env


def install_runtime(venv: Path, source: str, log: Path) -> None:
    """A fresh virtual environment with the runtime installed by one ``pip install``."""
    run([sys.executable, "-m", "venv", venv], log)
    started = time.monotonic()
    run([venv / "bin" / "python", "-m", "pip", "install", source], log, alone())
    seconds = time.monotonic() - started
    print(f"ok: installed {source} in {seconds:.0f} s; environment: {folder_size(venv) / 2**20:.0f} MiB")


def check_no_torch(venv: Path, log: Path) -> None:
    """torch cannot be imported in ``venv`` and no distribution of the torch stack is installed."""
    python = venv / "bin" / "python"
    done = subprocess.run(
        [python, "-c", "import torch"],
        capture_output=True,
        text=True,
        env=alone(),
        cwd=log.parent,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if done.returncode == 0 or "No module named 'torch'" not in done.stderr:
        raise CheckFailed(
            f"`import torch` in the runtime's environment: exit {done.returncode} {done.stderr}"
        )
    listing = run(
        [
            python,
            "-c",
            "import importlib.metadata as m, json; print(json.dumps([d.name for d in m.distributions()]))",
        ],
        log,
        alone(),
    )
    installed = sorted(set(json.loads(listing)))
    if torch := [name for name in installed if is_torch_stack(name)]:
        raise CheckFailed(f"the runtime's environment has {torch} installed")
    print(f"ok: torch cannot be imported; {len(installed)} distributions, none of the torch stack")


def check_commands(venv: Path, fixtures: Fixtures, out: Path, log: Path) -> None:
    """``mireg --help``, ``--version`` and ``predict`` (NIfTI; DICOM with --overlay) in ``venv``."""
    mireg, env = venv / "bin" / "mireg", alone()
    if "predict" not in run([mireg, "--help"], log, env):
        raise CheckFailed("`mireg --help` does not list predict")
    shown = run([mireg, "--version"], log, env).strip()
    version = mireg_version()
    if shown != f"mireg {version}":
        raise CheckFailed(f"`mireg --version` shows {shown!r}, not 'mireg {version}'")
    run([mireg, "predict", fixtures.model, fixtures.nifti, "-o", out / "nifti"], log, env)
    run([mireg, "predict", fixtures.model, fixtures.dicom, "-o", out / "seg", "--overlay"], log, env)
    compare_label_maps(out / "nifti" / fixtures.nifti.name, fixtures.reference_labels)
    compare_segs(out / "seg" / f"{fixtures.dicom.name}.dcm", fixtures.reference_seg, fixtures.dicom)
    overlay = out / "seg" / "overlays" / f"{fixtures.dicom.name}.png"
    if not overlay.is_file() or not overlay.read_bytes().startswith(b"\x89PNG"):
        raise CheckFailed(f"{overlay}: no PNG overlay written")
    written = [out / "nifti" / fixtures.nifti.name, out / "seg" / f"{fixtures.dicom.name}.dcm", overlay]
    print(f"ok: predicted {', '.join(map(str, written))}")


#: Share of voxels on which the runtime's labels must equal the full install's (both run ONNX
#: Runtime on the same model, but a fresh environment may resolve other versions of it).
AGREEMENT = 0.9999


def compare_label_maps(got: Path, reference: Path) -> None:
    """The runtime's NIfTI label map has the reference's grid and (nearly) its labels."""
    import nibabel as nib
    import numpy as np

    if not got.is_file():
        raise CheckFailed(f"{got}: not written")
    a, b = nib.load(str(got)), nib.load(str(reference))
    assert isinstance(a, nib.Nifti1Image) and isinstance(b, nib.Nifti1Image)
    if a.shape != b.shape or not np.allclose(a.affine, b.affine):
        raise CheckFailed(f"{got}: grid {a.shape} differs from the full install's {b.shape}")
    agreement = float((np.asarray(a.dataobj) == np.asarray(b.dataobj)).mean())
    if agreement < AGREEMENT:
        raise CheckFailed(f"{got}: labels equal to the full install's on only {agreement:.2%} of voxels")


def compare_segs(got: Path, reference: Path, series: Path) -> None:
    """The runtime's DICOM SEG references the input series and has (nearly) the reference's frames."""
    import numpy as np
    import pydicom

    if not got.is_file():
        raise CheckFailed(f"{got}: not written")
    a, b = pydicom.dcmread(got), pydicom.dcmread(reference)
    source_uid = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    if a.Modality != "SEG" or a.ReferencedSeriesSequence[0].SeriesInstanceUID != source_uid:
        raise CheckFailed(f"{got}: not a SEG that references series {source_uid}")
    labels = [s.SegmentLabel for s in a.SegmentSequence]
    if labels != [s.SegmentLabel for s in b.SegmentSequence]:
        raise CheckFailed(f"{got}: segments {labels} differ from the full install's")
    pixels, expected = a.pixel_array, b.pixel_array
    if pixels.shape != expected.shape or float((pixels == expected).mean()) < AGREEMENT:
        raise CheckFailed(f"{got}: frames {pixels.shape} differ from the full install's {expected.shape}")
    if not np.any(pixels):
        raise CheckFailed(f"{got}: every segment is empty")


# --------------------------------------------------------------------------------------- main


def check(work: Path, source: str) -> None:
    """Every step, in order (:class:`CheckFailed` at the first that fails)."""
    log = work / "check.log"
    print("== 1. a tiny model and its inputs, with this environment's mireg", flush=True)
    fixtures = make_fixtures(work, log)
    print("== 2. the runtime's wheel", flush=True)
    check_wheel(work, log)
    print(f"== 3. {source} alone, in a fresh virtual environment", flush=True)
    venv = work / "venv"
    install_runtime(venv, source, log)
    check_no_torch(venv, log)
    check_commands(venv, fixtures, work / "out", log)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--work", type=Path, help="folder for everything written (kept); default: a temporary one"
    )
    parser.add_argument(
        "--source",
        default=str(RUNTIME),
        help="what `pip install` gets in the fresh environment (default: this folder); e.g. "
        "'mireg-runtime @ git+REPOSITORY_URL@COMMIT#subdirectory=runtime'",
    )
    args = parser.parse_args(argv)
    source = str(Path(args.source).resolve()) if Path(args.source).exists() else args.source
    work = args.work.resolve() if args.work else Path(tempfile.mkdtemp(prefix="mireg-runtime-check-"))
    if args.work and work.exists() and any(work.iterdir()):
        parser.error(f"--work {work}: not empty")
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        check(work, source)
    except CheckFailed as exc:
        print(f"FAILED: {exc}\n(everything it wrote is kept in {work})", file=sys.stderr)
        return 1
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(f"mireg-runtime: every check passed in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
