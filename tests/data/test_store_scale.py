"""Stores larger than memory: bounded-memory and parallel preprocessing, labels only where they
exist, atomic publishing, and stores of the earlier format."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mireg.data.phantom import generate_cohort
from mireg.data.prepare import prepare_store
from mireg.errors import DataError
from mireg.preprocessing.store import VolumeStore
from mireg.preprocessing.volume import StoreBuilder

from ..conftest import CliResult
from ..helpers import terminated_when_made

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("acdc_raw")
    generate_cohort(root, n_patients=6, seed=2)
    return root


def _files(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


def test_two_workers_write_the_store_of_one_byte_for_byte(raw: Path, tmp_path: Path) -> None:
    unlabeled = tmp_path / "extra"
    unlabeled.mkdir()
    for scan in sorted((raw / "training" / "patient006").glob("*_frame??.nii.gz")):
        shutil.copy(scan, unlabeled / scan.name)
    made = {}
    for workers in (1, 2):
        out = tmp_path / f"j{workers}"
        store, written = prepare_store("acdc", raw, out, 4.0, 64, {}, [unlabeled], None, workers)
        assert written and len(store.volumes) == 14
        made[workers] = _files(out)
    assert sorted(made[1]) == ["images.npy", "labels.npy", "store.json"]
    assert made[2] == made[1]


def test_labels_are_stored_for_labelled_volumes_only(raw: Path, tmp_path: Path) -> None:
    partly = tmp_path / "raw"
    shutil.copytree(raw, partly)
    for gt in (partly / "training" / "patient003").glob("*_gt.nii.gz"):
        gt.unlink()
    store, _ = prepare_store("acdc", partly, tmp_path / "store", 4.0, 64, {}, [])
    labelled = [v for v in store.volumes if v.labeled]
    assert len(labelled) == 10 and all(not v.labeled for v in store.volumes if v.patient == "patient003")
    assert store.labels.shape == (sum(v.n_slices for v in labelled), 64, 64)
    assert store.images.shape[0] == sum(v.n_slices for v in store.volumes)
    rows = store.label_rows()
    for v in store.volumes:
        if v.labeled:
            gt = nib.load(partly / "training" / v.patient / Path(v.source).name.replace(".nii", "_gt.nii"))
            assert np.array_equal(np.unique(store.volume_labels(v)), np.unique(np.asarray(gt.dataobj)))
            assert np.array_equal(
                rows[v.start : v.stop], np.arange(v.label_start, v.label_start + v.n_slices)
            )
        else:
            assert v.label_start is None and (rows[v.start : v.stop] == -1).all()
            with pytest.raises(ValueError, match="has no label map"):
                store.volume_labels(v)


def test_a_bad_file_read_by_a_worker_is_named_and_nothing_is_published(raw: Path, tmp_path: Path) -> None:
    broken = tmp_path / "raw"
    shutil.copytree(raw, broken)
    bad = broken / "training" / "patient005" / "patient005_frame01.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated
    with pytest.raises(DataError, match=r"patient005_frame01.nii.gz: not a readable NIfTI file"):
        prepare_store("acdc", broken, tmp_path / "out", 4.0, 64, {}, [], None, 2)
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_an_interrupted_preprocess_leaves_nothing(raw: Path, tmp_path: Path) -> None:
    big = tmp_path / "raw"
    generate_cohort(big, n_patients=16, seed=3)
    out = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "mireg", "preprocess", "acdc", str(big), str(out), "--spacing", "1"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".store.*.partial")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "preprocess ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]


def test_a_kill_the_instant_the_store_folder_is_made_leaves_nothing(raw: Path, tmp_path: Path) -> None:
    out = tmp_path / "store"
    with terminated_when_made("mkdtemp"), pytest.raises(KeyboardInterrupt):
        prepare_store("acdc", raw, out, 4.0, 64, {}, [], None, 1)
    assert list(tmp_path.iterdir()) == []


def test_a_kill_the_instant_a_builder_makes_its_private_folder_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a builder without ``out`` writes
    image = np.zeros((8, 8, 2), np.float32)
    with (
        terminated_when_made("mkdtemp"),
        pytest.raises(KeyboardInterrupt),
        StoreBuilder("t", 1.0, 16) as builder,
    ):
        builder.add(id="a", patient="a", image=image, affine=np.eye(4), spacing=(1.0, 1.0, 1.0))
        builder.save(tmp_path / "store")
    assert list(tmp_path.iterdir()) == []


def test_preprocessing_memory_does_not_grow_with_the_data_set(tmp_path: Path) -> None:
    # 24 volumes make a 170 MB store; holding them until the end (as stores used to be built) would
    # add at least that much to the peak. Peaks are read in a fresh process, after a first volume.
    script = textwrap.dedent(
        f"""
        import resource, sys
        from functools import partial
        import numpy as np
        from mireg.preprocessing.volume import RawVolume, StoreBuilder

        def scan(seed):
            rng = np.random.default_rng(seed)
            return RawVolume(rng.random((192, 192, 96), dtype=np.float32), np.eye(4), (1.0, 1.0, 2.0))

        def peak_mb():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        with StoreBuilder("big", 1.0, 192, {str(tmp_path / "warm")!r}) as builder:
            builder.classes = ["background", "x"]
            builder.add_file(id="v0", patient="p0", read=partial(scan, 0))
            builder.save()
        before = peak_mb()
        with StoreBuilder("big", 1.0, 192, {str(tmp_path / "big")!r}) as builder:
            builder.classes = ["background", "x"]
            for i in range(24):
                builder.add_file(id=f"v{{i}}", patient=f"p{{i}}", read=partial(scan, i))
            store = builder.save()
        print(before, peak_mb(), store.images.nbytes / 2**20)
        """
    )
    # Large blocks go straight back to the system when freed, so the peak shows what the code
    # holds rather than what malloc keeps for reuse (a plateau of a few volumes either way).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=tmp_path, env=env
    )
    before, after, store_mb = map(float, result.stdout.split())
    assert store_mb > 160
    assert after - before < 60, f"peak grew by {after - before:.0f} MB for a {store_mb:.0f} MB store"


def _as_version_1(store_dir: Path, old: Path) -> None:
    """Rewrite a store as version 1 wrote it: labels for every slice, zeros where unlabelled."""
    store = VolumeStore.load(store_dir)
    old.mkdir()
    np.save(old / "images.npy", np.asarray(store.images))
    labels = np.zeros(store.images.shape, np.uint8)
    for v in store.volumes:
        if v.labeled:
            labels[v.start : v.stop] = store.volume_labels(v)
    np.save(old / "labels.npy", labels)
    meta = json.loads((store_dir / "store.json").read_text())
    meta["version"] = 1
    for v in meta["volumes"]:
        del v["label_start"]
    (old / "store.json").write_text(json.dumps(meta))


def test_a_store_of_the_earlier_format_is_read_as_it_is(raw: Path, tmp_path: Path) -> None:
    partly = tmp_path / "raw"
    shutil.copytree(raw, partly)
    for gt in (partly / "training" / "patient002").glob("*_gt.nii.gz"):
        gt.unlink()
    new, _ = prepare_store("acdc", partly, tmp_path / "new", 4.0, 64, {}, [])
    _as_version_1(tmp_path / "new", tmp_path / "old")
    old = VolumeStore.load(tmp_path / "old")
    assert old.labels.shape == old.images.shape  # as it was written
    assert np.array_equal(np.asarray(old.images), np.asarray(new.images))
    for a, b in zip(old.volumes, new.volumes, strict=True):
        assert (a.id, a.labeled, a.start) == (b.id, b.labeled, b.start)
        if a.labeled:
            assert np.array_equal(old.volume_labels(a), new.volume_labels(b))
    index = new.slice_indices(["patient001", "patient003"])  # what a training batch gathers
    assert np.array_equal(old.labels[old.label_rows()[index]], new.labels[new.label_rows()[index]])


def test_a_store_of_an_unknown_version_says_what_to_do(raw: Path, tmp_path: Path) -> None:
    prepare_store("acdc", raw, tmp_path / "store", 4.0, 64, {}, [])
    meta_file = tmp_path / "store" / "store.json"
    meta_file.write_text(meta_file.read_text().replace('"version": 2', '"version": 9'))
    with pytest.raises(DataError, match=r"store.json: store version 9 is not supported") as err:
        VolumeStore.load(tmp_path / "store")
    assert "preprocess the data again" in str(err.value)


def test_the_command_takes_workers(raw: Path, tmp_path: Path, cli: Callable[..., CliResult]) -> None:
    result = cli("preprocess", "acdc", raw, tmp_path / "store", "--spacing", "4", "--canvas", "64", "-j", "2")
    assert result.code == 0, result
    assert "wrote" in result.out and VolumeStore.load(tmp_path / "store").labels.shape[0] > 0
    result = cli("preprocess", "acdc", raw, tmp_path / "other", "-j", "0")
    assert result.code == 2 and "--workers" in result.err
