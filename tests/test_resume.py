"""A run killed (SIGKILL) or stopped (SIGINT, SIGTERM) mid-epoch, or stopped after its last step,
resumes to the same result."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mireg.errors import RunInterrupted
from mireg.progress import Observer
from mireg.recipe import dump_toml, load_recipe
from mireg.training import loop
from mireg.training.workflow import train

from .helpers import tiny_recipe

pytestmark = pytest.mark.slow


def _recipe(tmp_path: Path, name: str) -> Path:
    recipe = tiny_recipe(tmp_path / "runs", name=name)
    recipe["train"].update(epochs=3, iterations_per_epoch=30, log_every=1)
    path = tmp_path / f"{name}.toml"
    path.write_text(dump_toml(recipe))
    return path


def _mireg(*args: str | Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mireg", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def _rows(run: Path) -> list[dict[str, str]]:
    path = run / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _comparable(run: Path) -> tuple[list[dict[str, float]], dict]:
    rows = [{k: float(v) for k, v in r.items() if k != "seconds"} for r in _rows(run)]
    return rows, json.loads((run / "report.json").read_text())["summary"]


def _interrupt_after_first_epoch(recipe: Path, run: Path, sig: int) -> subprocess.Popen[str]:
    proc = _mireg("train", recipe)
    deadline = time.time() + 240
    while not (_rows(run) and (run / "last.pt").is_file()) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    # A third of an epoch into the second one, by the first's duration: a fixed wait would overshoot
    # the epoch on a fast idle machine.
    rows = _rows(run)
    time.sleep(float(rows[0]["seconds"]) / 3 if rows else 0.0)
    proc.send_signal(sig)
    proc.wait(timeout=240)
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, float]], dict]:
    tmp = tmp_path_factory.mktemp("reference")
    proc = _mireg("train", _recipe(tmp, "ref"))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return _comparable(tmp / "runs" / "ref")


def _assert_same(run: Path, reference: tuple[list[dict[str, float]], dict]) -> None:
    rows, summary = _comparable(run)
    ref_rows, ref_summary = reference
    assert [r["epoch"] for r in rows] == [1.0, 2.0, 3.0]
    for row, ref in zip(rows, ref_rows, strict=True):
        assert row.keys() == ref.keys()
        for key in row:
            assert row[key] == pytest.approx(ref[key], rel=1e-4, abs=1e-6), key
    assert summary["dice"]["all"]["mean"]["mean"] == pytest.approx(
        ref_summary["dice"]["all"]["mean"]["mean"], rel=1e-4, abs=1e-6
    )


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path, reference) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "runs" / "killed"
    proc = _interrupt_after_first_epoch(_recipe(tmp_path, "killed"), run, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert len(_rows(run)) == 1 and (run / "last.pt").is_file() and not (run / "report.json").exists()
    resumed = _mireg("train", "--resume", run)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert "resuming" in out
    _assert_same(run, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_checkpoint_and_say_how_to_resume(tmp_path: Path, reference, sig: int) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "runs" / "stopped"
    proc = _interrupt_after_first_epoch(_recipe(tmp_path, "stopped"), run, sig)
    err = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 130, err
    assert f"mireg train --resume {run}" in " ".join(err.split()) and "Traceback" not in err
    assert err.count(f"{signal.Signals(sig).name}: saving a checkpoint") == 1  # announced once, by the loop
    resumed = _mireg("train", "--resume", run)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    _assert_same(run, reference)


def _trained_here(tmp_path: Path) -> tuple[list[dict[str, float]], dict]:
    """The uninterrupted run, trained in this process: a run trained in the pytest process is
    compared with one trained in the same process (earlier tests may leave it with other thread
    settings than a fresh one, and other summation orders drift)."""
    train(load_recipe(_recipe(tmp_path, "uninterrupted")))
    return _comparable(tmp_path / "runs" / "uninterrupted")


class _Messages(Observer):
    """Keeps the messages of a run."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def message(self, text: str) -> None:
        self.messages.append(text)


class _SignalAfterLastEpoch(Observer):
    """Sends this process SIGTERM when the last epoch ends (after its last step and validation)."""

    def epoch_end(self, row: dict) -> None:  # type: ignore[type-arg]
        if row["epoch"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)


def _signal_at_test_volume(monkeypatch: pytest.MonkeyPatch, which: str) -> None:
    """Make the training's test evaluation send this process SIGTERM while it segments its first
    or its last volume."""
    evaluate_run = loop.evaluate_run

    def signalled(run, split, checkpoint, device, store, on_volume=None, **kwargs):  # type: ignore[no-untyped-def]
        total = len(store.volumes_of(getattr(run.split(), split)))
        done = 0

        def volume_done(*volume):  # type: ignore[no-untyped-def]
            nonlocal done
            done += 1
            if done == (1 if which == "first" else total):
                os.kill(os.getpid(), signal.SIGTERM)
            if on_volume is not None:
                on_volume(*volume)

        return evaluate_run(run, split, checkpoint, device, store, on_volume=volume_done, **kwargs)

    monkeypatch.setattr(loop, "evaluate_run", signalled)


@pytest.mark.parametrize("when", ["after the last step", "during the test evaluation"])
def test_a_stop_after_the_last_step_leaves_no_report_and_resuming_writes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    reference = _trained_here(tmp_path)
    run = tmp_path / "runs" / "late"
    observer = Observer()
    if when == "after the last step":
        observer = _SignalAfterLastEpoch()
    else:
        _signal_at_test_volume(monkeypatch, "first")
    with pytest.raises(RunInterrupted) as stopped:
        train(load_recipe(_recipe(tmp_path, "late")), observer=observer)
    assert "SIGTERM" in str(stopped.value) and f"mireg train --resume {run}" in stopped.value.hint
    assert not list(run.glob("report*")) and (run / "last.pt").is_file() and len(_rows(run)) == 3
    monkeypatch.undo()
    resumed = _Messages()
    train(resume=run, observer=resumed)
    assert any("training finished (3 epochs); evaluating on the test split" in m for m in resumed.messages)
    _assert_same(run, reference)


def test_a_stop_during_the_last_test_volume_still_writes_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = _trained_here(tmp_path)
    _signal_at_test_volume(monkeypatch, "last")
    said = _Messages()
    train(load_recipe(_recipe(tmp_path, "late")), observer=said)
    _assert_same(tmp_path / "runs" / "late", reference)
    # The run is finished: the last checkpoint's test report, which comes after, is skipped, saying so.
    assert not (tmp_path / "runs" / "late" / "report_test_last.json").exists()
    assert any("mireg eval" in m and "--checkpoint last" in m for m in said.messages)


def test_resume_usage_errors(cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert cli("train", "--resume", tmp_path, _recipe(tmp_path, "x")).code == 2
    result = cli("train", "--resume", tmp_path)
    assert result.code == 1 and "not a run directory" in result.err
