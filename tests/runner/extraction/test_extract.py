"""``python -m runner.extract`` on real encoded videos, a real local Ray and a real SQLite MLflow store.

The seeded R50 on 32 x 32 frames keeps each video to a second or two on the build machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import yaml
from mlflow.tracking import MlflowClient

from localization.api import exit_status
from localization.data.__main__ import main as data_main
from localization.synthetic import main as synthetic_main
from runner.extract import main as extract_main
from runner.extraction.folder import MANIFEST_FILE, SETTINGS_FILE
from runner.names import ROLE, ROLE_EXTRACTION

REPO = Path(__file__).resolve().parents[3]


def num_steps(frames: int) -> int:
    return max(1, (frames - 32) // 16 + 1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four synthetic videos (24/25/30 fps) and their extraction file, tracking into a SQLite store."""
    root = tmp_path_factory.mktemp("videos")
    synthetic_main(["--out", str(root), "--format", "video", "--videos", "4", "--seed", "2"])
    extract = yaml.safe_load((root / "extract.yaml").read_text())
    extract["resources"] = {"cpu": 1, "model_threads": 1, "batch_size": 4}
    extract["tracking"] = {"uri": f"sqlite:///{root / 'mlflow.db'}"}
    (root / "extract.yaml").write_text(yaml.safe_dump(extract))
    return root


def manifest(out: Path) -> dict[str, dict]:
    lines = [json.loads(line) for line in (out / MANIFEST_FILE).read_text().splitlines()]
    return {entry["video_id"]: entry for entry in lines}


def test_broken_videos_are_recorded_the_others_finish_and_a_rerun_skips(ray_cluster, dataset, tmp_path, capsys):
    from localization.video.synthetic import write_video

    videos = tmp_path / "videos"
    videos.mkdir()
    for fps in (24.0, 25.0):
        write_video(videos / f"fps{fps:g}.mp4", 70, fps, np.array([[10, 40]]), np.array([1]))
    write_video(videos / "short.mp4", 20, 30.0, np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64))
    (videos / "damaged.mp4").write_bytes((videos / "fps25.mp4").read_bytes()[:400])  # cut before any frame
    (videos / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    args = [str(dataset / "extract.yaml"), "--set", f"videos={videos}", "--set", f"out={out}"]

    assert exit_status(extract_main, args) == 1
    printed = capsys.readouterr().out
    assert "failed: damaged: VideoError" in printed and "failed: empty: VideoError" in printed
    entries = manifest(out)
    assert entries["empty"]["reason"].endswith("empty.mp4: empty file")
    assert "damaged.mp4: unreadable" in entries["damaged"]["reason"]
    for video_id, native, frames in (("fps24", 24.0, 70), ("fps25", 25.0, 70), ("short", 30.0, 20)):
        entry = entries[video_id]
        expected = round(frames / native * 30)  # resampled to 30 fps
        assert (entry["status"], entry["native_fps"], entry["fps"], entry["frames"]) == ("ok", native, 30.0, expected)
        features = np.load(out / f"{video_id}.npy")
        assert features.shape == (num_steps(expected), 2304) == (entry["steps"], 2304)
        assert features.dtype == np.float16 and np.isfinite(features).all()
    settings = json.loads((out / SETTINGS_FILE).read_text())
    assert settings["grid"] == {"feat_stride": 16, "num_frames": 32, "dim": 2304, "fps": 30.0}

    client = MlflowClient(f"sqlite:///{dataset / 'mlflow.db'}")
    [run] = client.search_runs(
        [client.get_experiment_by_name("feature-extraction").experiment_id], f"tags.`{ROLE}` = '{ROLE_EXTRACTION}'"
    )
    assert run.data.params["backbone.weights_sha256"] == "seeded" and run.data.params["clip.stride"] == "16"
    assert (run.data.metrics["videos_ok"], run.data.metrics["videos_failed"]) == (3, 2)
    assert run.data.metrics["videos_per_s"] > 0
    assert {a.path for a in client.list_artifacts(run.info.run_id, "extraction")} == {
        "extraction/manifest.jsonl",
        "extraction/extraction.json",
    }

    written = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    assert extract_main(args) == 1  # the broken two are tried again and fail again
    assert "3 of 5 videos already extracted" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")} == written

    before = (out / MANIFEST_FILE).read_bytes()
    assert exit_status(extract_main, [*args, "--set", "clip.stride=8"]) == 2
    assert "extraction.json: clip.stride was 16, now 8: this folder holds another" in capsys.readouterr().err
    assert (out / MANIFEST_FILE).read_bytes() == before
    assert len(client.search_runs([run.info.experiment_id])) == 2  # the refused run created none

    fresh = tmp_path / "fresh"  # GPUs the cluster does not have: bad input, found before anything is written
    assert exit_status(extract_main, [*args[:-2], "--set", f"out={fresh}", "--set", "resources.gpu=1"]) == 2
    assert "resources.gpu: 1 model actors on GPUs, but the cluster has 0 GPUs" in capsys.readouterr().err
    assert not fresh.exists() and len(client.search_runs([run.info.experiment_id])) == 2


def test_a_killed_extraction_resumes_with_no_half_written_file(ray_cluster, dataset, tmp_path, capsys):
    """The driver is SIGKILLed once the first video is written, then run again on the same folder."""
    out = tmp_path / "out"
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "runner.extract", str(dataset / "extract.yaml"), "--set", f"out={out}"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [*command, "--address", address], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while not (out / MANIFEST_FILE).exists() or not (out / MANIFEST_FILE).read_text():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    done_before = set(manifest(out))
    assert 1 <= len(done_before) < 4
    for path in out.glob("*.npy"):  # every .npy in place is whole (written under another name, renamed)
        assert np.load(path).shape[1] == 2304

    assert extract_main([str(dataset / "extract.yaml"), "--set", f"out={out}"]) == 0
    entries = manifest(out)
    assert sorted(entries) == sorted(p.stem for p in (dataset / "videos").iterdir())
    assert all(e["status"] == "ok" for e in entries.values()) and not list(out.glob(".*"))

    # python -m localization.data reads the stream: every video covered, no warning
    capsys.readouterr()
    assert data_main([str(dataset / "config.yaml"), "--json", "--set", f"data.streams.slowfast.dir={out}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["warnings"] == []
    for subset in ("training", "validation"):
        coverage = summary[subset]["coverage"]["slowfast"]
        assert coverage["min"] > 0.9 and abs(coverage["median"] - 1) < 0.05 and coverage["max"] <= 1.0
