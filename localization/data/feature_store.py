"""The feature store: each stream's files packed once per node into one memory-mapped array.

Why: every trial and every DataLoader worker reading and converting its own copy of the features
costs a core per few hundred videos per second and a copy of the data set per process. A store is
one flat array per stream (``data.bin``, ``data.store_dtype``, float16 by default) plus an index
(video -> offset, length) in ``index.json``. Each video's block is stored channels-first, (C, T)
C-contiguous, so a crop is a strided view whose rows are contiguous and the loader copies it
without a transpose. Every process memory-maps the same file: the page cache holds one copy
however many trials and workers read it.

A store is keyed by what it was built from: the stream's settings, the dtype, and every file's
name, size and mtime. A changed, added or removed file gives another key, so another store is
built (and the old one of the same folder deleted); a store from other files is never used.
Builds are safe when several processes race: one builds under an exclusive lock (``flock``) into
a temporary folder that is renamed into place when complete, the others wait and then open it; a
crashed build leaves only a temporary folder, removed by the next build.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from localization.config.schema import DataConfig, StreamConfig
from localization.errors import DataError

logger = logging.getLogger(__name__)

FORMAT = 1  # bump when the on-disk layout changes: old stores then no longer match any key
DATA_FILE, INDEX_FILE = "data.bin", "index.json"

ReadStream = Callable[[str], np.ndarray]  # video id -> (T, C) array of one stream, as its file holds it


class StreamStore:
    """One stream's packed features, memory-mapped read-only; picklable by path (workers remap it)."""

    def __init__(self, path: Path, built_s: float | None = None) -> None:
        self.path = path
        self.built_s = built_s  # seconds this process spent building it; None when it already existed
        index = json.loads((path / INDEX_FILE).read_text())
        self.stream: str = index["stream"]
        self.dim: int = index["dim"]
        self.dtype = np.dtype(index["dtype"])
        self.key: str = index["key"]
        self.steps: int = index["steps"]
        self._index: dict[str, tuple[int, int]] = {vid: (int(o), int(n)) for vid, o, n in index["videos"]}
        self._data = self._map()

    def _map(self) -> np.ndarray:
        size = self.steps * self.dim
        if (self.path / DATA_FILE).stat().st_size != size * self.dtype.itemsize:
            raise DataError(f"{self.path / DATA_FILE}: size does not match its index (a damaged store: delete it)")
        # a plain ndarray view of the map: slicing an np.memmap subclass costs more per call
        return np.memmap(self.path / DATA_FILE, dtype=self.dtype, mode="r", shape=(size,)).view(np.ndarray)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_data"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._data = self._map()

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._index

    def __len__(self) -> int:
        return len(self._index)

    @property
    def nbytes(self) -> int:
        return self.steps * self.dim * self.dtype.itemsize

    def rows(self, video_id: str) -> np.ndarray:
        """The (T, C) view of one video (the transpose of its channels-first block): no copy, no read."""
        offset, length = self._index[video_id]
        return self._data[offset * self.dim : (offset + length) * self.dim].reshape(self.dim, length).T


def default_store_dir(data_cfg: DataConfig) -> Path:
    """``data.store_dir``, else a ``store`` folder beside the first stream's folder."""
    if data_cfg.store_dir is not None:
        return Path(data_cfg.store_dir)
    return Path(data_cfg.streams[data_cfg.features[0]].dir).resolve().parent / "store"


def stream_files(stream: StreamConfig) -> dict[str, Path]:
    """Every file of a stream's folder that matches its ``file_pattern``, by video id (sorted)."""
    prefix, suffix = stream.file_pattern.split("{video_id}", 1)
    folder = Path(stream.dir)
    found = {}
    for path in folder.glob(f"{prefix}*{suffix}"):
        relative = path.relative_to(folder).as_posix()
        found[relative[len(prefix) : len(relative) - len(suffix)]] = path
    return dict(sorted(found.items()))


def store_key(stream: StreamConfig, dtype: str, files: dict[str, Path]) -> str:
    """sha256 of everything a store is built from: format, dtype, stream settings, each file's stat."""
    stats = [(vid, st.st_size, st.st_mtime_ns) for vid, st in ((vid, p.stat()) for vid, p in files.items())]
    source = {
        "format": FORMAT,
        "dtype": dtype,
        "stream": {**dataclasses.asdict(stream), "dir": str(Path(stream.dir).resolve())},
        "files": stats,
    }
    return hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()


def pack(data_cfg: DataConfig) -> list[StreamStore]:
    """Build (or find) the stores of ``data.features`` now: what the runner calls once per node before
    any trial starts, and ``python -m localization.data CONFIG --pack``."""
    from localization.data.features import FeatureReader  # it opens its stores through this module

    reader = FeatureReader(dataclasses.replace(data_cfg, store=True))
    return list(reader.stores.values())


def describe(stores: list[StreamStore]) -> str:
    """One line per store: where, what, how big, built or found."""
    return "\n".join(
        f"feature store {s.stream}: {s.path} ({len(s)} videos, {s.steps} steps, {s.dtype}, "
        f"{s.nbytes / 1e9:.3f} GB; " + ("found" if s.built_s is None else f"built in {s.built_s:.1f} s") + ")"
        for s in stores
    )


def open_stores(data_cfg: DataConfig, read: Callable[[str, str], np.ndarray]) -> dict[str, StreamStore]:
    """The stores of ``data.features``, built first where missing; ``read(stream, video_id)`` reads a file."""
    return {name: open_store(data_cfg, name, lambda vid, name=name: read(name, vid)) for name in data_cfg.features}


def open_store(data_cfg: DataConfig, name: str, read: ReadStream) -> StreamStore:
    """One stream's store for the files on disk now: opened if it exists, else built (once, under a lock)."""
    stream = data_cfg.streams[name]
    files = stream_files(stream)
    if not files:
        raise DataError(f"{stream.dir}: no file matches {stream.file_pattern!r} to pack (data.streams.{name})")
    key = store_key(stream, data_cfg.store_dtype, files)
    root = default_store_dir(data_cfg)
    final = root / f"{name}-{key[:16]}"
    built_s = None
    if not _complete(final, key):
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"{root}: cannot create the feature store folder (data.store_dir): {exc}") from None
        with _locked(root / f".{final.name}.lock"):
            if not _complete(final, key):  # nobody built it while this process waited for the lock
                started = time.perf_counter()
                _build(final, key, name, stream, data_cfg.store_dtype, files, read)
                built_s = time.perf_counter() - started
                _remove_stale(root, final, stream, data_cfg.store_dtype)
    return StreamStore(final, built_s)


def _complete(path: Path, key: str) -> bool:
    index = path / INDEX_FILE
    return index.is_file() and json.loads(index.read_text()).get("key") == key


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock held while the block runs (released by the OS if the process dies)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(
    final: Path, key: str, name: str, stream: StreamConfig, dtype: str, files: dict[str, Path], read: ReadStream
) -> None:
    """Write every video into a temporary folder, then rename it to ``final`` (atomic on one filesystem)."""
    for leftover in final.parent.glob(f".{final.name}.tmp-*"):  # a crashed build's (we hold the lock)
        shutil.rmtree(leftover, ignore_errors=True)
    if final.exists():  # an incomplete or foreign folder under our name
        shutil.rmtree(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        videos, steps = [], 0
        with open(tmp / DATA_FILE, "wb") as out:
            for video_id in files:
                block = _channels_first(read(video_id), np.dtype(dtype), files[video_id], name)  # (C, T)
                out.write(memoryview(block).cast("B"))
                videos.append((video_id, steps, block.shape[1]))
                steps += block.shape[1]
            out.flush()
            os.fsync(out.fileno())
        index = {
            "key": key,
            "format": FORMAT,
            "stream": name,
            "dim": stream.dim,
            "dtype": dtype,
            "steps": steps,
            "source": _source(stream),
            "videos": videos,
        }
        (tmp / INDEX_FILE).write_text(json.dumps(index))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("packed %d videos of stream %s into %s", len(videos), name, final)


def _channels_first(rows: np.ndarray, dtype: np.dtype, path: Path, name: str) -> np.ndarray:
    """(T, C) of any float dtype -> (C, T) C-contiguous ``dtype``; refuses values the dtype cannot hold."""
    block = np.empty((rows.shape[1], rows.shape[0]), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a read-only memmap; torch only reads it
        torch.from_numpy(block).copy_(torch.from_numpy(rows).T)  # torch's blocked transpose: fast
    if not np.isfinite(block).all():
        raise DataError(
            f"{path}: values that are not finite in {dtype} (data.streams.{name}; "
            "data.store_dtype=float32 keeps values beyond float16's range)"
        )
    return block


def _remove_stale(root: Path, keep: Path, stream: StreamConfig, dtype: str) -> None:
    """Delete older stores of the same files and dtype: the files changed (readers that still map
    one keep their pages until they exit)."""
    source = _source(stream)
    for other in root.glob("*/" + INDEX_FILE):
        if other.parent == keep:
            continue
        with contextlib.suppress(OSError, ValueError):
            index = json.loads(other.read_text())
            if index.get("source") == source and index.get("dtype") == dtype:  # same folder + pattern
                shutil.rmtree(other.parent, ignore_errors=True)
                logger.info("removed the stale feature store %s", other.parent)


def _source(stream: StreamConfig) -> str:
    """The files a store packs: folder and file pattern."""
    return str(Path(stream.dir).resolve() / stream.file_pattern)
