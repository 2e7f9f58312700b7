"""Shared fixtures: a generated synthetic dataset, and a factory for tiny hand-made data sets."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from localization.config.schema import DataConfig, StreamConfig
from localization.data.synthetic import generate


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic FineAction look-alike (160 videos, seed 0); returns its config.yaml path.

    Read-only for tests: it is shared by the whole session. ``injected_dirty.json`` sits beside it.
    """
    return generate(tmp_path_factory.mktemp("synthetic"), seed=0, videos=160)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Any]:
    """A local Ray of 2 CPUs for one test module, shut down after it (the runner's tests)."""
    from runner.tune import cluster  # Ray loads only for the modules that use it

    info = cluster.start(num_cpus=2, object_store_bytes=256 * 1024**2)
    yield info
    cluster.stop(info)


TinyData = Callable[..., DataConfig]


@pytest.fixture
def tiny_data(tmp_path: Path) -> TinyData:
    """Write a hand-made annotation JSON and feature files; return a DataConfig pointing at them.

    ``make(database, arrays={stream: {video_id: array}}, streams={name: StreamConfig kwargs},
    **data_fields)``. ``database`` is the value of "database"; arrays are saved as given (dtype and
    layout are the caller's). Default streams: ``a`` (dim 3, 16-frame clips) and ``b`` (dim 2,
    32-frame clips), both stride 16, concatenated as [a, b].
    """

    def make(
        database: dict[str, Any],
        arrays: dict[str, dict[str, np.ndarray]] | None = None,
        streams: dict[str, dict[str, Any]] | None = None,
        **data_fields: Any,
    ) -> DataConfig:
        annotations = tmp_path / "annotations.json"
        annotations.write_text(json.dumps({"database": database}))
        streams = (
            streams if streams is not None else {"a": {"dim": 3, "num_frames": 16}, "b": {"dim": 2, "num_frames": 32}}
        )
        stream_cfgs = {}
        for name, fields in streams.items():
            folder = tmp_path / "features" / name
            folder.mkdir(parents=True, exist_ok=True)
            stream_cfgs[name] = StreamConfig(dir=str(folder), **fields)
        for name, per_video in (arrays or {}).items():
            for video_id, array in per_video.items():
                np.save(tmp_path / "features" / name / f"{video_id}.npy", array)
        fields = {
            "annotations": str(annotations),
            "streams": stream_cfgs,
            "features": list(streams),
            "cache_features": False,
            **data_fields,
        }
        return DataConfig(**fields)

    return make


def synthetic_data_section(dataset_dir: Path) -> dict[str, Any]:
    """The ``data`` section of the config a generated synthetic dataset ships with (absolute paths)."""
    return yaml.safe_load((dataset_dir / "config.yaml").read_text())["data"]


def write_tiny_search(
    root: Path, experiment: str, resources: dict[str, float], trials: int, epochs: int = 4, **search: Any
) -> Path:
    """A FIFO random search of ``trials`` trials (all at once unless ``search`` says otherwise) over a
    12-video synthetic set in ``root``, with a 16-wide model and its own SQLite store
    ``root/mlflow/mlflow.db``; returns the file's path."""
    raw = yaml.safe_load(generate(root / "data", seed=0, videos=12).read_text())
    raw["model"].update(embd_dim=16, fpn_dim=16, head_dim=16)
    raw["train"].update(epochs=epochs, warmup_epochs=0, batch_size=4, eval_every=epochs)
    raw.update(
        experiment=experiment,
        resources=resources,
        tracking={"uri": f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"},
        search={
            "num_samples": trials,
            "max_concurrent": trials,
            "sampler": "random",
            "scheduler": {"type": "fifo"},
            "space": {"train.lr": {"loguniform": [1.0e-3, 3.0e-3]}},
            **search,
        },
    )
    path = root / "search.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# A model small enough for a search test to train in seconds on one CPU (width 16, 3 pyramid levels).
TINY_MODEL = {
    "embd_dim": 16,
    "fpn_dim": 16,
    "head_dim": 16,
    "n_head": 4,
    "n_mha_win_size": 9,
    "backbone_arch": [2, 1, 3],
    "regression_range": [[0, 4], [4, 8], [8, 16], [16, 10000]],
}
