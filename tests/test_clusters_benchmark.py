"""The cluster-alignment diagnostic: its uncertainty coefficient, and its scores on a trained run."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from mireg.evaluation.evaluate import segment
from mireg.network import build_network
from mireg.recipe import validate_recipe
from mireg.training.checkpoint import load_checkpoint

from .helpers import load_benchmark


def test_uncertainty_coefficient_is_one_when_clusters_determine_labels_and_zero_when_independent() -> None:
    u = load_benchmark("clusters").uncertainty_coefficient
    assert u(np.diag([5, 3, 2])) == pytest.approx(1.0)
    # Two clusters for one label lose nothing about the labels.
    assert u(np.array([[4, 0], [2, 0], [0, 6]])) == pytest.approx(1.0)
    assert u(np.outer([1, 2, 3], [4, 1])) == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < u(np.array([[4, 1], [1, 4]])) < 1.0


@pytest.mark.slow
def test_cluster_scores_of_a_trained_run(cli, write_recipe: Callable[..., Path]) -> None:  # type: ignore[no-untyped-def]
    recipe_path = write_recipe()
    assert cli("train", recipe_path).code == 0
    run = recipe_path.parent / "runs" / "tiny"
    clusters = load_benchmark("clusters")
    scores = clusters.cluster_scores(run)
    assert {name: len(v) for name, v in scores.items()} == {"prediction": 1, "Up_conv3": 2, "Up_conv2": 2}
    assert all(0.0 <= u <= 1.0 for values in scores.values() for u in values)

    # The prediction's score, recomputed from the network's own segmentation of the test slices.
    state = load_checkpoint(run / "best.pt")
    recipe = validate_recipe(state["recipe"], "best.pt")
    model, _ = build_network(recipe)
    model.load_state_dict(state["model"])
    model.eval()
    store = recipe.data.load(lambda done, total, description: None)
    images, labels = store.tensors(torch.device("cpu"))
    test = set(json.loads((run / "split.json").read_text())["test"])
    index = torch.from_numpy(
        np.concatenate([np.arange(v.start, v.stop) for v in store.volumes if v.patient in test and v.labeled])
    )
    with torch.no_grad():
        pred = segment(model, images[index].float(), 8).argmax(dim=1)
    counts = np.zeros((4, 4), dtype=np.int64)
    truth = labels[torch.from_numpy(store.label_rows())[index]]
    np.add.at(counts, (pred.flatten().numpy(), truth.long().flatten().numpy()), 1)
    assert scores["prediction"][0] == pytest.approx(clusters.uncertainty_coefficient(counts))


@pytest.mark.slow
def test_cluster_scores_refuse_a_run_without_cluster_heads(cli, write_recipe: Callable[..., Path]) -> None:  # type: ignore[no-untyped-def]
    recipe_path = write_recipe(regularizers=[])
    assert cli("train", recipe_path).code == 0
    with pytest.raises(SystemExit, match="no mutual_information regulariser"):
        load_benchmark("clusters").cluster_scores(recipe_path.parent / "runs" / "tiny")
