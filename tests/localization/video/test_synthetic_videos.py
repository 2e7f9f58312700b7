"""``python -m localization.synthetic --format video``: encoded videos, annotations, extraction file, config;
and the grid fit that matches another stream's lengths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from localization.config.loading import load_config
from localization.synthetic import main as synthetic_main
from localization.video.clips import num_steps
from localization.video.decoding import VideoReader
from localization.video.grid import fit_grid, header_frames
from localization.video.settings import FrameSettings
from localization.video.synthetic import class_colour, read_index


def test_the_video_layout_is_a_dataset_from_videos(tmp_path: Path, capsys) -> None:
    assert synthetic_main(["--out", str(tmp_path / "d"), "--format", "video", "--videos", "4", "--seed", "1"]) == 0
    root = tmp_path / "d"
    assert capsys.readouterr().out.strip() == str(root / "config.yaml")
    database = json.loads((root / "annotations_gt.json").read_text())["database"]
    assert sorted(database) == [f"v_{i:08d}" for i in range(4)]
    extract = yaml.safe_load((root / "extract.yaml").read_text())
    assert extract["videos"] == str(root / "videos") and extract["clip"] == {
        "num_frames": 32,
        "stride": 16,
        "fps": 30.0,
    }
    cfg = load_config(root / "config.yaml")
    assert cfg.data.features == ["slowfast"] and cfg.data.force_default_fps and cfg.data.default_fps == 30.0
    assert cfg.data.streams["slowfast"].dir == extract["out"] and cfg.data.streams["slowfast"].dim == 2304
    for video_id, entry in database.items():
        reader = VideoReader(root / "videos" / f"{video_id}.mp4", FrameSettings(64, 64), None)
        frames = list(reader)
        assert reader.native_fps == entry["fps"] and len(frames) == round(entry["duration"] * entry["fps"])
        assert [read_index(f) for f in frames] == list(range(len(frames)))
        for ann in entry["annotations"]:  # the event band shows the class's colour inside each action
            middle = frames[round(sum(ann["segment"]) / 2 * entry["fps"])]
            assert np.abs(middle[56:].mean(axis=(0, 1)) - class_colour(ann["label_id"])).max() < 12


def test_the_grid_of_another_stream_is_read_off_its_lengths(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(100, 3000, size=200)
    fit = fit_grid(frames, np.array([num_steps(f, 16, 8) for f in frames]))
    assert (fit.stride, fit.clip, fit.matched, fit.videos) == (8, 16, 200, 200)
    synthetic_main(["--out", str(tmp_path / "d"), "--format", "video", "--videos", "2"])
    for video in sorted((tmp_path / "d" / "videos").iterdir()):
        reader = VideoReader(video, FrameSettings(32, 32), None)
        decoded = sum(1 for _ in reader)
        assert header_frames(video, None) == decoded
        assert abs(header_frames(video, 30.0) - decoded * 30.0 / reader.native_fps) <= 1
