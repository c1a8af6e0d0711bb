"""The store's volume selection: the volumes, and the slices, of a set of patients."""

from __future__ import annotations

import numpy as np
import pytest

from mireg.preprocessing.store import VolumeInfo, VolumeStore


@pytest.fixture
def store() -> VolumeStore:
    # Patients interleaved and partly unlabelled, so store order, patient order and labels all matter.
    layout = [
        ("p1_ED", "p1", 3, True),
        ("p2_ED", "p2", 2, True),
        ("p1_ES", "p1", 1, False),
        ("p3_ED", "p3", 4, False),
        ("p2_ES", "p2", 2, True),
    ]
    volumes, start = [], 0
    for vid, patient, n, labeled in layout:
        volumes.append(
            VolumeInfo(
                id=vid,
                patient=patient,
                phase=vid[-2:],
                group="",
                start=start,
                stop=start + n,
                labeled=labeled,
                spacing=(1.0, 1.0, 1.0),
                shape=(4, 4, n),
            )
        )
        start += n
    images = np.zeros((start, 4, 4), np.float16)
    return VolumeStore("t", ["background", "x"], 1.0, 4, images, images.astype(np.uint8), volumes)


def test_volumes_of_patients_come_in_store_order(store: VolumeStore) -> None:
    assert [v.id for v in store.volumes_of(["p2", "p1"])] == ["p1_ED", "p2_ED", "p2_ES"]
    assert [v.id for v in store.volumes_of(["p2", "p1"], labeled_only=False)] == [
        "p1_ED",
        "p2_ED",
        "p1_ES",
        "p2_ES",
    ]
    assert [v.id for v in store.volumes_of(iter(["p3"]), labeled_only=False)] == ["p3_ED"]
    assert store.volumes_of(["p3"]) == [] and store.volumes_of(["nobody"]) == []


@pytest.mark.parametrize("labeled_only", [True, False])
@pytest.mark.parametrize("patients", [["p1"], ["p2", "p1"], ["p3"], ["p1", "p2", "p3"], []])
def test_slice_indices_are_those_the_trainer_always_used(
    store: VolumeStore, patients: list[str], labeled_only: bool
) -> None:
    # The selection the training loop made before the store had this method, written out.
    ranges = [
        np.arange(v.start, v.stop)
        for v in store.volumes
        if v.patient in set(patients) and (v.labeled or not labeled_only)
    ]
    before = np.concatenate(ranges) if ranges else np.zeros(0, dtype=np.int64)
    index = store.slice_indices(patients, labeled_only=labeled_only)
    assert index.dtype == np.int64 and index.ndim == 1
    np.testing.assert_array_equal(index, before)


def test_slice_indices_of_nothing_is_an_empty_int64_array(store: VolumeStore) -> None:
    assert store.slice_indices(["p3"]).dtype == np.int64 and store.slice_indices(["p3"]).shape == (0,)
    np.testing.assert_array_equal(store.slice_indices(["p1", "p2"]), [0, 1, 2, 3, 4, 10, 11])
    np.testing.assert_array_equal(store.slice_indices(["p1"], labeled_only=False), [0, 1, 2, 5])
