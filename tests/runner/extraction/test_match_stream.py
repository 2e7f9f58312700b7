"""``--match-stream``: the clip grid read off another stream's lengths (no Ray: only headers are read)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import yaml

from localization.api import InputError
from localization.synthetic import main as synthetic_main
from runner.extraction.folder import settings_record
from runner.extraction.job import match_stream
from runner.extraction.spec import load_extract_file


def test_the_grid_follows_another_streams_lengths(tmp_path: Path) -> None:
    synthetic_main(["--out", str(tmp_path), "--format", "video", "--videos", "12", "--seed", "4"])
    spec = load_extract_file(tmp_path / "extract.yaml", ["clip.fps=null"])  # the other stream: native rate
    other = tmp_path / "i3d"
    other.mkdir()
    for video in (tmp_path / "videos").iterdir():  # an I3D-like stream: 16-frame clips every 8 frames
        with av.open(str(video)) as container:
            frames = container.streams.video[0].frames
        np.save(other / f"{video.stem}.npy", np.zeros(((frames - 16) // 8 + 1, 4), dtype=np.float32))
    said: list[str] = []
    matched = match_stream(spec, other, sorted((tmp_path / "videos").iterdir()), said.append)
    assert (spec.stream.clip.stride, spec.stream.clip.num_frames) == (8, 16)
    assert matched == {"stream": str(other), "matched": 12, "videos": 12}
    assert said == [f"--match-stream {other}: stride 8, clip 16 (matches 12 of 12)"]
    grid = settings_record(spec.stream, "seeded", matched)["grid"]
    assert grid == {"feat_stride": 8, "num_frames": 16, "dim": 2304, "fps": None, "matched": matched}

    for path in other.iterdir():  # lengths no grid explains
        np.save(path, np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(InputError, match=r"--match-stream .*i3d: no clip grid explains the lengths"):
        match_stream(spec, other, sorted((tmp_path / "videos").iterdir()), said.append)


def test_bad_extraction_files_are_refused_with_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "extract.yaml"
    path.write_text(yaml.safe_dump({"videos": "v", "out": "o", "clip": {"stride": 0}}))
    with pytest.raises(InputError, match=r"extract.yaml: clip.stride: must be >= 1, got 0"):
        load_extract_file(path)
    with pytest.raises(InputError, match=r"extract.yaml: frames.crop: must be >= 32"):
        load_extract_file(path, ["clip.stride=16", "frames.crop=16"])
    with pytest.raises(InputError, match=r"extract.yaml: backbone.name"):
        load_extract_file(path, ["clip.stride=16", "backbone.name=slowfast_r18"])
    with pytest.raises(InputError, match=r"extract.yaml: colour: unknown key"):
        load_extract_file(path, ["colour=1"])
