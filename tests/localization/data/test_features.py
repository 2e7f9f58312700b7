"""Feature streams: checks, alignment (equal, trim, resample), concatenation order, layouts, cache."""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import numpy as np
import pytest

from localization.data.features import FeatureReader, resample_to_grid
from localization.data.timegrid import Grid
from localization.errors import DataError

DB = {"v": {"subset": "training", "duration": 10.0, "annotations": []}}


def timed(video_id: str, duration: float = 10.0, fps: float = 30.0) -> SimpleNamespace:
    """What the reader needs of a video (a VideoAnnotation has these fields)."""
    return SimpleNamespace(video_id=video_id, duration=duration, fps=fps)


V, W = timed("v"), timed("w")


def ramp(steps: int, dim: int, base: float = 0.0) -> np.ndarray:
    """(steps, dim) with value base + 10*t + c, so every entry says where it came from."""
    return (base + 10.0 * np.arange(steps)[:, None] + np.arange(dim)[None, :]).astype(np.float32)


def test_equal_lengths_concatenate_in_features_order(tiny_data):
    a, b = ramp(6, 3), ramp(6, 2, base=1000)
    cfg = tiny_data(DB, {"a": {"v": a}, "b": {"v": b}}, features=["b", "a"])
    reader = FeatureReader(cfg)
    feats = reader.load(V)
    assert feats.shape == (5, 6) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats, np.concatenate([b.T, a.T]))  # b first, as data.features says
    assert reader.dim == 5 and reader.dims == {"b": 2, "a": 3}
    layout = reader.probe(V)
    assert layout.grid == Grid(16, 32)  # the grid of the first stream, b
    assert layout.length == layout.aligned == 6 and layout.steps == {"b": 6, "a": 6} and not layout.resample


def test_lengths_within_tolerance_are_trimmed_to_the_shortest(tiny_data):
    a, b = ramp(10, 3), ramp(8, 2, base=1000)
    cfg = tiny_data(DB, {"a": {"v": a}, "b": {"v": b}}, align_tolerance=2)
    reader = FeatureReader(cfg)
    assert reader.probe(V).length == 8
    np.testing.assert_array_equal(reader.load(V), np.concatenate([a[:8].T, b.T]))
    np.testing.assert_array_equal(reader.load(V, 3, 7), np.concatenate([a[3:7].T, b[3:7].T]))


def test_larger_gaps_resample_onto_the_first_grid_and_warn_once(tiny_data, caplog):
    # b has stride 32 and 16-frame clips: its step j is centred at frame 32j + 8, a's step i at 16i + 8
    streams = {"a": {"dim": 3, "num_frames": 16}, "b": {"dim": 2, "num_frames": 16, "feat_stride": 32}}
    a, b = ramp(10, 3), ramp(5, 2, base=1000)
    cfg = tiny_data(
        {**DB, "w": DB["v"]}, {"a": {"v": a, "w": a}, "b": {"v": b, "w": b}}, streams=streams, align_tolerance=2
    )
    reader = FeatureReader(cfg)
    with caplog.at_level(logging.WARNING, logger="localization.data.features"):
        assert reader.probe(V).length == 10
        feats = reader.load(V)
        reader.load(W)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "resampling the other streams onto the a grid" in warnings[0]
    assert "a 10, b 5" in warnings[0]
    np.testing.assert_array_equal(feats[:3], a.T)
    # b at a's step i sits at b-index i/2: 1000 + 10 * i/2 + c, clamped to b's last step (index 4)
    position = np.minimum(np.arange(10) / 2, 4)
    np.testing.assert_allclose(feats[3:], 1000 + 10 * position[None, :] + np.arange(2)[:, None], rtol=1e-6)
    np.testing.assert_array_equal(reader.load(V, 2, 9), feats[:, 2:9])


def test_resample_to_grid_uses_each_streams_clip_centres():
    src = Grid(stride=16, clip=32)  # step j centred at 16j + 16
    dst = Grid(stride=16, clip=16)  # step i centred at 16i + 8
    values = np.array([[0.0], [10.0], [20.0]], dtype=np.float32)
    out = resample_to_grid(values, src, dst, np.arange(4))
    # source index of dst step i = (16i + 8 - 16) / 16 = i - 0.5 -> clamp, 5, 15, 20 (clamped)
    np.testing.assert_allclose(out[:, 0], [0.0, 5.0, 15.0, 20.0])


def test_layout_ct_and_float16(tiny_data):
    streams = {"a": {"dim": 3, "num_frames": 16, "layout": "ct"}, "b": {"dim": 2, "num_frames": 16}}
    a = ramp(7, 3).T.astype(np.float16)  # stored [C, T] in half precision
    b = ramp(7, 2, base=1000).astype(np.float16)
    reader = FeatureReader(tiny_data(DB, {"a": {"v": a}, "b": {"v": b}}, streams=streams))
    feats = reader.load(V)
    assert feats.dtype == np.float32 and feats.shape == (5, 7)
    np.testing.assert_array_equal(feats, np.concatenate([a.astype(np.float32), b.T.astype(np.float32)]))
    np.testing.assert_array_equal(reader.load(V, 5), feats[:, 5:])


def test_cache_keeps_features_and_hands_out_copies(tiny_data, tmp_path):
    a, b = ramp(6, 3), ramp(6, 2)
    reader = FeatureReader(tiny_data(DB, {"a": {"v": a}, "b": {"v": b}}, cache_features=True))
    first = reader.load(V)
    first[:] = -1  # a caller writing into its array must not corrupt the cache
    for name in ("a", "b"):
        reader.path(name, "v").unlink()  # later loads must come from memory
    np.testing.assert_array_equal(reader.load(V), np.concatenate([a.T, b.T]))
    np.testing.assert_array_equal(reader.load(V, 1, 3), np.concatenate([a[1:3].T, b[1:3].T]))


def test_long_video_crop_reads_the_window(tiny_data):
    a = np.random.default_rng(0).standard_normal((14000, 3)).astype(np.float32)
    b = np.random.default_rng(1).standard_normal((13999, 2)).astype(np.float32)
    reader = FeatureReader(tiny_data(DB, {"a": {"v": a}, "b": {"v": b}}))
    assert reader.probe(V).length == 13999
    window = reader.load(V, 11000, 11000 + 2304)
    np.testing.assert_array_equal(window, np.concatenate([a[11000:13304].T, b[11000:13304].T]))


def test_missing_directory(tiny_data):
    cfg = tiny_data(DB)
    cfg.streams["b"].dir = "/nonexistent/slowfast"
    with pytest.raises(
        DataError,
        match=r"^/nonexistent/slowfast: feature directory not found "
        r"\(data\.streams\.b\.dir\)$",
    ):
        FeatureReader(cfg)


def test_missing_file(tiny_data):
    reader = FeatureReader(tiny_data(DB, {"a": {"v": ramp(4, 3)}}))
    assert not reader.has("v")
    path = re.escape(str(reader.path("b", "v")))
    with pytest.raises(
        DataError,
        match=rf"^{path}: feature file not found \(data\.streams\.b\.dir; "
        r"set data\.on_missing=skip",
    ):
        reader.probe(V)
    with pytest.raises(DataError, match=rf"^{path}: feature file not found"):
        reader.load(V)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (
            np.zeros((5, 4), np.float32),
            r"expected dim 2 \(data\.streams\.b\.dim\), got 4 \(shape \(5, 4\), "
            r"data\.streams\.b\.layout=tc\)",
        ),
        # a [C, T] file read as tc
        (np.zeros((2, 5), np.float32), r"expected dim 2 \(data\.streams\.b\.dim\), got 5 \(shape \(2, 5\), .*"),
        (np.zeros(10, np.float32), r"expected a 2-D array \(data\.streams\.b\.layout\), got shape \(10,\)"),
        (np.zeros((5, 2), np.int64), r"expected float16, float32 or float64 \(data\.streams\.b\), got int64"),
        (np.zeros((0, 2), np.float32), r"no time steps \(data\.streams\.b\)"),
    ],
)
def test_bad_arrays_name_the_file_and_field(tiny_data, array, message):
    reader = FeatureReader(tiny_data(DB, {"a": {"v": ramp(5, 3)}, "b": {"v": array}}))
    path = re.escape(str(reader.path("b", "v")))
    with pytest.raises(DataError, match=rf"^{path}: {message}$"):
        reader.probe(V)


@pytest.mark.parametrize("content", [b"not a numpy file at all", b""])
def test_unreadable_file(tiny_data, content):
    reader = FeatureReader(tiny_data(DB, {"a": {"v": ramp(5, 3)}}))
    reader.path("b", "v").write_bytes(content)
    path = re.escape(str(reader.path("b", "v")))
    with pytest.raises(DataError, match=rf"^{path}: cannot read as \.npy \(data\.streams\.b\): "):
        reader.probe(V)


def test_truncated_file(tiny_data):
    reader = FeatureReader(tiny_data(DB, {"a": {"v": ramp(5, 3)}, "b": {"v": ramp(50, 2)}}))
    path = reader.path("b", "v")
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: cannot read as \.npy"):
        reader.probe(V)
