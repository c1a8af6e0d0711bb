"""Atomic writes: the result appears whole or not at all, with the permissions of any new file."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mireg.files import atomic_write, atomic_write_text
from mireg.preprocessing.store import StoreWriter

from .helpers import terminated_when_made


@pytest.fixture
def umask() -> Iterator[None]:
    """Let a test set the umask; the previous one comes back after it."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_gets_the_mode_the_umask_gives(
    tmp_path: Path, umask: None, mask: int, expected: int
) -> None:
    os.umask(mask)
    atomic_write_text(tmp_path / "report.json", "{}\n")
    atomic_write(tmp_path / "labels.nii.gz", lambda tmp: tmp.write_bytes(b"x"))
    assert _mode(tmp_path / "report.json") == expected
    assert _mode(tmp_path / "labels.nii.gz") == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.nii.gz", "report.json"]  # no temporaries


def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask: None) -> None:
    target = tmp_path / "model.json"
    target.write_text("old")
    target.chmod(0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("kept")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_kill_the_instant_the_temporary_is_made_leaves_the_previous_file_and_no_temporary(
    tmp_path: Path,
) -> None:
    target = tmp_path / "a.txt"
    target.write_text("kept")
    with terminated_when_made("mkstemp"), pytest.raises(KeyboardInterrupt):
        atomic_write_text(target, "new")
    assert target.read_text() == "kept" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_store_folder_gets_the_mode_of_a_new_folder(tmp_path: Path, umask: None) -> None:
    os.umask(0o022)
    writer = StoreWriter(tmp_path / "store", 8)
    writer.append(np.zeros((2, 8, 8), np.float16), None)
    writer.publish("s", ["background", "x"], 1.0, [], {})
    assert _mode(tmp_path / "store") == 0o755
    assert all(_mode(f) == 0o644 for f in (tmp_path / "store").iterdir())
