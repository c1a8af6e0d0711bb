"""Cine DICOM series: several frames at each slice position, split into frames in time order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mireg.errors import DataError

from ..helpers import write_dicom_series
from .test_dicom import oblique_affine

pydicom = pytest.importorskip("pydicom", reason="DICOM input needs the clinic extra (pydicom)")

from mireg.io.dicom import find_series, read_frames, read_series  # noqa: E402

SHAPE = (10, 8, 5)  # X, Y, Z of each frame
FRAMES = 4
SERIES = "1.2.826.0.1.3680043.8.498.77"


def phase_volume(t: int) -> np.ndarray:
    return np.random.default_rng(100 + t).integers(0, 4000, SHAPE).astype(np.uint16)


def write_cine(
    folder: Path,
    timing: str,
    frames: int = FRAMES,
    seed: int = 0,
    skip: tuple[int, int] | None = None,
) -> dict[tuple[int, int], Path]:
    """Write a cine series, its frames in reverse time order, under shuffled names.

    Args:
        timing: ``temporal`` (TemporalPositionIdentifier), ``trigger`` (TriggerTime, a little
            different at each slice, as when each slice is its own breath-hold), ``both`` or ``none``.
        skip: ``(frame, slice)`` not to write.

    Returns:
        ``(frame, slice)`` -> its file.
    """
    rng = np.random.default_rng(seed)
    numbers = rng.permutation(frames * SHAPE[2])
    files = {}
    for t in reversed(range(frames)):
        names = [f"IM{numbers[t * SHAPE[2] + z]:04d}" for z in range(SHAPE[2])]
        kw: dict[str, Any] = {}
        if timing in ("trigger", "both"):
            kw["trigger_time"] = [t * 45.5 + 0.7 * z for z in range(SHAPE[2])]
        if timing in ("temporal", "both"):
            kw["temporal_position"] = t + 1
        paths = write_dicom_series(
            folder,
            phase_volume(t),
            oblique_affine(),
            names=names,
            series_uid=SERIES,
            **kw,
        )
        for z, path in enumerate(paths):
            files[t, z] = path
    if skip is not None:
        files.pop(skip).unlink()
    return files


def frames_of(folder: Path) -> list[Any]:
    found = find_series(folder)
    assert list(found) == [SERIES]
    return read_frames(folder, SERIES, found[SERIES])


@pytest.mark.parametrize("timing", ["temporal", "trigger", "both"])
def test_a_cine_series_is_read_as_frames_in_time_order(tmp_path: Path, timing: str) -> None:
    files = write_cine(tmp_path / "cine", timing)
    frames = frames_of(tmp_path / "cine")
    assert len(frames) == FRAMES
    single = read_series(tmp_path / "frame", *_one_frame(tmp_path / "frame"))
    for t, frame in enumerate(frames):
        assert (frame.frame, frame.frames, frame.uid) == (t, FRAMES, SERIES)
        assert frame.files == tuple(files[t, z] for z in range(SHAPE[2]))
        assert frame.shape == SHAPE
        np.testing.assert_allclose(frame.affine, single.affine, atol=1e-6)
        np.testing.assert_array_equal(frame.volume(), phase_volume(t).astype(np.float32))
        if timing == "temporal":
            assert frame.trigger_time is None
        else:
            assert frame.trigger_time == pytest.approx(t * 45.5 + 0.7 * 2)  # the median slice's


def _one_frame(folder: Path) -> tuple[str, list[Any]]:
    write_dicom_series(folder, phase_volume(0), oblique_affine(), series_uid="1.2.3")
    found = find_series(folder)
    return "1.2.3", found["1.2.3"]


def test_a_plain_series_is_one_frame_as_read_series_gives_it(tmp_path: Path) -> None:
    write_dicom_series(
        tmp_path / "plain", phase_volume(0), oblique_affine(), series_uid=SERIES, trigger_time=40.0
    )
    (frame,) = frames_of(tmp_path / "plain")
    found = find_series(tmp_path / "plain")
    expected = read_series(tmp_path / "plain", SERIES, found[SERIES])
    for field in ("folder", "uid", "files", "shape", "spacing", "description", "modality"):
        assert getattr(frame, field) == getattr(expected, field)
    np.testing.assert_array_equal(frame.affine, expected.affine)
    assert (frame.frame, frame.frames, frame.trigger_time) == (0, 1, None)


def test_temporal_positions_that_repeat_give_way_to_trigger_times(tmp_path: Path) -> None:
    files = write_cine(tmp_path / "cine", "trigger")
    for path in files.values():  # some scanners write 1 everywhere
        ds = pydicom.dcmread(path)
        ds.TemporalPositionIdentifier = 1
        ds.save_as(path)
    frames = frames_of(tmp_path / "cine")
    assert [f.files[0] for f in frames] == [files[t, 0] for t in range(FRAMES)]


@pytest.mark.parametrize("timing", ["temporal", "trigger"])
def test_a_frame_missing_a_slice_is_named(tmp_path: Path, timing: str) -> None:
    files = write_cine(tmp_path / "cine", timing, skip=(2, 3))
    label = "TemporalPositionIdentifier 3" if timing == "temporal" else r"TriggerTime about 92\.05 ms"
    with pytest.raises(
        DataError,
        match=rf"cine: frame 3 \({label}\) of series {SERIES} has no slice at the position of "
        rf"{files[0, 3].name} \(frame 1\), which 3 of its 4 frames have",
    ):
        frames_of(tmp_path / "cine")


@pytest.mark.parametrize(
    "timing, where",
    [("temporal", "new position"), ("trigger", "new position"), ("trigger", "taken position")],
)
def test_an_extra_slice_is_named(tmp_path: Path, timing: str, where: str) -> None:
    files = write_cine(tmp_path / "cine", timing)
    # One more file in the second frame: beyond the last slice, or at the first slice's position.
    kw: dict[str, Any] = {"temporal_position": 2} if timing == "temporal" else {"trigger_time": 30.0}
    stack = np.concatenate([phase_volume(9), phase_volume(9)[:, :, :1]], axis=2)
    paths = write_dicom_series(tmp_path / "scratch", stack, oblique_affine(), series_uid=SERIES, **kw)
    paths[SHAPE[2] if where == "new position" else 0].rename(tmp_path / "cine" / "extra.dcm")
    if where == "new position":
        label = "TemporalPositionIdentifier 2" if timing == "temporal" else r"TriggerTime about 46\.9 ms"
        message = r"only 1 of its 4 frames have a slice at this position"
    else:
        label = r"TriggerTime about 47\.25 ms"  # 30 ms is nearest the second frame's time
        message = rf"at the position of {files[1, 0].name}: 5 files there, 4 at the series' other positions"
    with pytest.raises(
        DataError,
        match=rf"cine/extra\.dcm: an extra slice in frame 2 \({label}\) of series {SERIES}.*{message}",
    ):
        frames_of(tmp_path / "cine")


def test_positions_shared_without_timing_are_refused(tmp_path: Path) -> None:
    write_cine(tmp_path / "cine", "none", frames=2)
    with pytest.raises(
        DataError,
        match=r"IM\d{4}: at the same position along the slice normal as IM\d{4}, and neither "
        r"TemporalPositionIdentifier \(0020,0100\) nor TriggerTime \(0018,1060\) tells the frames of "
        rf"series {SERIES} apart \(TemporalPositionIdentifier is missing from IM\d{{4}}; TriggerTime is "
        r"missing from IM\d{4}\)",
    ) as info:
        frames_of(tmp_path / "cine")
    assert info.value.hint is not None and "cine series" in info.value.hint


def test_equal_timings_at_one_position_are_refused(tmp_path: Path) -> None:
    files = write_cine(tmp_path / "cine", "both", frames=2)
    for t in range(2):
        ds = pydicom.dcmread(files[t, 1])
        ds.TemporalPositionIdentifier, ds.TriggerTime = 1, "12.5"
        ds.save_as(files[t, 1])
    with pytest.raises(
        DataError,
        match=r"neither .* tells the frames of series .* apart \(TemporalPositionIdentifier is 1 in both "
        r"IM\d{4} and IM\d{4}; TriggerTime is 12\.5 ms in both IM\d{4} and IM\d{4}\)",
    ):
        frames_of(tmp_path / "cine")


def test_the_seg_of_one_frame_references_exactly_its_instances(tmp_path: Path) -> None:
    hd = pytest.importorskip("highdicom", reason="DICOM SEG output needs the clinic extra (highdicom)")
    from mireg.io.dicom_seg import write_segmentation

    write_cine(tmp_path / "cine", "trigger")
    frames = frames_of(tmp_path / "cine")
    frame = frames[2]
    datasets = frame.datasets()
    labels = np.zeros(SHAPE, np.uint8)
    labels[2:7, 1:5, :] = 1
    labels[7:9, 5:8, 1:4] = 2
    out = tmp_path / "out" / "cine_frame03.dcm"
    write_segmentation(out, labels, frame, datasets, ["background", "LV", "MYO"], "tiny", "1")
    seg = hd.seg.segread(out)
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == SERIES
    uids = [ds.SOPInstanceUID for ds in datasets]
    assert sorted(i.ReferencedSOPInstanceUID for i in referenced.ReferencedInstanceSequence) == sorted(uids)
    others = {pydicom.dcmread(p).SOPInstanceUID for f in frames if f is not frame for p in f.files}
    assert not others & {i.ReferencedSOPInstanceUID for i in seg.SourceImageSequence}
    per_instance = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    np.testing.assert_array_equal(per_instance.transpose(2, 1, 0), labels)
    assert seg.NumberOfFrames == SHAPE[2] + 3  # LV on every slice, MYO on three
