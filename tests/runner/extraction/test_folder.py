"""The stream's folder without Ray: settings compared, --overwrite, a torn manifest line, stale temporary files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from localization.api import InputError, StreamSettings
from runner.extraction.folder import MANIFEST_FILE, OutputFolder, settings_record


def test_overwrite_replaces_only_what_the_stream_wrote(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out")
    record = settings_record(StreamSettings(), "seeded")
    folder.start(record, overwrite=False)
    for video_id in ("a", "b"):
        folder.write_features(video_id, np.zeros((3, 2304), dtype=np.float16))
        folder.record({"video_id": video_id, "status": "ok", "steps": 3})
    (folder.path / "notes.txt").write_text("mine")
    (folder.path / ".c.npy.tmp").write_bytes(b"half")  # left by a killed run
    with (folder.path / MANIFEST_FILE).open("a") as handle:
        handle.write('{"video_id": "c", "sta')  # a line cut short by a kill
    assert folder.finished() == {"a", "b"}

    other = settings_record(StreamSettings(dtype="float32"), "seeded")
    with pytest.raises(InputError, match=r"extraction.json: dtype was 'float16', now 'float32'"):
        folder.check(other, overwrite=False)
    folder.check(record, overwrite=False)  # the same settings: fine
    changed_checkpoint = settings_record(StreamSettings(), "0" * 64)
    with pytest.raises(InputError, match=r"backbone.weights_sha256 was 'seeded'"):
        folder.check(changed_checkpoint, overwrite=False)

    folder.check(other, overwrite=True)
    folder.start(other, overwrite=True)
    assert sorted(p.name for p in folder.path.iterdir()) == ["extraction.json", "notes.txt"]
    assert json.loads(folder.settings_path.read_text())["dtype"] == "float32"
    assert folder.finished() == set()
