"""Streamed decoding with PyAV on real encoded videos whose pictures carry their frame index."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from localization.video.clips import clip_starts, num_steps
from localization.video.decoding import VideoError, VideoReader
from localization.video.extract import ClipEncoder, ClipStream, extract_video
from localization.video.settings import BackboneSettings, ClipSettings, FrameSettings, StreamSettings
from localization.video.synthetic import read_index, write_video

SMALL = FrameSettings(short_side=32, crop=32)


def video(tmp_path: Path, frames: int, fps: float) -> Path:
    path = tmp_path / f"v{frames}_{fps:g}.mp4"
    write_video(path, frames, fps, np.array([[5, 20]]), np.array([2]))
    return path


def test_every_frame_in_order_at_the_native_rate(tmp_path: Path) -> None:
    reader = VideoReader(video(tmp_path, 70, 25.0), FrameSettings(short_side=48, crop=40), None)
    frames = list(reader)
    assert reader.native_fps == reader.fps == 25.0 and reader.frames == 70
    assert {f.shape for f in frames} == {(40, 40, 3)}
    assert [read_index(f) for f in frames] == list(range(70))


@pytest.mark.parametrize(("native", "target"), [(25.0, 30.0), (30.0, 15.0), (24.0, 24.0)])
def test_resampling_shows_the_frame_on_screen_at_each_instant(tmp_path: Path, native: float, target: float) -> None:
    reader = VideoReader(video(tmp_path, 60, native), SMALL, target)
    shown = [read_index(f) for f in reader]
    assert len(shown) == round(60 / native * target)
    assert shown == [int(k * native // target) for k in range(len(shown))]


def test_clip_boundaries_are_the_frames_the_formula_names(tmp_path: Path) -> None:
    settings = StreamSettings(clip=ClipSettings(num_frames=32, stride=16, fps=None), frames=SMALL)
    stream = ClipStream(video(tmp_path, 90, 30.0), settings, batch_size=2)
    clips = np.concatenate(list(stream))
    assert stream.info().steps == num_steps(90, 32, 16) == len(clips) == 4
    for clip, start in zip(clips, clip_starts(90, 32, 16), strict=True):
        assert [read_index(f) for f in clip] == list(range(start, start + 32))


def test_broken_files_are_refused_with_their_reason(tmp_path: Path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(VideoError, match=r"empty.mp4: empty file"):
        VideoReader(tmp_path / "empty.mp4", SMALL, None)
    (tmp_path / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(VideoError, match=r"noise.mp4: unreadable"):
        VideoReader(tmp_path / "noise.mp4", SMALL, None)
    with av.open(str(tmp_path / "sound.wav"), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 800), dtype=np.int16), format="s16", layout="mono")
        samples.rate = 8000
        container.mux(stream.encode(samples))
        container.mux(stream.encode(None))
    with pytest.raises(VideoError, match=r"sound.wav: no video stream"):
        VideoReader(tmp_path / "sound.wav", SMALL, None)


def test_one_video_to_features(tmp_path: Path) -> None:
    settings = StreamSettings(clip=ClipSettings(fps=30.0), frames=SMALL, backbone=BackboneSettings("slowfast_r50"))
    features, info = extract_video(video(tmp_path, 20, 24.0), settings, ClipEncoder(settings.backbone), batch_size=4)
    assert (info.frames, info.native_fps, info.steps) == (25, 24.0, 1)  # shorter than a clip: padded, one step
    assert features.shape == (1, 2304) and features.dtype == np.float16 and np.isfinite(features).all()
