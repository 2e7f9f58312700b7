"""The bad-input table: each kind of bad input, run through the real command line, gives
exit status 2 and ONE line on stderr naming the file and the key or path, with no traceback, no Ray
started and no MLflow run created.

Rows run in-process through ``runner.search.main`` (what ``python -m runner.search`` calls), so
``ray.is_initialized()`` can be asserted; two rows also run as real ``python -m`` subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import yaml

from localization.api import exit_status
from localization.data.synthetic import generate
from runner import search

RAY_TEMP = Path("/tmp/ray")  # Ray's default temp dir: a started Ray leaves a session_* folder here


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset (8 videos); rows that break data work on a copy."""
    return generate(tmp_path_factory.mktemp("bad-input-data"), seed=0, videos=8).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Case:
    """A folder with a search file (``search.yaml``) and data; argv and what the error must name."""

    root: Path
    data: Path
    raw: dict[str, Any]
    extra: list[str]

    @property
    def path(self) -> Path:
        return self.root / "search.yaml"

    def write(self) -> None:
        if not self.path.exists():
            self.path.write_text(yaml.safe_dump(self.raw, sort_keys=False))

    def features(self, stream: str) -> Path:
        return self.data / "features" / stream

    def annotations(self) -> dict[str, Any]:
        return json.loads((self.data / "annotations_gt.json").read_text())


def make_case(root: Path, dataset: Path) -> Case:
    data = root / "data"
    shutil.copytree(dataset, data)
    raw = yaml.safe_load((data / "config.yaml").read_text())
    raw["data"]["annotations"] = str(data / "annotations_gt.json")
    for name in ("i3d", "slowfast"):
        raw["data"]["streams"][name]["dir"] = str(data / "features" / name)
    raw.update(
        experiment="bad",
        resources={"cpu": 1, "gpu": 0},
        search={
            "num_samples": 2,
            "scheduler": {"type": "fifo"},
            "space": {"train.lr": {"loguniform": [5.0e-4, 3.0e-3]}},
        },
    )
    return Case(root, data, raw, [])


def space(case: Case, key: str, dist: Any) -> None:
    case.raw["search"]["space"][key] = dist


# Each row: (id, edit of the case -> the substrings the error line must hold)
Edit = Callable[[Case], list[str]]


def yaml_syntax(c: Case) -> list[str]:
    c.path.write_text("experiment: bad\nsearch:\n  space: {train.lr: [\n")
    return [str(c.path), "YAML syntax error (line"]


def unknown_key(c: Case) -> list[str]:
    c.raw["train"]["lrr"] = 1.0e-3
    return [str(c.path), "train.lrr: unknown key"]


def wrong_type(c: Case) -> list[str]:
    c.raw["train"]["epochs"] = [4]
    return [str(c.path), "train.epochs: expected an integer"]


def string_for_number(c: Case) -> list[str]:
    c.raw["train"]["lr"] = "fast"
    return [str(c.path), "train.lr: expected a number"]


def empty_choice(c: Case) -> list[str]:
    space(c, "train.batch_size", {"choice": []})
    return [str(c.path), "search.space.train.batch_size: choice needs a non-empty list"]


def empty_interval(c: Case) -> list[str]:
    space(c, "test.nms_sigma", {"uniform": [0.5, 0.5]})
    return [str(c.path), "search.space.test.nms_sigma: uniform needs low < high"]


def postprocess_training_key(c: Case) -> list[str]:
    c.raw["search"]["postprocess"] = {"trials": 4, "space": {"train.lr": {"uniform": [0.1, 0.2]}}}
    return [str(c.path), "search.postprocess.space.train.lr: not a post-processing setting"]


def postprocess_candidate_shaping_key(c: Case) -> list[str]:
    c.raw["search"]["postprocess"] = {"trials": 4, "space": {"test.pre_nms_topk": {"int": [100, 5000]}}}
    return [str(c.path), "search.postprocess.space.test.pre_nms_topk: not a post-processing setting"]


def postprocess_bad_value(c: Case) -> list[str]:
    c.raw["search"]["postprocess"] = {"trials": 4, "space": {"test.nms_sigma": {"uniform": [-1.0, 0.5]}}}
    return [str(c.path), "search.postprocess.space.test.nms_sigma: with test.nms_sigma=-1.0"]


def postprocess_without_trials(c: Case) -> list[str]:
    c.raw["search"]["postprocess"] = {"space": {"test.nms_sigma": {"uniform": [0.3, 0.9]}}}
    return [str(c.path), "search.postprocess.trials: expected an integer >= 1"]


def postprocess_with_a_loss_metric(c: Case) -> list[str]:
    c.raw["search"].update(metric="loss", mode="min")
    c.raw["search"]["postprocess"] = {"trials": 4, "space": {"test.nms_sigma": {"uniform": [0.3, 0.9]}}}
    return [str(c.path), "search.postprocess: needs a mAP search.metric"]


def inverted_bounds(c: Case) -> list[str]:
    space(c, "train.lr", {"uniform": [0.5, 0.1]})
    return [str(c.path), "search.space.train.lr: uniform needs low < high"]


def log_bound_not_positive(c: Case) -> list[str]:
    space(c, "train.lr", {"loguniform": [0.0, 1.0e-3]})
    return [str(c.path), "search.space.train.lr: a log-scale distribution needs low > 0"]


def unknown_stream(c: Case) -> list[str]:
    c.raw["data"]["features"] = ["i3d", "c3d"]
    return [str(c.path), "data.features: unknown stream 'c3d'"]


def unknown_searched_stream(c: Case) -> list[str]:
    space(c, "data.features", {"choice": [["i3d"], ["c3d"]]})
    return [str(c.path), "search.space.data.features", "unknown stream 'c3d'"]


def unknown_space_key(c: Case) -> list[str]:
    space(c, "train.lrate", {"uniform": [0.1, 0.2]})
    return [str(c.path), "search.space.train.lrate: not a run-config value"]


def missing_annotation_file(c: Case) -> list[str]:
    (c.data / "annotations_gt.json").unlink()
    return [str(c.data / "annotations_gt.json"), "file not found (data.annotations)"]


def json_without_database(c: Case) -> list[str]:
    (c.data / "annotations_gt.json").write_text(json.dumps({"version": "1.3", "videos": {}}))
    return [str(c.data / "annotations_gt.json"), "database: missing"]


def label_id_inconsistent(c: Case) -> list[str]:
    raw = c.annotations()  # ids need not be contiguous (unused ids are fine), but one id per label
    anns = [ann for entry in raw["database"].values() for ann in entry["annotations"] if ann["label_id"] == 3]
    anns[-1]["label_id"] = 99
    (c.data / "annotations_gt.json").write_text(json.dumps(raw))
    return [str(c.data / "annotations_gt.json"), ".label_id: label", "has id 99 here but 3 elsewhere"]


def missing_feature_dir(c: Case) -> list[str]:
    shutil.rmtree(c.features("slowfast"))
    return [str(c.features("slowfast")), "feature directory not found (data.streams.slowfast.dir)"]


def wrong_feature_dim(c: Case) -> list[str]:
    # the LAST validation video: a check of the first file only would miss it
    video_id = [v for v, e in c.annotations()["database"].items() if e["subset"] == "validation"][-1]
    path = c.features("i3d") / f"{video_id}.npy"
    np.save(path, np.zeros((40, 31), dtype=np.float32))
    return [str(path), "expected dim 32 (data.streams.i3d.dim), got 31"]


def unreadable_feature_file(c: Case) -> list[str]:
    video_id = next(iter(c.annotations()["database"]))
    path = c.features("slowfast") / f"{video_id}.npy"
    path.write_bytes(b"not a numpy file")
    return [str(path), "cannot read as .npy (data.streams.slowfast)"]


def empty_subset(c: Case) -> list[str]:
    c.raw["data"]["val_subset"] = "testing"
    return [str(c.data / "annotations_gt.json"), "no video has subset 'testing'"]


def max_seq_len_vs_strides(c: Case) -> list[str]:
    c.raw["data"]["max_seq_len"] = 250
    return [str(c.path), "data.max_seq_len: 250 is not divisible by"]


def num_samples_zero(c: Case) -> list[str]:
    c.raw["search"]["num_samples"] = 0
    return [str(c.path), "search.num_samples: must be >= 1"]


def num_samples_flag_negative(c: Case) -> list[str]:
    c.extra = ["--num-samples", "-1"]
    return [str(c.path), "search.num_samples: must be >= 1, got -1"]


def selection_fraction(c: Case) -> list[str]:
    c.raw["search"]["selection"] = {"holdout_fraction": 1.0, "seed": 0}
    return [str(c.path), "search.selection.holdout_fraction: must be in (0, 1)"]


def unreachable_address(c: Case) -> list[str]:
    port = free_port()
    c.extra = ["--address", f"127.0.0.1:{port}"]
    return [f"--address 127.0.0.1:{port}: no Ray cluster answers there"]


def tracking_uri_not_a_uri(c: Case) -> list[str]:
    c.raw["tracking"] = {"uri": "mlflow.db"}
    return [str(c.path), "tracking.uri: expected a URI"]


def tracking_scheme_unknown(c: Case) -> list[str]:
    c.raw["tracking"] = {"uri": "foo://bar"}
    return ["tracking.uri foo://bar: tracking store not usable"]


def tracking_server_down(c: Case) -> list[str]:
    uri = f"http://127.0.0.1:{free_port()}"
    c.raw["tracking"] = {"uri": uri}
    return [f"tracking.uri {uri}: no tracking server answers there"]


def storage_not_writable(c: Case) -> list[str]:
    blocker = c.root / "a-file"
    blocker.write_text("")
    c.extra = ["--storage-path", str(blocker / "ray_results")]
    return [f"--storage-path {blocker / 'ray_results'}: {blocker} is not a folder"]


def resume_nothing(c: Case) -> list[str]:
    c.extra = ["--resume"]
    return ["--resume: no search of experiment 'bad' to resume under", str(c.root / "ray_results")]


def missing_search_file(c: Case) -> list[str]:
    c.path.unlink()
    return [str(c.path), "file not found"]


def override_without_value(c: Case) -> list[str]:
    c.extra = ["--set", "train.lr"]
    return ["--set: expected dotted.key=value, got 'train.lr'"]


ROWS: list[Edit] = [
    postprocess_training_key,
    postprocess_candidate_shaping_key,
    postprocess_bad_value,
    postprocess_without_trials,
    postprocess_with_a_loss_metric,
    yaml_syntax,
    unknown_key,
    wrong_type,
    string_for_number,
    empty_choice,
    empty_interval,
    inverted_bounds,
    log_bound_not_positive,
    unknown_stream,
    unknown_searched_stream,
    unknown_space_key,
    missing_annotation_file,
    json_without_database,
    label_id_inconsistent,
    missing_feature_dir,
    wrong_feature_dim,
    unreadable_feature_file,
    empty_subset,
    max_seq_len_vs_strides,
    num_samples_zero,
    num_samples_flag_negative,
    selection_fraction,
    unreachable_address,
    tracking_uri_not_a_uri,
    tracking_scheme_unknown,
    tracking_server_down,
    storage_not_writable,
    resume_nothing,
    missing_search_file,
    override_without_value,
]


def ray_sessions() -> set[str]:
    return {p.name for p in RAY_TEMP.glob("session_*")} if RAY_TEMP.is_dir() else set()


def mlflow_runs(root: Path) -> int:
    """Runs in the embedded store under ``root`` (0 when it was never created)."""
    database = root / "mlflow" / "mlflow.db"
    if not database.exists():
        return 0
    with sqlite3.connect(database) as connection:
        return connection.execute("select count(*) from runs").fetchone()[0]


def prepare(edit: Edit, tmp_path: Path, dataset: Path) -> tuple[Case, list[str]]:
    case = make_case(tmp_path, dataset)
    if edit is not yaml_syntax and edit is not missing_search_file:
        expected = edit(case)
        case.write()
    else:
        case.write()
        expected = edit(case)
    return case, expected


def assert_nothing_started(case: Case, sessions_before: set[str]) -> None:
    assert not ray.is_initialized()
    assert ray_sessions() == sessions_before  # no Ray session was started
    assert not (case.root / "ray_results").exists()
    assert mlflow_runs(case.root) == 0


@pytest.mark.parametrize("edit", ROWS, ids=[row.__name__ for row in ROWS])
def test_bad_input_is_one_line_exit_2_and_starts_nothing(
    edit: Edit, tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    case, expected = prepare(edit, tmp_path, dataset)
    sessions = ray_sessions()
    assert exit_status(search.main, [str(case.path), *case.extra]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err, captured.err
    assert "Traceback" not in captured.err + captured.out
    for text in expected:
        assert text in err, (text, err)
    assert_nothing_started(case, sessions)


@pytest.mark.parametrize("edit", [wrong_feature_dim, unreachable_address], ids=["feature_dim", "address"])
def test_bad_input_through_python_dash_m(edit: Edit, tmp_path: Path, dataset: Path) -> None:
    """The same contract from a real ``python -m runner.search`` process."""
    case, expected = prepare(edit, tmp_path, dataset)
    sessions = ray_sessions()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(
        [sys.executable, "-m", "runner.search", str(case.path), *case.extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert all(text in lines[0] for text in expected), lines[0]
    assert_nothing_started(case, sessions)
