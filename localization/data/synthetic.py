"""A small synthetic FineAction look-alike: annotations, two feature streams and a run config.

``generate(DIR, seed, videos, layout)`` (the command ``python -m localization.synthetic``) writes, in seconds:

- ``DIR/annotations_gt.json``: FineAction layout, subsets "training" and "validation", fps 24/25/30
  per video, 8 classes, plus a few injected dirty annotations of every kind in both subsets
  (counted in ``DIR/injected_dirty.json``);
- ``DIR/features/i3d/<vid>.npy`` [T, 32] (16-frame clips) and ``DIR/features/slowfast/<vid>.npy``
  [T-1, 48] (32-frame clips, one step fewer, as real SlowFast), both stride 16, float32;
- ``DIR/config.yaml``: a complete run config for a small, fast model.

``--format`` writes the same dataset (same videos, actions and feature values) in one of the
layouts of the public FineAction releases, with the
config that reads it:

- ``native`` (default): the above;
- ``official``: the annotation JSON as the official release is reported to be: no ``label_id``
  (classes become the sorted labels), one label with a trailing space, durations as strings;
- ``pt``: i3d as ``<vid>_spatial_pool_feature_5.pt`` tensors (InternVideo2's naming), slowfast as
  ``<vid>.pth`` dicts ``{"feats": tensor}``;
- ``npz``: i3d as ``<vid>.npz`` holding several arrays, the features under ``feats``; slowfast
  as ``<vid>.npz`` holding only one (unnamed) array;
- ``fixed``: both streams resized to ``FIXED_LENGTH`` steps per video (like ``i3d_feature_100``),
  read with ``feat_stride: auto``.

Why it is built this way: class c = (group g, subtype h), 4 x 2. The i3d-like stream carries the
group and onset/offset markers, the slowfast-like stream carries action presence and the subtype,
so either stream alone localizes but confuses classes, and only their concatenation names them.
Each snippet's signal is about as strong as its noise, and the i3d stream also holds
"distractors" (group signal without markers, absent from slowfast), so a per-snippet threshold is
weak and temporal context pays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from localization.config.loading import load_config
from localization.data.features import resample_to_grid
from localization.data.timegrid import Grid, auto_grid
from localization.errors import InputError

GROUPS = ("jump", "throw", "swing", "spin")
SUBTYPES = ("forward", "backward")
CLASS_NAMES = [f"{g}_{h}" for g in GROUPS for h in SUBTYPES]  # label id = 2 * group + subtype
FPS_CHOICES = (24.0, 25.0, 30.0)
FEAT_STRIDE = 16
STREAMS = {"i3d": {"dim": 32, "num_frames": 16}, "slowfast": {"dim": 48, "num_frames": 32}}
STEPS_RANGE = (64, 256)  # i3d feature steps per video
ACTION_STEPS = (2, 40)  # action length in feature steps
MAX_SEQ_LEN = 256
FORMATS = ("native", "official", "pt", "npz", "fixed")
FIXED_LENGTH = 100  # steps per video in the fixed-length layout, as the official i3d_feature_100
TRAILING_SPACE_CLASS = CLASS_NAMES[-1]  # spelled with a trailing space in the official layout

# signal strengths, in units of the per-dimension noise std (1.0)
GROUP_AMPLITUDE = 1.6  # i3d: along the group direction, times clip coverage
MARKER_AMPLITUDE = 2.0  # i3d: onset / offset bumps
MARKER_WIDTH = 12.0  # frames (std of the bump)
PRESENCE_AMPLITUDE = 1.4  # slowfast: "an action is happening"
SUBTYPE_AMPLITUDE = 1.6  # slowfast: along the subtype direction


@dataclass
class SyntheticVideo:
    """One video: frames, fps and its actions as frame intervals."""

    video_id: str
    subset: str
    fps: float
    num_frames: int
    actions: np.ndarray  # (K, 2) int frames [start, end)
    labels: np.ndarray  # (K,) int64 class ids
    distractors: np.ndarray  # (D, 2) int frames: group signal only, in i3d, unlabelled
    distractor_groups: np.ndarray  # (D,) int64

    @property
    def duration(self) -> float:
        return round(self.num_frames / self.fps, 3)


@dataclass
class Directions:
    """Fixed unit directions of every signal, shared by all videos (what a model must learn)."""

    group: np.ndarray  # (4, 32) i3d
    onset: np.ndarray  # (32,)
    offset: np.ndarray  # (32,)
    presence: np.ndarray  # (48,) slowfast
    subtype: np.ndarray  # (2, 48)


def make_directions(rng: np.random.Generator) -> Directions:
    """Orthonormal directions inside each stream, so signals do not leak into each other."""
    i3d, _ = np.linalg.qr(rng.standard_normal((STREAMS["i3d"]["dim"], len(GROUPS) + 2)))  # (32, 6)
    slowfast, _ = np.linalg.qr(rng.standard_normal((STREAMS["slowfast"]["dim"], 1 + len(SUBTYPES))))
    groups = len(GROUPS)
    return Directions(
        group=i3d[:, :groups].T,
        onset=i3d[:, groups],
        offset=i3d[:, groups + 1],
        presence=slowfast[:, 0],
        subtype=slowfast[:, 1:].T,
    )


def place_intervals(
    rng: np.random.Generator, steps: int, count: int, taken: list[tuple[int, int]], length_steps: tuple[int, int]
) -> list[tuple[int, int]]:
    """Up to ``count`` random frame intervals inside ``steps`` clips, apart from ``taken`` and each other."""
    placed: list[tuple[int, int]] = []
    for _ in range(count * 20):
        if len(placed) == count:
            break
        length = int(rng.integers(length_steps[0], length_steps[1], endpoint=True)) * FEAT_STRIDE
        length += int(rng.integers(-FEAT_STRIDE // 2, FEAT_STRIDE // 2))  # not snapped to the grid
        start = int(rng.integers(0, steps * FEAT_STRIDE - length))
        gap = 2 * FEAT_STRIDE
        if all(start + length + gap <= s or start >= e + gap for s, e in taken + placed):
            placed.append((start, start + length))
    return sorted(placed)


def sample_video(rng: np.random.Generator, video_id: str, subset: str) -> SyntheticVideo:
    """Random length, fps, 1-6 labelled actions and 0-2 distractors."""
    steps = int(rng.integers(STEPS_RANGE[0], STEPS_RANGE[1], endpoint=True))
    num_frames = steps * FEAT_STRIDE + int(rng.integers(0, FEAT_STRIDE))  # i3d then has `steps` clips
    actions = place_intervals(rng, steps, int(rng.integers(1, 6, endpoint=True)), [], ACTION_STEPS)
    distractors = place_intervals(rng, steps, int(rng.integers(0, 2, endpoint=True)), actions, (3, 15))
    return SyntheticVideo(
        video_id=video_id,
        subset=subset,
        fps=float(rng.choice(FPS_CHOICES)),
        num_frames=num_frames,
        actions=np.array(actions, dtype=np.int64).reshape(-1, 2),
        labels=rng.integers(0, len(CLASS_NAMES), size=len(actions)),
        distractors=np.array(distractors, dtype=np.int64).reshape(-1, 2),
        distractor_groups=rng.integers(0, len(GROUPS), size=len(distractors)),
    )


def clip_coverage(num_frames: int, window: int, intervals: np.ndarray) -> np.ndarray:
    """Fraction of each clip covered by each interval: (T, K), T = clips of ``window`` frames."""
    steps = (num_frames - window) // FEAT_STRIDE + 1
    starts = np.arange(steps)[:, None] * FEAT_STRIDE  # (T, 1)
    inter = np.minimum(starts + window, intervals[None, :, 1]) - np.maximum(starts, intervals[None, :, 0])
    return np.clip(inter, 0, None) / window  # (T, K)


def boundary_bumps(num_frames: int, window: int, frames: np.ndarray) -> np.ndarray:
    """Gaussian bumps at the given frames, sampled at clip centres: (T, K)."""
    steps = (num_frames - window) // FEAT_STRIDE + 1
    centres = np.arange(steps)[:, None] * FEAT_STRIDE + 0.5 * window  # (T, 1)
    return np.exp(-0.5 * ((centres - frames[None, :]) / MARKER_WIDTH) ** 2)


def i3d_features(video: SyntheticVideo, d: Directions, rng: np.random.Generator) -> np.ndarray:
    """(T, 32): noise + group x coverage + onset/offset markers; distractors without markers."""
    window = STREAMS["i3d"]["num_frames"]
    groups = np.concatenate([video.labels // len(SUBTYPES), video.distractor_groups])  # (K + D,)
    coverage = clip_coverage(video.num_frames, window, np.concatenate([video.actions, video.distractors]))
    feats = rng.standard_normal((coverage.shape[0], d.group.shape[1]))  # (T, 32)
    feats += GROUP_AMPLITUDE * coverage @ d.group[groups]
    onsets = boundary_bumps(video.num_frames, window, video.actions[:, 0]).sum(1, keepdims=True)  # (T, 1)
    offsets = boundary_bumps(video.num_frames, window, video.actions[:, 1]).sum(1, keepdims=True)
    feats += MARKER_AMPLITUDE * (onsets * d.onset + offsets * d.offset)
    return feats.astype(np.float32)


def slowfast_features(video: SyntheticVideo, d: Directions, rng: np.random.Generator) -> np.ndarray:
    """(T - 1, 48): noise + presence x coverage + subtype x coverage (no group, no distractors)."""
    coverage = clip_coverage(video.num_frames, STREAMS["slowfast"]["num_frames"], video.actions)  # (T-1, K)
    feats = rng.standard_normal((coverage.shape[0], d.presence.shape[0]))  # (T-1, 48)
    feats += PRESENCE_AMPLITUDE * coverage.sum(1)[:, None] * d.presence
    feats += SUBTYPE_AMPLITUDE * coverage @ d.subtype[video.labels % len(SUBTYPES)]
    return feats.astype(np.float32)


def annotations_of(video: SyntheticVideo) -> list[dict]:
    """Clean FineAction-style annotations of a video, in seconds (3 decimals, inside [0, duration])."""
    return [
        {
            "segment": [round(s / video.fps, 3), round(e / video.fps, 3)],
            "label": CLASS_NAMES[label],
            "label_id": int(label),
        }
        for (s, e), label in zip(video.actions.tolist(), video.labels.tolist(), strict=True)
    ]


def as_official(database: dict[str, dict]) -> dict[str, dict]:
    """The reported official layout: no label_id, one label with a trailing space, string durations."""
    out = {}
    for video_id, entry in database.items():
        anns = [
            {"segment": a["segment"], "label": a["label"] + (" " if a["label"] == TRAILING_SPACE_CLASS else "")}
            for a in entry["annotations"]
        ]
        out[video_id] = {**entry, "duration": str(entry["duration"]), "annotations": anns}
    return out


def write_features(out_dir: Path, video: SyntheticVideo, feats: dict[str, np.ndarray], layout: str) -> None:
    """Save one video's (T, C) streams in ``layout`` (see the module docstring)."""
    folder = {name: out_dir / "features" / name for name in feats}
    vid = video.video_id
    if layout == "pt":
        torch.save(torch.from_numpy(feats["i3d"]), folder["i3d"] / f"{vid}_spatial_pool_feature_5.pt")
        torch.save({"feats": torch.from_numpy(feats["slowfast"])}, folder["slowfast"] / f"{vid}.pth")
    elif layout == "npz":
        np.savez(folder["i3d"] / f"{vid}.npz", feats=feats["i3d"], frames=np.arange(len(feats["i3d"])))
        np.savez(folder["slowfast"] / f"{vid}.npz", feats["slowfast"])
    else:
        for name, array in feats.items():
            if layout == "fixed":  # resampled at the clip centres of FIXED_LENGTH equal clips
                native = Grid(FEAT_STRIDE, STREAMS[name]["num_frames"])
                array = resample_to_grid(
                    array, native, auto_grid(video.num_frames, FIXED_LENGTH), np.arange(FIXED_LENGTH)
                )
            np.save(folder[name] / f"{vid}.npy", array)


def stream_configs(out_dir: Path, layout: str) -> dict[str, dict]:
    """The ``data.streams`` entries that read ``layout``."""
    streams = {
        name: {
            "dir": str(out_dir / "features" / name),
            "dim": spec["dim"],
            "feat_stride": FEAT_STRIDE,
            "num_frames": spec["num_frames"],
            "layout": "tc",
            "file_pattern": "{video_id}.npy",
        }
        for name, spec in STREAMS.items()
    }
    if layout == "pt":
        streams["i3d"]["file_pattern"] = "{video_id}_spatial_pool_feature_5.pt"
        streams["slowfast"].update(file_pattern="{video_id}.pth", key="feats")
    elif layout == "npz":
        streams["i3d"].update(file_pattern="{video_id}.npz", key="feats")
        streams["slowfast"]["file_pattern"] = "{video_id}.npz"  # the only array: no key needed
    elif layout == "fixed":
        for stream in streams.values():
            stream["feat_stride"] = "auto"
    return streams


def inject_dirty(rng: np.random.Generator, entries: dict[str, dict]) -> dict[str, int]:
    """Insert 1-3 dirty annotations of each reason at random places; return the counts by reason."""
    counts = {
        reason: int(rng.integers(1, 3, endpoint=True))
        for reason in ("end_not_after_start", "outside_video", "duplicate")
    }
    video_ids = list(entries)
    for reason, count in counts.items():
        for k in range(count):
            entry = entries[video_ids[int(rng.integers(len(video_ids)))]]
            clean = entry["annotations"][0]  # every video has one clean action first (sorted)
            s, e = clean["segment"]
            duration = entry["duration"]
            segment = {
                "end_not_after_start": [[e, s], [s, s]],
                "outside_video": [[s, duration + 2.0], [-1.0, e], [duration + 1.0, duration + 3.0]],
                "duplicate": [[s, e]],
            }[reason]
            dirty = {**clean, "segment": segment[k % len(segment)]}
            entry["annotations"].insert(int(rng.integers(1, len(entry["annotations"]) + 1)), dirty)
    return counts


def write_config(out_dir: Path, layout: str = "native") -> Path:
    """A full run config pointing at absolute paths under ``out_dir``, for a small fast model."""
    config = {
        "data": {
            "annotations": str(out_dir / "annotations_gt.json"),
            "train_subset": "training",
            "val_subset": "validation",
            "default_fps": 30.0,
            "streams": stream_configs(out_dir, layout),
            "features": list(STREAMS),
            "max_seq_len": MAX_SEQ_LEN,
            "crop_ratio": [0.9, 1.0],
            "trunc_thresh": 0.5,
            "cache_features": True,
            "num_workers": 0,
        },
        # max_div_factor = 32 * (9 // 2) * 2 = 256 divides max_seq_len
        "model": {"embd_dim": 64, "fpn_dim": 64, "head_dim": 64, "n_head": 4, "n_mha_win_size": 9},
        # ~15 steps an epoch: the default EMA decay 0.999 would leave the evaluated EMA weights
        # mostly at their initial values after 12 epochs (0.999**180 = 0.84)
        "train": {"epochs": 12, "warmup_epochs": 2, "batch_size": 8, "lr": 1.0e-3, "ema_decay": 0.98},
        "test": {},
    }
    path = out_dir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    load_config(path)  # the written config must validate
    return path


def generate(out_dir: str | Path, seed: int = 0, videos: int = 160, layout: str = "native") -> Path:
    """Write the synthetic dataset (3/4 training, 1/4 validation) in ``layout`` (FORMATS); return
    the config path. Every layout holds the same videos, actions and feature values."""
    if layout not in FORMATS:
        raise InputError(f"--format: {layout!r} is not one of {list(FORMATS)}")
    out_dir = Path(out_dir).resolve()
    rng = np.random.default_rng(seed)
    directions = make_directions(rng)
    for name in STREAMS:
        (out_dir / "features" / name).mkdir(parents=True, exist_ok=True)
    num_val = max(videos // 4, 1)
    database: dict[str, dict] = {}
    for i in range(videos):
        video = sample_video(rng, f"v_{i:08d}", "validation" if i >= videos - num_val else "training")
        feats = {"i3d": i3d_features(video, directions, rng), "slowfast": slowfast_features(video, directions, rng)}
        write_features(out_dir, video, feats, layout)
        database[video.video_id] = {
            "subset": video.subset,
            "duration": video.duration,
            "fps": video.fps,
            "annotations": annotations_of(video),
        }
    injected = {
        subset: inject_dirty(rng, {k: v for k, v in database.items() if v["subset"] == subset})
        for subset in ("training", "validation")
    }
    if layout == "official":
        database = as_official(database)
    (out_dir / "annotations_gt.json").write_text(json.dumps({"version": "synthetic", "database": database}))
    (out_dir / "injected_dirty.json").write_text(json.dumps(injected, indent=2))
    return write_config(out_dir, layout)
