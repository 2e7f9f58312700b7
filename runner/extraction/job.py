"""One extraction, in the order that makes bad input cost nothing: check the file, the videos, the
checkpoint (loaded strictly), the folder's settings and the tracking store (InputError: exit 2,
nothing written); then record the settings, start or join Ray, and extract the videos not finished
yet, longest first (file size stands for duration: it costs no decoding), so the last minutes are
not spent waiting on one long video. The driver writes every file; workers only compute.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from localization.api import InputError, VideoError, fit_grid, header_frames, load_backbone
from runner import console
from runner.extraction.folder import OutputFolder, settings_record
from runner.extraction.spec import ExtractFile
from runner.extraction.workers import failure_reason, start_encoders
from runner.names import EXTRACTION_METRICS
from runner.tracking import extraction_run
from runner.tracking.mlflow_store import connect, experiment_id, resolve_store
from runner.tune import cluster

MATCH_SAMPLE = 400  # videos whose header frames and stream lengths fit the grid
MATCH_SHARE = 0.9  # the fitted grid must explain this share of them exactly
PROGRESS_EVERY_S = 10.0  # a progress line this often (and one at the end)
SEEDED = "seeded"  # the weights_sha256 of seeded weights (no checkpoint)
LOG_FILE = "extract.log"


@dataclass
class ExtractionOutcome:
    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # video id -> reason
    skipped: int = 0
    clips: int = 0
    seconds: float = 0.0
    run_id: str | None = None


def list_videos(folder: Path) -> list[Path]:
    """The folder's files (not hidden), longest first by size; InputError if none or two share a stem."""
    if not folder.is_dir():
        raise InputError(f"videos {folder}: not a folder")
    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")), key=lambda p: p.name)
    if not files:
        raise InputError(f"videos {folder}: no files")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise InputError(f"videos {folder}: {seen[path.stem].name} and {path.name} have the same video id")
        seen[path.stem] = path
    return sorted(files, key=lambda p: -p.stat().st_size)


def weights_sha256(weights: str | None) -> str:
    if weights is None:
        return SEEDED
    digest = hashlib.sha256()
    with open(weights, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def match_stream(spec: ExtractFile, stream_dir: Path, videos: list[Path], echo: Callable[[str], None]) -> dict:
    """Set ``clip.stride`` / ``clip.num_frames`` to the grid whose step counts equal the lengths of the
    ``.npy`` files in ``stream_dir`` (at ``clip.fps``); InputError if no grid explains them."""
    pairs = [(v, stream_dir / f"{v.stem}.npy") for v in sorted(videos)]
    pairs = [(v, f) for v, f in pairs if f.is_file()][:MATCH_SAMPLE]
    if not pairs:
        raise InputError(f"--match-stream {stream_dir}: no <video_id>.npy there for the videos in {spec.videos}")
    frames, lengths = [], []
    for video, features in pairs:
        try:
            frames.append(header_frames(video, spec.stream.clip.fps))
        except VideoError:
            continue  # a broken video says nothing about the grid
        lengths.append(np.load(features, mmap_mode="r").shape[0])
    fit = fit_grid(np.array(frames), np.array(lengths))
    if fit.share < MATCH_SHARE:
        raise InputError(
            f"--match-stream {stream_dir}: no clip grid explains the lengths (best: stride {fit.stride}, clip "
            f"{fit.clip} matches {fit.matched} of {fit.videos} videos); try another clip.fps"
        )
    spec.stream.clip.stride, spec.stream.clip.num_frames = fit.stride, fit.clip
    echo(f"--match-stream {stream_dir}: stride {fit.stride}, clip {fit.clip} (matches {fit.matched} of {fit.videos})")
    return {"stream": str(stream_dir), "matched": fit.matched, "videos": fit.videos}


def run(
    spec: ExtractFile,
    address: str | None = None,
    overwrite: bool = False,
    match: Path | None = None,
    command: str = "python -m runner.extract",
    echo: Callable[[str], None] = console.say,
    log_to_file: bool = False,
    verbose: bool = False,
) -> ExtractionOutcome:
    """The whole extraction; InputError (nothing written) on bad input. With ``log_to_file`` (the
    command) Ray's and the workers' output go to ``out/LOG_FILE`` unless ``verbose``."""
    videos = list_videos(spec.videos)
    matched = match_stream(spec, match, videos, echo) if match is not None else None
    backbone = spec.stream.backbone
    if backbone.weights is not None:
        load_backbone(backbone.name, backbone.weights)  # strictly, before anything is written
    sha = weights_sha256(backbone.weights)
    record = settings_record(spec.stream, sha, matched)
    folder = OutputFolder(spec.out)
    folder.check(record, overwrite)
    store = resolve_store(spec.tracking.uri, Path.cwd())
    client = connect(store)
    exp_id = experiment_id(client, store, spec.tracking.experiment)

    finished = set() if overwrite else folder.finished()
    todo = [v for v in videos if v.stem not in finished]
    outcome = ExtractionOutcome(skipped=len(videos) - len(todo))
    info = _start_ray(spec, address) if todo else None  # a missing GPU is bad input too: before any write
    try:
        folder.start(record, overwrite)
        if outcome.skipped:
            echo(f"extract: {outcome.skipped} of {len(videos)} videos already extracted in {spec.out}: skipped")
        outcome.run_id = extraction_run.start(client, exp_id, record, spec.videos, spec.out, command)
        status = "failed"
        try:
            with contextlib.ExitStack() as stack:
                if log_to_file and info is not None:
                    log = folder.path / LOG_FILE
                    echo(f"Ray's and the workers' output: {log}" + ("" if verbose else " (--verbose shows it here)"))
                    stack.enter_context(console.capture(log, verbose))
                    echo = console.say
                if info is not None:
                    _extract(spec, todo, folder, outcome, info, echo)
            status = "finished"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            done, seconds = len(outcome.ok) + len(outcome.failed), max(outcome.seconds, 1e-9)
            values = (len(outcome.ok), len(outcome.failed), outcome.skipped, outcome.clips, outcome.seconds)
            rates = (done / seconds, outcome.clips / seconds)
            metrics = dict(zip(EXTRACTION_METRICS, (*values, *rates), strict=True))
            files = [folder.manifest_path, folder.settings_path]
            extraction_run.finish(client, outcome.run_id, metrics, files, status)
    finally:
        if info is not None:
            cluster.stop(info)
    return outcome


def _start_ray(spec: ExtractFile, address: str | None) -> cluster.Cluster:
    """Start (sized by ``resources``) or join Ray; InputError if it has fewer GPUs than ``resources.gpu``."""
    res = spec.resources
    model_cpus = 0 if res.gpu > 0 else res.model_threads
    info = cluster.start(address, num_cpus=None if res.cpu is None else res.cpu + model_cpus)
    if res.gpu > info.gpus:
        cluster.stop(info)
        raise InputError(f"resources.gpu: {res.gpu} model actors on GPUs, but the cluster has {info.gpus:g} GPUs")
    return info


def _extract(
    spec: ExtractFile,
    todo: list[Path],
    folder: OutputFolder,
    outcome: ExtractionOutcome,
    info: cluster.Cluster,
    echo: Callable[[str], None],
) -> None:
    """Run ``todo`` on Ray; the driver writes each video's file and manifest line as it arrives, and
    says how far it is every PROGRESS_EVERY_S seconds and at the end."""
    res = spec.resources
    model_cpus = 0 if res.gpu > 0 else res.model_threads
    decoders = res.cpu or max(1, int(info.cpus) - model_cpus)
    actors = max(1, res.gpu)
    per_actor = max(1, decoders // actors) + 1  # one more than its decoders: the next video starts early
    encoders = start_encoders(spec.stream.backbone, res.gpu, res.model_threads, per_actor)
    ray.get([encoder.ready.remote() for encoder in encoders])
    started = time.monotonic()  # throughput counts from the models loaded
    progress = console.Progress(len(todo))
    said = time.monotonic()
    queue = list(todo)
    pending: dict[Any, tuple[Path, int]] = {}

    def submit(slot: int) -> None:
        video = queue.pop(0)
        ref = encoders[slot].extract.remote(str(video), spec.stream, res.batch_size)
        pending[ref] = (video, slot)

    for slot in [a for a in range(actors) for _ in range(per_actor)]:
        if queue:
            submit(slot)
    while pending:
        [ref], _ = ray.wait(list(pending), num_returns=1)
        video, slot = pending.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as exc:  # the actor died (out of memory, a crash): this video failed
            result = {"status": "failed", "reason": failure_reason(exc), "seconds": 0.0}
        _write(folder, video, result, outcome)
        if queue:
            submit(slot)
        progress.advance()
        now = time.monotonic()
        outcome.seconds = now - started
        if now - said >= PROGRESS_EVERY_S or not pending:
            rate = progress.done / max(outcome.seconds, 1e-9)
            echo(progress.line("videos", f" ({len(outcome.failed)} failed, {rate:.2f} videos/s)"))
            said = now


def _write(folder: OutputFolder, video: Path, result: dict, outcome: ExtractionOutcome) -> None:
    entry = {
        "video_id": video.stem,
        "file": video.name,
        "status": result["status"],
        "seconds": round(result["seconds"], 3),
    }
    if result["status"] == "ok":
        folder.write_features(video.stem, result["features"])
        entry.update({k: result[k] for k in ("frames", "fps", "native_fps", "steps")})
        outcome.ok.append(video.stem)
        outcome.clips += result["steps"]
    else:
        entry["reason"] = result["reason"]
        outcome.failed[video.stem] = result["reason"]
    folder.record(entry)
