"""The settings that decide an extracted stream's values: backbone, clip grid, frame geometry, dtype.

Plain dataclasses (no torch), read with the project's strict config reader, so the runner can
validate an extraction file and compare it with a finished folder's settings without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from localization.errors import ConfigError


@dataclass
class BackboneSettings:
    """Which SlowFast, and its Kinetics-400 ``.pyth`` file (null: seeded weights, for tests and dry runs)."""

    name: Literal["slowfast_r50", "slowfast_r101"] = "slowfast_r50"
    weights: str | None = None


@dataclass
class ClipSettings:
    """Clips of ``num_frames`` frames every ``stride`` frames, at ``fps`` (null: the video's own rate).

    Defaults: ActionFormer's SlowFast features (32-frame clips every 16 frames at 30 fps). The model
    sees 32 frames spread evenly over each clip, whatever its length.
    """

    num_frames: int = 32
    stride: int = 16
    fps: float | None = 30.0


@dataclass
class FrameSettings:
    """Frames resized so the short side is ``short_side``, then centre-cropped to ``crop`` x ``crop``."""

    short_side: int = 256
    crop: int = 224


@dataclass
class StreamSettings:
    """Everything that changes the features written: a folder extracted with other settings is another stream."""

    backbone: BackboneSettings = field(default_factory=BackboneSettings)
    clip: ClipSettings = field(default_factory=ClipSettings)
    frames: FrameSettings = field(default_factory=FrameSettings)
    dtype: Literal["float16", "float32"] = "float16"


def validate_stream(settings: StreamSettings, source: str) -> None:
    """Range rules (ConfigError naming the file and key)."""
    clip, frames = settings.clip, settings.frames
    if clip.num_frames < 1:
        raise ConfigError(f"{source}: clip.num_frames: must be >= 1, got {clip.num_frames}")
    if clip.stride < 1:
        raise ConfigError(f"{source}: clip.stride: must be >= 1, got {clip.stride}")
    if clip.fps is not None and not clip.fps > 0:
        raise ConfigError(f"{source}: clip.fps: must be > 0 or null (the video's rate), got {clip.fps}")
    if frames.crop < 32:
        raise ConfigError(f"{source}: frames.crop: must be >= 32 (five stride-2 stages), got {frames.crop}")
    if frames.short_side < frames.crop:
        raise ConfigError(f"{source}: frames.short_side: {frames.short_side} is smaller than frames.crop {frames.crop}")
