"""Small real encoded videos whose pictures say which frame they are and which action is happening.

``generate_videos(DIR, seed, videos)`` (``python -m localization.synthetic --format video``) writes
``DIR/videos/<video_id>.mp4`` (24, 25 or 30 fps, 5-10 s, 80 x 64), ``DIR/annotations_gt.json``
(FineAction's layout, 8 classes, clean), ``DIR/extract.yaml`` (for ``python -m runner.extract``: the
seeded R50 at 32 x 32, 32-frame clips every 16 frames at 30 fps, into ``DIR/features/slowfast``) and
``DIR/config.yaml`` (a run config reading that one stream), so videos -> features -> training needs
no download.

Each frame's centre square carries its index as a 4 x 3 grid of black / white cells (12 bits, read
back by :func:`read_index` after any short-side resize and centre crop), so a test can tell exactly
which source frames a clip holds. The bottom quarter of the square is an "event" band: grey when
nothing happens, the class's colour during an action, so even untrained SlowFast weights give
features that tell actions apart. Written with PyAV (H.264 in MP4), the decoder's own library.
"""

from __future__ import annotations

import dataclasses
import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import yaml

from localization.data.synthetic import (
    CLASS_NAMES,
    FEAT_STRIDE,
    FPS_CHOICES,
    SyntheticVideo,
    annotations_of,
    place_intervals,
    write_config,
)
from localization.video.settings import ClipSettings, FrameSettings, StreamSettings
from localization.video.slowfast import FEATURE_DIM

CODE_COLUMNS, CODE_ROWS = 4, 3
MAX_FRAMES = 2 ** (CODE_COLUMNS * CODE_ROWS)
WIDTH, HEIGHT = 80, 64  # landscape, so the short-side resize and the centre crop both matter
IDLE = (128, 128, 128)
STEPS_RANGE = (8, 18)  # steps of 32-frame clips every 16 frames at 30 fps: 5-10 s of video
# frames at 30 fps past the last clip's end: few, so that the clips cover ~all of a short video (as the
# remainder of a long one is negligible) and the loader's coverage check sees ~1
TAIL_FRAMES = 3
ACTION_STEPS = (2, 8)  # action length in 16-frame steps
# what the written extraction file extracts: the seeded R50 (no download) on small frames
EXTRACTION = StreamSettings(clip=ClipSettings(num_frames=32, stride=16, fps=30.0), frames=FrameSettings(32, 32))


def class_colour(label: int) -> tuple[int, int, int]:
    """A saturated colour per class (8 distinct: the corners of the RGB cube but black, white, and grey)."""
    corners = [(r, g, b) for r in (32, 224) for g in (32, 224) for b in (32, 224)]
    ramp = [(224, 96, 32), (32, 160, 224)]
    palette = [c for c in corners if len(set(c)) > 1] + ramp
    return palette[label % len(palette)]


def code_cells(side: int) -> list[tuple[int, int, int, int]]:
    """(y0, y1, x0, x1) of each bit's cell in a square of ``side`` pixels, bit 0 first."""
    code_height = side * 3 // 4
    cells = []
    for bit in range(CODE_COLUMNS * CODE_ROWS):
        row, col = divmod(bit, CODE_COLUMNS)
        y0, y1 = row * code_height // CODE_ROWS, (row + 1) * code_height // CODE_ROWS
        cells.append((y0, y1, col * side // CODE_COLUMNS, (col + 1) * side // CODE_COLUMNS))
    return cells


def picture(index: int, label: int | None, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """uint8 RGB ``[height, width, 3]``: the index code over the event band, in the centre square."""
    image = np.full((height, width, 3), 64, dtype=np.uint8)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image[top : top + side, left : left + side]
    for bit, (y0, y1, x0, x1) in enumerate(code_cells(side)):
        square[y0:y1, x0:x1] = 255 if (index >> bit) & 1 else 0
    square[side * 3 // 4 :] = IDLE if label is None else class_colour(label)
    return image


def read_index(frame: np.ndarray) -> int:
    """The index coded in a square ``[S, S, 3]`` frame (the centre crop of :func:`picture`)."""
    gray = frame.mean(axis=2)
    index = 0
    for bit, (y0, y1, x0, x1) in enumerate(code_cells(frame.shape[0])):
        cy, cx, hy, hx = (y0 + y1) // 2, (x0 + x1) // 2, max(1, (y1 - y0) // 4), max(1, (x1 - x0) // 4)
        if gray[cy - hy : cy + hy, cx - hx : cx + hx].mean() > 128:
            index |= 1 << bit
    return index


def write_video(path: Path, num_frames: int, fps: float, actions: np.ndarray, labels: np.ndarray) -> None:
    """Encode ``num_frames`` pictures at ``fps``; frames inside ``actions[k]`` = [start, end) show ``labels[k]``."""
    if num_frames > MAX_FRAMES:
        raise ValueError(f"at most {MAX_FRAMES} frames can be coded, got {num_frames}")
    frame_label: list[int | None] = [None] * num_frames
    for (start, end), label in zip(actions.tolist(), labels.tolist(), strict=True):
        frame_label[start:end] = [int(label)] * (min(end, num_frames) - start)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "10"}
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(picture(index, frame_label[index]), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def sample_clip_video(rng: np.random.Generator, video_id: str, subset: str) -> SyntheticVideo:
    """A short video: random length and fps, 1-3 labelled actions apart from each other."""
    fps = float(rng.choice(FPS_CHOICES))
    steps = int(rng.integers(STEPS_RANGE[0], STEPS_RANGE[1], endpoint=True))
    frames_30 = (steps - 1) * FEAT_STRIDE + 32 + int(rng.integers(0, TAIL_FRAMES, endpoint=True))
    num_frames = round(frames_30 * fps / 30.0)
    steps_native = num_frames // FEAT_STRIDE  # >= 7: actions of up to steps - 2 steps fit
    lengths = (ACTION_STEPS[0], min(ACTION_STEPS[1], steps_native - 2))
    actions = place_intervals(rng, steps_native, int(rng.integers(1, 3, endpoint=True)), [], lengths)
    return SyntheticVideo(
        video_id=video_id,
        subset=subset,
        fps=fps,
        num_frames=num_frames,
        actions=np.array(actions, dtype=np.int64).reshape(-1, 2),
        labels=rng.integers(0, len(CLASS_NAMES), size=len(actions)),
        distractors=np.zeros((0, 2), dtype=np.int64),
        distractor_groups=np.zeros(0, dtype=np.int64),
    )


def extraction_file(out_dir: Path) -> dict:
    """The ``python -m runner.extract`` file of the synthetic videos (paths absolute, tracking default)."""
    return {
        "videos": str(out_dir / "videos"),
        "out": str(out_dir / "features" / "slowfast"),
        **dataclasses.asdict(EXTRACTION),
        "resources": {"gpu": 0, "cpu": 2},
    }


def generate_videos(out_dir: Path, seed: int = 0, videos: int = 32) -> Path:
    """Write the encoded videos, annotations, extraction file and run config (3/4 training); return the config."""
    rng = np.random.default_rng(seed)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    num_val = max(videos // 4, 1)
    database = {}
    for i in range(videos):
        video = sample_clip_video(rng, f"v_{i:08d}", "validation" if i >= videos - num_val else "training")
        write_video(
            out_dir / "videos" / f"{video.video_id}.mp4", video.num_frames, video.fps, video.actions, video.labels
        )
        database[video.video_id] = {
            "subset": video.subset,
            "duration": video.duration,
            "fps": video.fps,
            "annotations": annotations_of(video),
        }
    (out_dir / "annotations_gt.json").write_text(json.dumps({"version": "synthetic-video", "database": database}))
    (out_dir / "extract.yaml").write_text(yaml.safe_dump(extraction_file(out_dir), sort_keys=False))
    stream = {
        "dir": str(out_dir / "features" / "slowfast"),
        "dim": FEATURE_DIM,
        "feat_stride": EXTRACTION.clip.stride,
        "num_frames": EXTRACTION.clip.num_frames,
    }
    # features extracted at 30 fps whatever the video's own rate: steps are counted in 30-fps frames
    return write_config(out_dir, streams={"slowfast": stream}, default_fps=EXTRACTION.clip.fps, force_default_fps=True)
