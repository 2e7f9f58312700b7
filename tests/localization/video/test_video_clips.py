"""The clip grid and the model input: T = floor((F - clip) / stride) + 1, padding, sampling, normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from localization.errors import DataError
from localization.video.clips import batched, clip_starts, cut_clips, num_steps, sample_indices
from localization.video.transforms import centre_crop, resized_size, to_pathways


@pytest.mark.parametrize(
    ("frames", "clip", "stride", "steps"),
    [(100, 32, 16, 5), (47, 32, 16, 1), (48, 32, 16, 2), (31, 32, 16, 1), (1, 32, 16, 1), (64, 16, 16, 4)],
)
def test_steps_follow_the_formula(frames: int, clip: int, stride: int, steps: int) -> None:
    assert num_steps(frames, clip, stride) == steps
    assert clip_starts(frames, clip, stride).tolist() == [t * stride for t in range(steps)]


def indices(clips: list[np.ndarray]) -> list[list[int]]:
    return [clip[:, 0].tolist() for clip in clips]


def test_clips_hold_the_frames_the_grid_names() -> None:
    frames = (np.array([i]) for i in range(100))
    clips = list(cut_clips(frames, 32, 16, 32))
    assert indices(clips) == [list(range(s, s + 32)) for s in clip_starts(100, 32, 16)]


def test_a_short_video_is_padded_with_its_last_frame_and_an_empty_one_refused() -> None:
    assert indices(list(cut_clips((np.array([i]) for i in range(20)), 32, 16, 32))) == [list(range(20)) + [19] * 12]
    with pytest.raises(DataError, match="no frames decoded"):
        list(cut_clips(iter([]), 32, 16, 32))


def test_the_model_sees_32_frames_spread_over_any_clip_length() -> None:
    assert sample_indices(32, 32).tolist() == list(range(32))
    assert sample_indices(64, 32).tolist() == list(range(0, 64, 2))
    assert sample_indices(16, 32).tolist() == [i // 2 for i in range(32)]
    clips = list(cut_clips((np.array([i]) for i in range(80)), 64, 16, 32))
    assert indices(clips) == [list(range(0, 64, 2)), list(range(16, 80, 2))]
    assert [b.shape for b in batched(iter(clips * 3), 4)] == [(4, 32, 1), (2, 32, 1)]


def test_geometry_and_normalisation() -> None:
    assert resized_size(640, 360, 256) == (455, 256)
    assert resized_size(360, 640, 256) == (256, 455)
    frame = np.arange(6 * 8).reshape(6, 8, 1)
    assert centre_crop(frame, 4)[:, :, 0].tolist() == frame[1:5, 2:6, 0].tolist()
    clips = torch.zeros(2, 32, 4, 4, 3, dtype=torch.uint8)
    clips[:, 4] = 255
    slow, fast = to_pathways(clips)
    assert fast.shape == (2, 3, 32, 4, 4) and slow.shape == (2, 3, 8, 4, 4)
    assert torch.allclose(fast[:, :, 0], torch.tensor(-0.45 / 0.225))
    assert torch.allclose(slow[:, :, 1], torch.tensor(0.55 / 0.225))  # slow frame 1 = fast frame 4
