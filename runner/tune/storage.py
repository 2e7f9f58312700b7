"""Where a search keeps Ray Tune's results and checkpoints: a local or shared folder, or object storage.

Since Ray 2.7 every node writes its trials' checkpoints straight to the storage path (nothing is
synced to the head), so on a cluster it must be a folder every node mounts or object storage.
``--storage-path`` is resolved once into a pyarrow filesystem and a path on it (:func:`resolve`):
a local path, or a URI pyarrow accepts (``s3://bucket/prefix``, with ``endpoint_override``,
``scheme``, ``region``... query parameters for S3-compatible stores; ``gs://bucket/prefix``).
Ray's RunConfig gets the same filesystem, and every read of a search's or a trial's folder (the
resume lookup, reports, checkpoints to upload, the restore fix) goes through a :class:`Location`,
so the runner behaves the same on a local disk, NFS or a bucket. Credentials come from the
environment, as the cloud SDKs read them (``AWS_ACCESS_KEY_ID``...); they are never part of the URI.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow
import pyarrow.fs as pafs

from localization.api import InputError

# pyarrow's filesystem type names -> the URI scheme that names them
SCHEMES = {"s3": "s3", "gcs": "gs"}


@dataclass(frozen=True)
class Location:
    """A folder or file on a storage filesystem: the filesystem, the path on it, and how to show it."""

    fs: pafs.FileSystem
    path: str  # on `fs`: an absolute local path, or "bucket/prefix/..." on object storage
    query: str = ""  # the URI's query (endpoint_override=...), kept so that `uri` resolves to the same store

    @property
    def local(self) -> bool:
        return self.fs.type_name == "local"

    @property
    def uri(self) -> str:
        """The path for people and MLflow tags; :func:`resolve` of it gives this location back."""
        if self.local:
            return self.path
        scheme = SCHEMES.get(self.fs.type_name, self.fs.type_name)
        return f"{scheme}://{self.path}" + (f"?{self.query}" if self.query else "")

    @property
    def name(self) -> str:
        return posixpath.basename(self.path.rstrip("/"))

    @property
    def parent(self) -> Location:
        return Location(self.fs, posixpath.dirname(self.path.rstrip("/")), self.query)

    def __truediv__(self, name: str) -> Location:
        return Location(self.fs, posixpath.join(self.path, name), self.query)

    def __str__(self) -> str:
        return self.uri

    def _info(self) -> pafs.FileInfo:
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._info().type == pafs.FileType.File

    def size(self) -> int:
        """Bytes of a file (0 when missing)."""
        info = self._info()
        return info.size if info.type == pafs.FileType.File else 0

    def glob(self, pattern: str) -> list[Location]:
        """The entries directly inside this folder whose names match ``pattern``, in name order."""
        selector = pafs.FileSelector(self.path, allow_not_found=True)
        names = sorted(posixpath.basename(info.path) for info in self.fs.get_file_info(selector))
        return [self / name for name in names if fnmatch.fnmatchcase(name, pattern)]

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def write_bytes(self, data: bytes) -> None:
        self.fs.create_dir(self.parent.path, recursive=True)
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def delete(self) -> None:
        """Remove this file or folder (with its contents); nothing if it is missing."""
        info = self._info()
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path)

    @contextmanager
    def as_local(self) -> Iterator[Path]:
        """This folder as a local path: itself on a local filesystem, else a temporary download."""
        if self.local:
            yield Path(self.path)
            return
        with tempfile.TemporaryDirectory(prefix="storage-") as tmp:
            pafs.copy_files(self.path, tmp, source_filesystem=self.fs, destination_filesystem=pafs.LocalFileSystem())
            yield Path(tmp)


def resolve(storage_path: str | os.PathLike[str]) -> Location:
    """``--storage-path`` as a Location; InputError (one line) if pyarrow cannot use it.

    A plain path becomes absolute (Ray needs one) and must be creatable: its nearest existing
    folder must be one this process may write into. A URI is resolved by pyarrow, which checks
    its form here; whether every node reaches it is runner.tune.storage_check's question.
    """
    text = os.fspath(storage_path)
    parts = urlsplit(text)
    if parts.scheme in ("", "file"):
        return Location(pafs.LocalFileSystem(), str(_writable_folder(Path(parts.path if parts.scheme else text))))
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        raise InputError(f"--storage-path {text}: {str(exc).strip().splitlines()[0]}") from None
    if fs.type_name == "local":
        return Location(fs, str(_writable_folder(Path(path))))
    return Location(fs, path.rstrip("/"), parts.query)


def _writable_folder(path: Path) -> Path:
    storage = path.expanduser().resolve()
    existing = next(p for p in (storage, *storage.parents) if p.exists())
    if not existing.is_dir():
        raise InputError(f"--storage-path {storage}: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--storage-path {storage}: {existing} is not writable")
    return storage
