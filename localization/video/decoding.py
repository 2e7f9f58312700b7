"""Streamed decoding with PyAV: frames one at a time, resized and cropped, optionally resampled in time.

PyAV binds FFmpeg's libraries and its wheels ship them, so decoding needs no system FFmpeg and no
torchvision (whose wheels are tied to a torch build). A video is never held whole in memory:
FineAction's longest runs about two hours.

Resampling to ``fps`` is by presentation time: output frame k (time k / fps from the first frame) is
the decoded frame shown at that moment, the last one whose time is <= k / fps. A video at the
target rate comes out frame for frame; at 25 fps resampled to 30, every fifth frame is repeated.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

from localization.errors import DataError
from localization.video.settings import FrameSettings
from localization.video.transforms import centre_crop, resized_size

TIME_TOLERANCE = 1e-6  # seconds: timestamps equal up to rounding are the same instant


class VideoError(DataError):
    """A video that cannot be decoded (unreadable, no video stream, no frames); the reason in one line."""


class VideoReader:
    """Iterate a video's frames as uint8 RGB ``[crop, crop, 3]`` at ``fps`` (None: every decoded frame).

    Opening checks the file (VideoError otherwise); after iterating, ``frames`` is the number of
    frames produced. ``threads``: FFmpeg decoding threads of this reader (1 keeps one core busy).
    """

    def __init__(self, path: str | Path, frames: FrameSettings, fps: float | None, threads: int = 1) -> None:
        self.path = Path(path)
        self.settings = frames
        self.fps_out = fps
        self.threads = threads
        self.frames = 0
        container = self._open()
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not rate:
                raise VideoError(f"{self.path}: the video stream has no frame rate")
            self.native_fps = float(rate)
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
            if not self.width or not self.height:
                raise VideoError(f"{self.path}: the video stream has no frame size")
        finally:
            container.close()

    @property
    def fps(self) -> float:
        """The rate of the frames produced (the steps' time base)."""
        return self.native_fps if self.fps_out is None else self.fps_out

    def _open(self) -> av.container.InputContainer:
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise VideoError(f"{self.path}: empty file")
        try:
            container = av.open(str(self.path))
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"{self.path}: unreadable ({type(exc).__name__}: {exc})") from None
        if not container.streams.video:
            container.close()
            raise VideoError(f"{self.path}: no video stream")
        return container

    def _decoded(self) -> Iterator[tuple[float, np.ndarray]]:
        """(seconds from the first frame, processed frame) for every decoded frame."""
        width, height = resized_size(self.width, self.height, self.settings.short_side)
        container = self._open()
        stream = container.streams.video[0]
        stream.codec_context.thread_count = self.threads
        first: float | None = None
        count = 0
        try:
            for frame in container.decode(stream):
                if frame.pts is None or frame.time_base is None:
                    seconds = count / self.native_fps
                else:
                    seconds = float(frame.pts * frame.time_base)
                first = seconds if first is None else first
                image = frame.to_ndarray(width=width, height=height, format="rgb24", interpolation="BILINEAR")
                count += 1
                yield seconds - first, centre_crop(image, self.settings.crop)
        except av.FFmpegError as exc:
            raise VideoError(
                f"{self.path}: decoding failed after {count} frames ({type(exc).__name__}: {exc})"
            ) from None
        finally:
            container.close()

    def __iter__(self) -> Iterator[np.ndarray]:
        self.frames = 0
        decoded = self._decoded()
        if self.fps_out is None:
            for _, image in decoded:
                self.frames += 1
                yield image
            return
        step = 1.0 / self.fps_out
        held: np.ndarray | None = None
        end = 0.0
        for seconds, image in decoded:
            if held is not None:  # the held frame is shown until this one's time
                while self.frames * step < seconds - TIME_TOLERANCE:
                    self.frames += 1
                    yield held
            held, end = image, seconds + 1.0 / self.native_fps
        while held is not None and self.frames * step < end - TIME_TOLERANCE:
            self.frames += 1
            yield held
