"""The extraction file: what to extract (the stream's settings) and where, with what, tracked where.

Keys: ``videos`` (a folder; video id = file stem), ``out`` (the stream's folder), ``backbone``,
``clip``, ``frames``, ``dtype`` (the science's :class:`StreamSettings`), ``resources`` and
``tracking``. Read with the config module's strict typed reader, so errors are one line naming
the file and the dotted key, before anything starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from localization.api import ConfigError, StreamSettings, apply_overrides, build_section, read_yaml, validate_stream

DEFAULT_EXPERIMENT = "feature-extraction"


@dataclass
class ExtractionResources:
    """``gpu``: model actors, one per GPU (0: one model on CPU); ``cpu``: decoding workers (null: every
    CPU the model does not use); ``model_threads``: torch threads of a CPU model."""

    gpu: int = 0
    cpu: int | None = None
    model_threads: int = 1
    batch_size: int = 8  # clips per model call


@dataclass
class ExtractionTracking:
    uri: str | None = None  # null: MLFLOW_TRACKING_URI, else ./mlflow (as runner.search)
    experiment: str = DEFAULT_EXPERIMENT


@dataclass
class ExtractFile:
    """The file, read: ``stream`` holds its backbone, clip, frames and dtype sections."""

    videos: Path
    out: Path
    stream: StreamSettings
    resources: ExtractionResources = field(default_factory=ExtractionResources)
    tracking: ExtractionTracking = field(default_factory=ExtractionTracking)


STREAM_KEYS = tuple(f.name for f in dataclasses.fields(StreamSettings))
RUNNER_KEYS = ("videos", "out", "resources", "tracking")


def load_extract_file(path: Path, overrides: list[str] | None = None) -> ExtractFile:
    """Read, override (``--set``) and validate; ConfigError naming the file and key."""
    source = str(path)
    raw = read_yaml(path)
    apply_overrides(raw, overrides or [])
    unknown = [key for key in raw if key not in STREAM_KEYS + RUNNER_KEYS]
    if unknown:
        raise ConfigError(f"{source}: {unknown[0]}: unknown key (expected one of {list(RUNNER_KEYS + STREAM_KEYS)})")
    for key in ("videos", "out"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise ConfigError(f"{source}: {key}: expected a folder path, got {raw.get(key)!r}")
    stream = build_section(StreamSettings, {k: raw[k] for k in STREAM_KEYS if k in raw}, "", source, StreamSettings())
    validate_stream(stream, source)
    resources = build_section(
        ExtractionResources, raw.get("resources") or {}, "resources", source, ExtractionResources()
    )
    for key in ("gpu", "cpu", "model_threads", "batch_size"):
        value = getattr(resources, key)
        if value is not None and value < (0 if key == "gpu" else 1):
            raise ConfigError(f"{source}: resources.{key}: must be >= {0 if key == 'gpu' else 1}, got {value}")
    tracking = build_section(ExtractionTracking, raw.get("tracking") or {}, "tracking", source, ExtractionTracking())
    return ExtractFile(Path(raw["videos"]), Path(raw["out"]), stream, resources, tracking)
