"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (CPU, a few minutes)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the package, tests, benchmarks and this file."""
    session.install("ruff>=0.5")
    session.run("ruff", "check", "mireg", "tests", "benchmarks", "recipes", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the package."""
    session.install("-e", ".[dev]")
    session.run("mypy", "mireg")


@nox.session
def bench(session: nox.Session) -> None:
    """The standard benchmarks: metrics, and partial / udaiic steps at the paper's shapes."""
    session.install("-e", ".")
    session.run("python", "benchmarks/metrics.py")
    for method in ("partial", "udaiic"):
        session.run("python", "benchmarks/step.py", "--method", method, "--size", "224", "--steps", "3",
                    *(["--compare-naive"] if method == "udaiic" else []), *session.posargs)


@nox.session
def quality(session: nox.Session) -> None:
    """The semi-supervised gain on the synthetic cohort (partial / udaiic / full, 3 seeds; ~1 h on CPU)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/quality.py", *session.posargs)
