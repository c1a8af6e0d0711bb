"""Non-finite losses, unsafe checkpoints, mismatched checkpoints, and fuzzed inputs."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mireg.contract import Regularizer, RegularizerOutput, StepContext
from mireg.errors import CheckpointError, DataError, MiregError, RecipeError, RunError
from mireg.io.nifti import read_volume
from mireg.network import Term
from mireg.recipe import apply_override, read_toml, validate_recipe
from mireg.training.checkpoint import load_checkpoint, save_checkpoint
from mireg.training.loop import Trainer
from mireg.training.rundir import RunDir, checkpoint_file
from mireg.training.state import load_trained

from .helpers import tiny_recipe


class _NaNAt(Regularizer):
    """A loss that turns NaN at one step."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def forward(self, ctx: StepContext) -> RegularizerOutput:
        bad = torch.tensor(float("nan") if ctx.step == self.step else 0.0)
        return RegularizerOutput(ctx.logits_u.mean() * 0 + bad)


def _trainer(tmp_path: Path, **train: object) -> tuple[Trainer, RunDir]:
    raw = tiny_recipe(tmp_path / "runs", regularizers=[])
    raw["train"].update(train)
    run = RunDir(tmp_path / "runs" / "tiny")
    trainer = Trainer(validate_recipe(raw, "tiny.toml"))
    trainer.setup()
    trainer.start(run)
    trainer.state.terms.append(Term("exploding", 1.0, 0.0, _NaNAt(step=4)))
    return trainer, run


def test_a_non_finite_loss_stops_naming_the_term_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    trainer, run = _trainer(tmp_path, log_every=1)
    with pytest.raises(RunError, match=r"non-finite loss in term 'exploding' at epoch 2, around step 5"):
        trainer.fit(run)
    state = load_checkpoint(tmp_path / "runs" / "tiny" / "last.pt")
    assert state["epoch"] == 1  # the good end-of-epoch-1 checkpoint is intact


def test_skip_nonfinite_skips_and_counts(tmp_path: Path) -> None:
    trainer, run = _trainer(tmp_path, skip_nonfinite=True)
    report = trainer.fit(run)
    rows = (tmp_path / "runs" / "tiny" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    skipped = [int(r.split(",")[header.index("skipped_steps")]) for r in rows[1:]]
    assert skipped == [0, 1] and report["summary"]["dice"]["all"]["mean"]["n"] == 4


class _Exploit:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > /dev/null",))


def test_a_crafted_pickle_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"model": _Exploit(), "recipe": {}}, fh)
    with pytest.raises(CheckpointError, match="evil.pt: cannot load checkpoint"):
        load_checkpoint(path)
    torch.save({"model": {}, "recipe": {}, "x": _Exploit()}, path)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(path)


def test_corrupt_and_mismatched_checkpoints_are_explained(tmp_path: Path) -> None:
    trainer, run_dir = _trainer(tmp_path)
    trainer.state.terms.pop()
    state = trainer.state.state_dict()
    run = run_dir.path
    save_checkpoint(state, run / "best.pt")
    trained = load_trained(checkpoint_file(run), torch.device("cpu"))
    assert trained.preprocessing.classes == ["background", "RV", "MYO", "LV"] and not trained.model.training
    other = dict(
        state, recipe={**state["recipe"], "backbone": {"name": "unet", "num_classes": 3, "base_channels": 4}}
    )
    save_checkpoint(other, run / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt: does not fit its recipe"):
        load_trained(checkpoint_file(run / "other.pt"), torch.device("cpu"))
    (run / "torn.pt").write_bytes((run / "best.pt").read_bytes()[:500])
    with pytest.raises(CheckpointError, match="torn.pt: cannot load checkpoint"):
        load_trained(checkpoint_file(run / "torn.pt"), torch.device("cpu"))


_scalars = st.one_of(
    st.integers(-5, 500), st.floats(allow_nan=True), st.booleans(), st.text(max_size=8), st.none()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.lists(
        st.sampled_from(
            [
                "name",
                "seed",
                "data",
                "backbone",
                "regularizers",
                "train",
                "optim",
                "augment",
                "weight",
                "crop",
                "radius",
                "layers",
                "labeled_ratio",
                "0",
                "1",
                "epochs",
                "num_classes",
                "x",
            ]
        ),
        min_size=1,
        max_size=3,
    ),
    value=_values,
)
def test_random_recipe_changes_load_or_fail_with_a_recipe_error(
    tmp_path: Path, path: list[str], value: object
) -> None:
    raw = tiny_recipe(tmp_path / "runs")
    node: object = raw
    for key in path[:-1]:
        if isinstance(node, dict):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return
    if isinstance(node, dict):
        node[path[-1]] = value
    with contextlib.suppress(RecipeError):
        validate_recipe(raw, "fuzz.toml")


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=200))
def test_random_toml_and_overrides_load_or_fail_with_a_recipe_error(text: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "r.toml"
        path.write_text(text, encoding="utf-8")
        with contextlib.suppress(RecipeError):
            validate_recipe(read_toml(path), str(path))
        with contextlib.suppress(RecipeError):
            apply_override(tiny_recipe(Path(tmp)), text)


@pytest.fixture(scope="module")
def nifti_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("nii") / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4), np.eye(4)), path)
    return path.read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    gz=st.booleans(),
)
def test_mutated_nifti_files_load_or_fail_with_a_data_error(
    tmp_path: Path, nifti_bytes: bytes, cut: int, flips: list[tuple[int, int]], gz: bool
) -> None:
    import gzip

    data = bytearray(gzip.decompress(nifti_bytes) if not gz else nifti_bytes)
    for position, value in flips:
        if data:
            data[position % len(data)] = value
    data = data[: max(0, len(data) - cut % (len(data) + 1))]
    path = tmp_path / ("m.nii.gz" if gz else "m.nii")
    path.write_bytes(bytes(data))
    try:
        read_volume(path)
        read_volume(path, label=True)
    except DataError:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(1, 100_000))
def test_truncated_checkpoints_fail_with_a_checkpoint_error(tmp_path: Path, cut: int) -> None:
    path = tmp_path / "c.pt"
    if not path.exists():
        save_checkpoint({"model": {"w": torch.ones(64)}, "recipe": {"name": "x"}}, path)
    whole = path.read_bytes()
    torn = tmp_path / "torn.pt"
    torn.write_bytes(whole[: max(0, len(whole) - cut)])
    try:
        load_checkpoint(torn)
    except MiregError as exc:
        assert isinstance(exc, CheckpointError)


def _load_cohort(cache: str) -> int:
    from mireg.data.phantom_dataset import PhantomConfig

    config = PhantomConfig(
        name="phantom",
        patients=4,
        spacing=5.0,
        canvas=48,
        cache_dir=Path(cache),
        val_patients=1,
        test_patients=1,
    )
    return len(config.load().volumes)


def test_runs_started_together_generate_the_cohort_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        counts = pool.map(_load_cohort, [str(tmp_path)] * 3)
    assert counts == [8, 8, 8]  # 4 patients x (ED, ES), every process loads the same store
    stores = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(stores) == 1 and not list(tmp_path.glob(".*partial"))
