"""The stream's folder: one ``<video_id>.npy`` per video, the settings it was extracted with, a manifest.

``extraction.json`` says what the files are (backbone and the checkpoint's sha256, clip grid,
frames, dtype) and the grid a run config reads them with (``data.streams.NAME: {feat_stride,
num_frames, dim}``, at ``fps``). A folder holds one stream: a rerun with other settings is refused
(nothing touched) unless told to overwrite. ``manifest.jsonl`` has one line per finished attempt
(status, frames, fps, steps, seconds, failure reason); the last line of a video wins. Feature files
are written to a hidden temporary name and renamed, so a killed run leaves no half-written
``.npy``; a manifest line is appended with one write after its file is in place.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from localization.api import InputError, StreamSettings, flatten, write_json

SETTINGS_FILE = "extraction.json"
MANIFEST_FILE = "manifest.jsonl"
FEATURE_DIM = 2304
# what decides the features: compared between runs into one folder (the checkpoint by content)
COMPARED = ("backbone.name", "backbone.weights_sha256", "clip", "frames", "dtype")


def settings_record(stream: StreamSettings, weights_sha256: str, matched: dict[str, Any] | None = None) -> dict:
    """``extraction.json``: the stream's settings, its checkpoint by content, and the grid to read it with."""
    record = asdict(stream)
    record["backbone"]["weights_sha256"] = weights_sha256
    record["grid"] = {
        "feat_stride": stream.clip.stride,
        "num_frames": stream.clip.num_frames,
        "dim": FEATURE_DIM,
        "fps": stream.clip.fps,  # null: each video's own rate
    }
    if matched:
        record["grid"]["matched"] = matched
    return record


def _compared(record: dict) -> dict[str, Any]:
    flat = flatten(record)
    return {key: value for key, value in flat.items() if any(key == c or key.startswith(c + ".") for c in COMPARED)}


class OutputFolder:
    """Reads and writes one stream's folder (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.settings_path = path / SETTINGS_FILE
        self.manifest_path = path / MANIFEST_FILE

    def check(self, record: dict, overwrite: bool) -> None:
        """InputError (nothing touched) if the folder holds a stream extracted with other settings."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"out {self.path}: not a folder")
        if overwrite or not self.settings_path.exists():
            return
        try:
            before = _compared(json.loads(self.settings_path.read_text()))
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.settings_path}: unreadable ({exc}); pass --overwrite to start afresh") from None
        now = _compared(record)
        for key in sorted(set(before) | set(now)):
            if before.get(key) != now.get(key):
                raise InputError(
                    f"{self.settings_path}: {key} was {before.get(key)!r}, now {now.get(key)!r}: this folder holds "
                    "another stream (choose another out, or pass --overwrite to replace it)"
                )

    def start(self, record: dict, overwrite: bool) -> None:
        """Create the folder, clear what ``overwrite`` replaces and any temporary file a killed run left."""
        self.path.mkdir(parents=True, exist_ok=True)
        if overwrite:
            for video_id in self.entries():
                (self.path / f"{video_id}.npy").unlink(missing_ok=True)
            self.manifest_path.unlink(missing_ok=True)
        for stale in self.path.glob(".*.tmp"):
            stale.unlink()
        write_json(self.settings_path, record)

    def entries(self) -> dict[str, dict]:
        """The manifest's last line per video (a line cut short by a kill is ignored)."""
        out: dict[str, dict] = {}
        if not self.manifest_path.exists():
            return out
        for line in self.manifest_path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            out[entry["video_id"]] = entry
        return out

    def finished(self) -> set[str]:
        """Videos whose features are written: skipped by a rerun (failed ones are tried again)."""
        return {
            video_id
            for video_id, entry in self.entries().items()
            if entry["status"] == "ok" and (self.path / f"{video_id}.npy").is_file()
        }

    def write_features(self, video_id: str, features: np.ndarray) -> Path:
        """``<video_id>.npy``, ``[T, 2304]``, via a temporary file and a rename."""
        path = self.path / f"{video_id}.npy"
        tmp = self.path / f".{video_id}.npy.tmp"
        with tmp.open("wb") as handle:
            np.save(handle, features)
        tmp.replace(path)
        return path

    def record(self, entry: dict) -> None:
        """Append one manifest line in a single write."""
        line = (json.dumps(entry) + "\n").encode()
        fd = os.open(self.manifest_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
