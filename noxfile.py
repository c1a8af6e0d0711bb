"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``, ``nox -s plugins``,
``nox -s runtime`` (the torch-free install), ``nox -s gpu`` (on a machine with an NVIDIA GPU)."""

from __future__ import annotations

from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "plugins"]
nox.options.reuse_existing_virtualenvs = True

#: What ruff lints and formats.
SOURCES = ("mireg", "tests", "benchmarks", "recipes", "plugins", "runtime", "noxfile.py")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (CPU, a few minutes), the optional extras' tests included (the Slurm ones
    where Slurm is installed: .ci/run installs it from Debian's packages)."""
    session.install("-e", ".[dev,clinic,onnx,nnunet,slurm]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff: lint and formatting of the package, tests, benchmarks, recipes, plugins and this file;
    import-linter: the architecture's rules (pyproject.toml, [tool.importlinter])."""
    session.install("ruff>=0.5", "import-linter>=2.1", "-e", ".")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy, strict, on the package (pyproject.toml: checked for the oldest supported Python)."""
    session.install("-e", ".[dev]")
    session.run("mypy", "mireg")


@nox.session
def plugins(session: nox.Session) -> None:
    """The example plugin package: its tests, a training with its plugins, mireg's contract tests."""
    session.install("-e", ".[dev]")
    session.install("-e", "plugins/mireg-example")
    session.run("pytest", "plugins/mireg-example/tests")
    runs = session.create_tmp()
    session.run(
        "mireg", "train", "plugins/mireg-example/recipes/example.toml", "--set", f"train.runs_dir={runs}/runs"
    )
    session.run("pytest", "tests/test_contract.py", "tests/test_registry.py")


@nox.session
def runtime(session: nox.Session) -> None:
    """mireg-runtime (runtime/): its tests, then runtime/check.py: a tiny model exported here, `pip
    install ./runtime` into a fresh virtual environment without torch, and `mireg predict model.onnx`
    there from NIfTI and from DICOM (SEG out). `nox -s runtime -- --work DIR` keeps what it wrote;
    `-- --source 'mireg-runtime @ git+URL#subdirectory=runtime'` checks another source."""
    session.install("-e", ".[dev,clinic,onnx]", "hatchling>=1.27")
    session.run("pytest", "tests/test_runtime.py")
    session.run("python", "runtime/check.py", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The standard benchmarks: metrics, and partial / udaiic steps at the paper's shapes."""
    session.install("-e", ".")
    session.run("python", "benchmarks/metrics.py")
    for method in ("partial", "udaiic"):
        session.run(
            "python",
            "benchmarks/step.py",
            "--method",
            method,
            "--size",
            "224",
            "--steps",
            "3",
            *(["--compare-naive"] if method == "udaiic" else []),
            *session.posargs,
        )


@nox.session
def gpu(session: nox.Session) -> None:
    """On a machine with an NVIDIA GPU: every CUDA test (`pytest -m cuda`) and everything measured
    only on a GPU (the strong study's run times, step timings, profiles, data paths, loss curve) into
    gpu-check/ (gpu.json)."""
    python = str(Path(session.bin) / "python")
    session.run(
        "bash",
        "benchmarks/gpu_check.sh",
        "gpu-check",
        *session.posargs,
        env={"PYTHON": python},
        external=True,
    )


@nox.session
def quality(session: nox.Session) -> None:
    """The semi-supervised gain on the synthetic cohort: `mireg study recipes/studies/phantom.toml`
    (hours on a CPU, resumable; `nox -s quality -- --quick` for a check in minutes)."""
    session.install("-e", ".")
    session.run("mireg", "study", "recipes/studies/phantom.toml", *session.posargs)
