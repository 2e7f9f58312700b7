"""The Ray side of one video: a decoding task on a CPU worker streams clip batches to a model actor.

One :class:`Encoder` actor per GPU (or one on CPU) loads the backbone once and serves several videos
at a time (threads), each fed by its own decoding task: while the model runs on one batch, the
decoders are already cutting the next ones (up to ``PREFETCH`` batches ahead each), so the GPU does
not wait for frames. Model calls are serialised by a lock: one device runs one batch at a time.
A video that cannot be decoded comes back as a failure with its reason; the others go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import ray

from localization.api import (
    BackboneSettings,
    ClipEncoder,
    ClipStream,
    InputError,
    StreamInfo,
    StreamSettings,
    as_dtype,
    set_torch_threads,
)

PREFETCH = 4  # clip batches a decoder may run ahead of the model


@ray.remote(num_cpus=1)
def decode_clips(path: str, settings: StreamSettings, batch_size: int) -> Iterator[Any]:
    """The video's clip batches (uint8), then its :class:`StreamInfo`; VideoError if it cannot be decoded."""
    set_torch_threads(1)
    stream = ClipStream(path, settings, batch_size)
    yield from stream
    yield stream.info()


def failure_reason(exc: BaseException) -> str:
    """One line: the decoder's own error where the task raised one, else the exception's first line."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"[:500]


class Encoder:
    """The backbone on one device, loaded once; ``extract`` is called by several threads at a time."""

    def __init__(self, backbone: BackboneSettings, device: str, threads: int) -> None:
        set_torch_threads(threads)
        self.encoder = ClipEncoder(backbone, device)
        self.lock = threading.Lock()

    def ready(self) -> bool:
        """Answered once the model is loaded: throughput is timed from then on."""
        return True

    def extract(self, path: str, settings: StreamSettings, batch_size: int) -> dict[str, Any]:
        """``{"status": "ok", "features": [T, 2304], frames, fps, native_fps, steps, seconds}`` or
        ``{"status": "failed", "reason": ...}``."""
        started = time.perf_counter()
        batches = decode_clips.options(num_returns="streaming", _generator_backpressure_num_objects=PREFETCH).remote(
            path, settings, batch_size
        )
        features: list[np.ndarray] = []
        info: StreamInfo | None = None
        try:
            for ref in batches:
                item = ray.get(ref)
                if isinstance(item, StreamInfo):
                    info = item
                    continue
                with self.lock:
                    features.append(self.encoder(item))
            assert info is not None, "the decoder ended without its summary"
            array = as_dtype(np.concatenate(features), settings.dtype, path)
        except (ray.exceptions.RayTaskError, InputError) as exc:
            return {"status": "failed", "reason": failure_reason(exc), "seconds": time.perf_counter() - started}
        return {
            "status": "ok",
            "features": array,
            "frames": info.frames,
            "fps": info.fps,
            "native_fps": info.native_fps,
            "steps": info.steps,
            "seconds": time.perf_counter() - started,
        }


def start_encoders(
    backbone: BackboneSettings, gpus: int, model_threads: int, concurrency: int
) -> list[ray.actor.ActorHandle]:
    """One actor per GPU (``gpus`` of them), or one CPU actor using ``model_threads`` CPUs; each
    serves ``concurrency`` videos at once. A crashed actor is restarted (its videos are recorded failed)."""
    actor = ray.remote(Encoder)
    if gpus > 0:
        options = {"num_gpus": 1, "num_cpus": 0, "max_concurrency": concurrency, "max_restarts": -1}
        return [actor.options(**options).remote(backbone, "cuda", model_threads) for _ in range(gpus)]
    options = {"num_cpus": model_threads, "max_concurrency": concurrency, "max_restarts": -1}
    return [actor.options(**options).remote(backbone, "cpu", model_threads)]
