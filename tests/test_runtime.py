"""mireg-runtime (``runtime/``): ``mireg predict model.onnx`` installed without torch.

The runtime declares only what prediction of an exported model needs, with mireg's own ranges, and
its build ships every module of ``mireg/``. ``mireg predict`` then runs in a process where nothing
can be imported but the standard library, mireg, and what installing the runtime brings in (its
dependencies and theirs, as this environment resolves them): a module the prediction path needs
from a distribution the runtime lacks, or any import of torch, fails the test. ``runtime/check.py``
(CI, ``nox -s runtime``) does the same for real, in a fresh virtual environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pkgutil
import re
import sys
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .helpers import REPO, run_fresh_python

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

RUNTIME = REPO / "runtime"

#: Top-level modules of the torch stack, never to be imported on the runtime's path.
TORCH_MODULES = frozenset(
    {"torch", "torchvision", "torchaudio", "timm", "segmentation_models_pytorch", "triton"}
)


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


check = _load("mireg_runtime_check", RUNTIME / "check.py")


def _pyproject(path: Path) -> dict[str, Any]:
    with open(path, "rb") as fh:
        return tomllib.load(fh)


def _requirement(text: str) -> tuple[str, str]:
    """``(canonical name, the rest: specifier and marker, without spaces)`` of a requirement."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)(.*)", text)
    assert match, text
    return check.canonical(match[1]), re.sub(r"\s+", "", match[2])


def runtime_requirements() -> list[str]:
    requirements: list[str] = _pyproject(RUNTIME / "pyproject.toml")["project"]["dependencies"]
    return requirements


# ---------------------------------------------------------------------------------- metadata


def test_the_runtime_requires_nothing_of_the_torch_stack_and_installs_the_mireg_command() -> None:
    project = _pyproject(RUNTIME / "pyproject.toml")["project"]
    names = [_requirement(r)[0] for r in project["dependencies"]]
    assert [n for n in names if check.is_torch_stack(n)] == []
    assert not {"onnx", "onnxscript"} & set(names)  # exporting needs torch anyway
    assert {"onnxruntime", "pydicom", "highdicom", "nibabel", "matplotlib"} <= set(names)
    assert project["scripts"] == {"mireg": "mireg.cli:main"}
    # Built-in plugins need torch; with both distributions installed each would be registered twice.
    assert "entry-points" not in project


def test_the_runtime_requirements_are_mireg_own_ranges_and_cover_the_clinic_extra() -> None:
    mireg_project = _pyproject(REPO / "pyproject.toml")["project"]
    extras = mireg_project["optional-dependencies"]
    declared = {_requirement(r) for r in [*mireg_project["dependencies"], *extras["clinic"], *extras["onnx"]]}
    runtime = {_requirement(r) for r in runtime_requirements()}
    assert runtime - declared == set(), "a range differs from mireg's pyproject.toml"
    assert {_requirement(r) for r in extras["clinic"]} <= runtime
    assert all("==" not in rest for _, rest in runtime), "ranges, never exact pins"


# ------------------------------------------------------------------------------------- build


@pytest.fixture
def build_hook(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """``runtime/hatch_build.py``, imported with stand-ins for hatchling's hook base classes (hatchling
    is a build requirement, not one of the tests')."""
    for name, base in [
        ("hatchling.builders.hooks.plugin.interface", "BuildHookInterface"),
        ("hatchling.metadata.plugin.interface", "MetadataHookInterface"),
    ]:
        module = ModuleType(name)
        setattr(module, base, object)
        monkeypatch.setitem(sys.modules, name, module)
    module = _load("mireg_runtime_hatch_build", RUNTIME / "hatch_build.py")
    monkeypatch.delitem(sys.modules, "mireg_runtime_hatch_build")
    return module


def test_the_build_takes_mireg_version_and_every_module_from_the_repository_or_an_sdist(
    build_hook: ModuleType, tmp_path: Path
) -> None:
    assert "version" not in _pyproject(RUNTIME / "pyproject.toml")["project"]
    assert _pyproject(RUNTIME / "pyproject.toml")["project"]["dynamic"] == ["version"]
    assert build_hook.read_version(RUNTIME) == check.mireg_version()

    sources = build_hook.find_sources(RUNTIME)
    assert sources == REPO / "mireg"
    files = build_hook.source_files(sources)
    assert set(files.values()) == check.mireg_modules()
    assert all(Path(source).is_file() and "__pycache__" not in source for source in files)
    assert files[str(REPO / "mireg" / "io" / "dicom.py")] == "mireg/io/dicom.py"

    sdist = tmp_path / "mireg_runtime-0.1.0"
    (sdist / "mireg").mkdir(parents=True)
    (sdist / "mireg" / "__init__.py").touch()
    assert build_hook.find_sources(sdist) == sdist / "mireg"
    copied = tmp_path / "copied" / "runtime"  # what pip before 21.3 builds from
    for build_step in (build_hook.find_sources, build_hook.read_version):
        with pytest.raises(FileNotFoundError, match=r"pip >= 21\.3"):
            build_step(copied)


def test_the_wheel_holds_mireg_its_command_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hatchling_build = pytest.importorskip(
        "hatchling.build", reason="building needs hatchling (nox -s runtime)"
    )
    monkeypatch.chdir(RUNTIME)  # PEP 517: the backend builds the project in the current folder
    wheel = tmp_path / hatchling_build.build_wheel(str(tmp_path))
    version = check.mireg_version()
    assert wheel.name == f"mireg_runtime-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = f"mireg_runtime-{version}.dist-info/"
        entry_points = archive.read(f"{info}entry_points.txt").decode()
        requires = re.findall(
            r"^Requires-Dist: ([A-Za-z0-9._-]+)", archive.read(f"{info}METADATA").decode(), re.MULTILINE
        )
    assert {n for n in names if not n.startswith(info)} == check.mireg_modules()
    assert entry_points.split() == ["[console_scripts]", "mireg", "=", "mireg.cli:main"]
    assert sorted(check.canonical(r) for r in requires) == sorted(
        _requirement(r)[0] for r in runtime_requirements()
    )


# ------------------------------------------------------------------ prediction with the runtime


def runtime_closure(requirements: list[str]) -> set[str]:
    """Canonical names of the distributions that installing ``requirements`` brings in, as this
    environment resolves them (their requirements without extras, for this Python and platform)."""
    from packaging.requirements import Requirement

    todo, seen = [Requirement(r) for r in requirements], set()
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = check.canonical(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        todo += [Requirement(r) for r in metadata.distribution(requirement.name).requires or []]
    return seen


def standard_library() -> set[str]:
    """Top-level modules of the standard library: those it lists, and the files in its folders
    (``sys.stdlib_module_names`` leaves out some, such as ``_sysconfigdata_*``)."""
    stdlib = os.path.dirname(os.__file__)  # the base interpreter's, also from a virtual environment
    folders = [stdlib, os.path.join(stdlib, "lib-dynload")]
    return set(sys.stdlib_module_names) | {m.name for m in pkgutil.iter_modules(folders)}


def importable_with(requirements: list[str]) -> list[str]:
    """Top-level modules importable once ``requirements`` are installed: theirs, the standard
    library's and mireg's."""
    closure = runtime_closure(requirements)
    modules = {
        module
        for module, distributions in metadata.packages_distributions().items()
        if any(check.canonical(d) in closure for d in distributions)
    }
    return sorted(modules | standard_library() | {"mireg"})


# Runs `mireg ARGS` in a fresh interpreter that refuses to import any top-level module not in the
# list it is given (torch included), then reports the exit code, what it refused and which modules
# of the torch stack were loaded.
_ONLY = """
import importlib.abc, json, sys

given = json.loads(sys.argv[1])
allowed, torch = frozenset(given["allowed"]), frozenset(given["torch"])
refused = []


class OnlyTheRuntime(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in allowed:
            return None
        refused.append(name)
        raise ModuleNotFoundError(f"No module named {name!r} (not installed with mireg-runtime)", name=name)


sys.meta_path.insert(0, OnlyTheRuntime())
sys.argv = ["mireg", *sys.argv[2:]]
from mireg.cli import main

try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in torch)
print("\\nRESULT " + json.dumps({"code": code, "refused": sorted(set(refused)), "torch": loaded}))
"""


def run_with_only(allowed: list[str], *args: str | Path, cwd: Path) -> dict[str, Any]:
    """``mireg ARGS`` in a fresh interpreter that can import only ``allowed`` (top-level modules)."""
    given = json.dumps({"allowed": allowed, "torch": sorted(TORCH_MODULES)})
    result, done = run_fresh_python(_ONLY, given, *args, cwd=cwd, COLUMNS="200")
    result["stderr"] = done.stderr
    return result


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A tiny model exported to ONNX, a scan as NIfTI and as a DICOM series, and what the full
    install (torch, the extras) predicts for them (``runtime/check.py``'s first step)."""
    pytest.importorskip("highdicom", reason="the runtime's DICOM SEG needs the clinic extra here")
    pytest.importorskip("onnxruntime", reason="ONNX prediction needs the onnx extra")
    pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra")
    pytest.importorskip("matplotlib", reason="overlays need matplotlib")
    work = tmp_path_factory.mktemp("runtime")
    yield check.make_fixtures(work, work / "fixtures.log")


@pytest.mark.slow
def test_predict_needs_nothing_but_what_the_runtime_installs(fixtures: Any) -> None:
    allowed = importable_with(runtime_requirements())
    assert not TORCH_MODULES & set(allowed), "the runtime's dependencies bring in the torch stack"
    work = fixtures.reference.parent
    out = work / "out-runtime"
    result = run_with_only(
        allowed, "predict", fixtures.model, fixtures.nifti, fixtures.dicom, "-o", out, "--overlay", cwd=work
    )
    assert result["code"] == 0, result["stderr"][-3000:]
    assert result["torch"] == [] and not [
        m for m in result["refused"] if m.partition(".")[0] in TORCH_MODULES
    ]
    check.compare_label_maps(out / fixtures.nifti.name, fixtures.reference_labels)
    check.compare_segs(out / f"{fixtures.dicom.name}.dcm", fixtures.reference_seg, fixtures.dicom)
    assert (out / "overlays" / f"{fixtures.dicom.name}.png").read_bytes().startswith(b"\x89PNG")
    for args in (["--help"], ["--version"], ["predict", "--help"]):
        shown = run_with_only(allowed, *args, cwd=work)
        assert shown["code"] == 0 and shown["torch"] == [], (args, shown["stderr"][-2000:])


@pytest.mark.slow
def test_the_harness_fails_predict_when_the_runtime_lacks_a_dependency(fixtures: Any) -> None:
    """The check above is not vacuous: without highdicom among the runtime's requirements, writing
    the SEG of the DICOM series fails (and reading the NIfTI still works)."""
    without = [r for r in runtime_requirements() if _requirement(r)[0] != "highdicom"]
    allowed = importable_with(without)
    work = fixtures.reference.parent
    out = work / "out-without-highdicom"
    nifti_out = work / "out-without-highdicom-nifti"
    assert (
        run_with_only(allowed, "predict", fixtures.model, fixtures.nifti, "-o", nifti_out, cwd=work)["code"]
        == 0
    )
    result = run_with_only(allowed, "predict", fixtures.model, fixtures.dicom, "-o", out, cwd=work)
    assert result["code"] == 1 and "highdicom" in result["refused"], result["stderr"][-2000:]
    assert "writing DICOM SEG needs highdicom" in " ".join(result["stderr"].split())
    assert not out.exists()  # found before anything was written
