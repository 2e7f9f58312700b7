"""The feature store: same crops as the files, rebuilt when a file changes, one store when builds race."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from localization.config.schema import DataConfig
from localization.data.__main__ import main as data_main
from localization.data.annotations import load_subset
from localization.data.dataset import TrainingDataset, build_loader, collate
from localization.data.feature_store import pack, store_key, stream_files
from localization.data.features import FeatureReader
from localization.errors import DataError


def videos(count: int, seed: int = 0) -> tuple[dict, dict]:
    """``count`` training videos of random length; stream a (dim 3) and b (dim 2, one step fewer)."""
    rng = np.random.default_rng(seed)
    database, arrays = {}, {"a": {}, "b": {}}
    for i in range(count):
        steps = int(rng.integers(20, 120))
        database[f"v{i}"] = {
            "subset": "training",
            "duration": steps * 16 / 30.0,
            "fps": 30.0,
            "annotations": [{"segment": [1.0, 3.0], "label": "x", "label_id": 0}],
        }
        arrays["a"][f"v{i}"] = rng.standard_normal((steps, 3)).astype(np.float32)
        arrays["b"][f"v{i}"] = rng.standard_normal((2, steps - 1)).astype(np.float16)  # [C, T] on disk
    return database, arrays


def video(video_id: str) -> SimpleNamespace:
    """What FeatureReader.load needs of a video (native grids: the duration is not used)."""
    return SimpleNamespace(video_id=video_id, duration=10.0, fps=30.0)


def config(tiny_data, database: dict, arrays: dict, **fields) -> DataConfig:
    cfg = tiny_data(database, arrays, max_seq_len=64, **fields)
    cfg.streams["b"].layout = "ct"
    return cfg


@pytest.fixture
def data(tiny_data) -> DataConfig:
    return config(tiny_data, *videos(6))


def stores_of(cfg: DataConfig) -> list[Path]:
    """Every entry of the store folder (stores, temporary folders), lock files aside."""
    root = Path(cfg.streams["a"].dir).parent / "store"
    return sorted(p for p in root.iterdir() if not p.name.endswith(".lock"))


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_store_crops_equal_the_files_crops(data, dtype):
    by_file = TrainingDataset(data, load_subset(data, "training"), seed=3)
    stored_cfg = dataclasses.replace(data, store=True, store_dtype=dtype)
    stored = TrainingDataset(stored_cfg, load_subset(stored_cfg, "training"), seed=3)
    assert stored.lengths == by_file.lengths  # trimmed to the shorter stream, as from the files
    for epoch in (0, 1):
        by_file.set_epoch(epoch)
        stored.set_epoch(epoch)
        for i in range(len(by_file)):
            want, got = by_file[i]["feats"], stored[i]["feats"]
            assert got.dtype == getattr(torch, dtype) and got.shape == want.shape
            if dtype == "float32":
                torch.testing.assert_close(got, want, rtol=0, atol=0)
            else:
                torch.testing.assert_close(got.float(), want, rtol=1e-3, atol=1e-3)  # float16 rounding
    loader = build_loader(stored, 4, shuffle=True, num_workers=0, seed=0, pad_multiple=16, drop_last=False)
    order = list(loader.sampler)
    for start, batch in zip(range(0, len(order), 4), loader, strict=True):  # crops read straight into the batch
        want = collate([by_file[i] for i in order[start : start + 4]], pad_multiple=16)
        assert batch["feats"].dtype == getattr(torch, dtype)  # the batch keeps the store's dtype
        torch.testing.assert_close(batch["feats"].float(), want["feats"], rtol=1e-3, atol=1e-3)
        assert torch.equal(batch["masks"], want["masks"]) and batch["video_ids"] == want["video_ids"]
        for key in ("segments", "labels"):
            assert all(torch.equal(x, y) for x, y in zip(batch[key], want[key], strict=True))


def test_a_changed_file_is_noticed_and_rebuilds_the_store(data):
    cfg = dataclasses.replace(data, store=True)
    (first_a, first_b) = pack(cfg)
    assert (first_a.built_s is not None, first_b.built_s is not None) == (True, True)
    assert [s.built_s for s in pack(cfg)] == [None, None]  # same files: found, not rebuilt

    path = Path(cfg.streams["a"].dir) / "v2.npy"
    new = np.full_like(np.load(path), 7.0)
    np.save(path, new)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))  # mtime changes even on coarse clocks
    (second_a, second_b) = pack(cfg)
    assert second_a.built_s is not None and second_a.path != first_a.path  # stream a rebuilt ...
    assert second_b.built_s is None and second_b.path == first_b.path  # ... b untouched
    assert not first_a.path.exists()  # the stale store of stream a is gone
    np.testing.assert_array_equal(FeatureReader(cfg).load(video("v2"), 0, 5)[:3], new[:5].T)
    assert [p.name for p in stores_of(cfg)] == sorted([second_a.path.name, second_b.path.name])


def _pack_in_child(cfg: DataConfig, queue: multiprocessing.Queue) -> None:
    queue.put([str(s.path) for s in pack(cfg)])


def test_two_processes_building_the_same_store_at_once_end_with_one_good_store(tiny_data):
    database, arrays = videos(200, seed=1)
    cfg = config(tiny_data, database, arrays, store=True)
    root = Path(cfg.streams["a"].dir).parent / "store"
    key = store_key(cfg.streams["a"], "float16", stream_files(cfg.streams["a"]))
    (root / f".a-{key[:16]}.tmp-999999").mkdir(parents=True)  # what a build that crashed leaves
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    children = [context.Process(target=_pack_in_child, args=(cfg, queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
        assert child.exitcode == 0
    results = [queue.get(timeout=5) for _ in children]
    assert results[0] == results[1]  # both use the same store
    assert [p.name for p in stores_of(cfg)] == sorted(Path(p).name for p in results[0])  # no leftovers
    reader = FeatureReader(cfg)
    assert [s.built_s for s in reader.stores.values()] == [None, None]
    for video_id, array in arrays["a"].items():
        np.testing.assert_allclose(
            reader.load(video(video_id))[:3], array[: arrays["b"][video_id].shape[1]].T, atol=4e-3
        )


def test_a_crashed_build_leaves_no_store_and_the_next_build_cleans_up(data):
    cfg = dataclasses.replace(data, store=True)
    bad = Path(cfg.streams["a"].dir) / "v5.npy"
    np.save(bad, np.full((30, 3), 1e6, dtype=np.float32))  # beyond float16's range
    with pytest.raises(DataError, match=r"v5\.npy: values that are not finite in float16 .*store_dtype=float32"):
        pack(cfg)
    assert stores_of(cfg) == []  # nothing half-written
    assert pack(dataclasses.replace(cfg, store_dtype="float32"))[0].dtype == np.float32


def test_pack_command_prints_the_store_size(data, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump(
            {"data": {**json.loads(json.dumps(dataclasses.asdict(data))), "store": True, "max_seq_len": 2304}}
        )
    )
    assert data_main([str(config), "--pack", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    steps = sum(len(a) - 1 for a in videos(6)[1]["a"].values())  # b is one step shorter
    assert [(s["stream"], s["videos"], s["dtype"]) for s in out] == [("a", 6, "float16"), ("b", 6, "float16")]
    assert out[1]["steps"] == steps and out[1]["bytes"] == steps * 2 * 2
    assert data_main([str(config), "--pack"]) == 0
    assert "feature store a: " in capsys.readouterr().out


def test_store_of_npz_files_with_downsampling_matches_the_files(tiny_data):
    database, arrays = videos(3, seed=2)
    cfg = config(tiny_data, database, arrays)
    for video_id, array in arrays["a"].items():  # stream a as .npz, every 2nd step kept
        np.savez(Path(cfg.streams["a"].dir) / f"{video_id}.npz", feats=array)
        arrays["b"][video_id] = arrays["b"][video_id][:, ::2]
        np.save(Path(cfg.streams["b"].dir) / f"{video_id}.npy", arrays["b"][video_id])
    cfg.streams["a"].file_pattern, cfg.streams["a"].downsample = "{video_id}.npz", 2
    stored = FeatureReader(dataclasses.replace(cfg, store=True, store_dtype="float32"))
    for video_id in arrays["a"]:
        np.testing.assert_array_equal(stored.load(video(video_id), 1), FeatureReader(cfg).load(video(video_id), 1))
