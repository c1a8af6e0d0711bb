"""The batch draws and the two data paths: resident and streamed give the same steps."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mireg.recipe import validate_recipe
from mireg.training.data import load_data
from mireg.training.feed import (
    BatchDraws,
    ResidentFeed,
    StreamedFeed,
    _file_backed,
    choose_placement,
    store_bytes,
)

from .conftest import CliResult
from .helpers import DEVICES, tiny_recipe


def test_the_draws_of_a_step_depend_only_on_the_seed_and_the_step() -> None:
    labeled, unlabeled = np.arange(10, 30), np.arange(100, 200)
    a = BatchDraws(5, labeled, unlabeled, 4, 6)
    b = BatchDraws(5, labeled, unlabeled, 4, 6)
    for step in (7, 0, 3, 7):  # any order, any number of times
        (al, au), (bl, bu) = a(step), b(step)
        assert np.array_equal(al, bl) and np.array_equal(au, bu)
        assert al.shape == (4,) and au.shape == (6,)
        assert set(al) <= set(labeled) and set(au) <= set(unlabeled)
    assert not np.array_equal(a(0)[1], a(1)[1])
    assert not np.array_equal(a(0)[1], BatchDraws(6, labeled, unlabeled, 4, 6)(0)[1])


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Any:
    recipe = validate_recipe(tiny_recipe(tmp_path_factory.mktemp("runs")), "tiny")
    return recipe, load_data(recipe)


@pytest.mark.parametrize("device", DEVICES)
def test_the_streamed_path_gives_the_resident_batches_from_any_step(tiny_data: Any, device: str) -> None:
    recipe, data = tiny_data
    draws = BatchDraws(recipe.seed, data.labeled, data.unlabeled, 3, 5)
    resident = ResidentFeed(data.store, draws, torch.device(device))
    streamed = StreamedFeed(data.store, draws, torch.device(device), depth=2)
    # On CUDA the reading thread stages batches in pinned memory, so that copies do not block.
    assert all(t.is_pinned() == (device == "cuda") for t in streamed._read(0))
    # The store's files are read with preadv (the GIL released), not through the memory map.
    assert _file_backed(data.store.images) and _file_backed(data.store.labels)
    try:
        for step in [0, 1, 2, 3, 4, 9, 10, 2, 3]:  # a jump (a resume) restarts the reading ahead
            r, s = resident.batch(step), streamed.batch(step)
            for got, want in zip(
                (s.images_l, s.labels_l, s.images_u), (r.images_l, r.labels_l, r.images_u), strict=True
            ):
                assert got.dtype == want.dtype and got.device == want.device and torch.equal(got, want)
            assert r.labels_l.max() > 0  # labelled slices come with their label maps
    finally:
        streamed.close()
    assert streamed._thread is None


def test_a_reading_error_reaches_the_training_step(tiny_data: Any) -> None:
    recipe, data = tiny_data
    broken = BatchDraws(recipe.seed, data.labeled, np.array([10**9]), 2, 2)  # past the store's end
    streamed = StreamedFeed(data.store, broken, torch.device("cpu"))
    with pytest.raises(IndexError):
        streamed.batch(0)
    streamed.close()


def test_auto_keeps_a_store_resident_only_within_the_budget(tiny_data: Any) -> None:
    _, data = tiny_data
    cpu, size = torch.device("cpu"), store_bytes(data.store)
    assert choose_placement("auto", data.store, cpu, None) == "resident"  # a tiny store on any machine
    assert choose_placement("auto", data.store, cpu, 0.9 * size / 2**30) == "streamed"
    assert choose_placement("auto", data.store, cpu, 1.1 * size / 2**30) == "resident"
    assert choose_placement("streamed", data.store, cpu, None) == "streamed"
    assert choose_placement("resident", data.store, cpu, 1e-9) == "resident"


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv") as fh:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(fh)]


@pytest.mark.parametrize("device", DEVICES)
def test_training_streamed_writes_the_resident_metrics(
    cli: Callable[..., CliResult], write_recipe: Callable[..., Path], tmp_path: Path, device: str
) -> None:
    recipe = write_recipe()
    runs = {}
    for placement in ("resident", "streamed"):
        result = cli(
            "train",
            recipe,
            "--set",
            f'train.data_placement="{placement}"',
            "--set",
            f"name={placement}",
            "--set",
            f'train.device="{device}"',
        )
        assert result.code == 0, result
        assert f"data {placement}" in result.out
        [runs[placement]] = (tmp_path / "runs").glob(f"{placement}*")
    if device == "cpu":
        assert _metrics(runs["streamed"]) == _metrics(runs["resident"])
        resident_report = (runs["resident"] / "report.json").read_text().replace("resident", "X")
        assert (runs["streamed"] / "report.json").read_text().replace("streamed", "X") == resident_report
    else:  # the same batches; cuDNN's backward sums in no fixed order, so the same up to rounding
        for streamed, resident in zip(_metrics(runs["streamed"]), _metrics(runs["resident"]), strict=True):
            assert streamed.keys() == resident.keys()
            for key, value in resident.items():
                assert float(streamed[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-6), key
