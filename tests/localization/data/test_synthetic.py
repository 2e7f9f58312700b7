"""The synthetic dataset generator, and ``python -m localization.data`` on what it writes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from localization import cli
from localization.config.loading import load_config
from localization.data.__main__ import main as data_main
from localization.data.annotations import load_subset
from localization.data.dataset import InferenceDataset
from localization.data.synthetic import CLASS_NAMES, generate


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120)


def test_generate_writes_a_consistent_dataset(tmp_path):
    config = generate(tmp_path / "d", seed=3, videos=12)
    assert config == (tmp_path / "d" / "config.yaml").resolve()
    cfg = load_config(config)
    assert cfg.data.features == ["i3d", "slowfast"] and Path(cfg.data.annotations).is_absolute()
    database = json.loads(Path(cfg.data.annotations).read_text())["database"]
    assert sum(v["subset"] == "training" for v in database.values()) == 9
    assert {v["fps"] for v in database.values()} <= {24.0, 25.0, 30.0}
    for video_id, entry in database.items():
        i3d = np.load(Path(cfg.data.streams["i3d"].dir) / f"{video_id}.npy")
        slowfast = np.load(Path(cfg.data.streams["slowfast"].dir) / f"{video_id}.npy")
        assert i3d.shape == ((round(entry["duration"] * entry["fps"]) - 16) // 16 + 1, 32)
        assert slowfast.shape == (i3d.shape[0] - 1, 48)  # 32-frame clips: one step fewer
        assert i3d.dtype == slowfast.dtype == np.float32
        for ann in entry["annotations"]:
            assert CLASS_NAMES[ann["label_id"]] == ann["label"]
    injected = json.loads((tmp_path / "d" / "injected_dirty.json").read_text())
    for subset in ("training", "validation"):
        annotations = load_subset(cfg.data, subset)
        assert annotations.dropped == injected[subset] and min(injected[subset].values()) >= 1
        assert all(len(v.segments) >= 1 for v in annotations.videos)  # 1-6 clean actions each


def test_generate_is_seeded(tmp_path):
    first, again, other = (
        generate(tmp_path / name, seed=seed, videos=6).parent for name, seed in (("a", 1), ("b", 1), ("c", 2))
    )
    for relative in ("annotations_gt.json", "features/i3d/v_00000003.npy", "features/slowfast/v_00000005.npy"):
        assert (first / relative).read_bytes() == (again / relative).read_bytes()
    assert (first / "annotations_gt.json").read_bytes() != (other / "annotations_gt.json").read_bytes()


def test_streams_carry_complementary_class_information(synthetic_dataset):
    """i3d separates the 4 groups but not the 2 subtypes; slowfast the other way round."""
    data_cfg = load_config(synthetic_dataset).data
    dataset = InferenceDataset(data_cfg, load_subset(data_cfg, "training"))
    sums, counts = np.zeros((8, 80)), np.zeros(8)
    for index in range(len(dataset)):
        item = dataset[index]
        feats = item["feats"].numpy()  # (80, T)
        for (start, end), label in zip(item["segments"].numpy(), item["labels"].tolist(), strict=True):
            inside = feats[:, int(np.ceil(start)) + 1 : int(np.floor(end))]  # steps well inside the action
            sums[label] += inside.sum(1)
            counts[label] += inside.shape[1]
    means = (sums / counts[:, None]).reshape(4, 2, 80)  # (group, subtype, C)

    def spread(part: slice) -> tuple[float, float]:
        within_group = np.linalg.norm(means[:, 0, part] - means[:, 1, part], axis=-1).mean()
        across_groups = np.mean(
            [
                np.linalg.norm(means[g, :, part] - means[k, :, part], axis=-1).mean()
                for g in range(4)
                for k in range(4)
                if g != k
            ]
        )
        return within_group, across_groups

    i3d_subtype, i3d_group = spread(slice(0, 32))
    sf_subtype, sf_group = spread(slice(32, 80))
    assert i3d_group > 1.0 and i3d_subtype < 0.3 * i3d_group
    assert sf_subtype > 1.0 and sf_group < 0.3 * sf_subtype


def test_data_cli_reports_the_injected_dirty_counts(synthetic_dataset, capsys):
    result = run_module("localization.data", str(synthetic_dataset), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    injected = json.loads((synthetic_dataset.parent / "injected_dirty.json").read_text())
    for subset, videos in (("training", 120), ("validation", 40)):
        assert report[subset]["dropped"] == injected[subset]
        assert report[subset]["videos"] == report[subset]["videos_with_features"] == videos
        assert report[subset]["dims"] == {"i3d": 32, "slowfast": 48} and report[subset]["dim"] == 80
        length = report[subset]["feature_length"]
        assert 63 <= length["min"] <= length["median"] <= length["max"] <= 255
        for stream in ("i3d", "slowfast"):  # clips end at most 15 frames before the video does
            coverage = report[subset]["coverage"][stream]
            assert 0.95 < coverage["min"] <= coverage["median"] <= coverage["max"] <= 1.001  # durations: 3 decimals
    database = json.loads(Path(load_config(synthetic_dataset).data.annotations).read_text())["database"]
    raw = sum(len(v["annotations"]) for v in database.values() if v["subset"] == "training")
    assert report["training"]["instances"] == raw - sum(injected["training"].values())
    assert report["classes"] == CLASS_NAMES and report["class_map"] == "label_id"
    assert report["warnings"] == []
    data_main([str(synthetic_dataset)])
    out = capsys.readouterr().out
    assert "training: 120 videos, 120 with features (0 skipped)" in out
    assert out.endswith("classes: 8 (from label_id)\n")


def test_data_cli_bad_input_is_one_line_and_exit_2(synthetic_dataset, tmp_path, capsys):
    result = run_module("localization.data", str(synthetic_dataset), "--set", "data.streams.i3d.dim=64")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert "v_00000000.npy: expected dim 64 (data.streams.i3d.dim), got 32" in result.stderr
    missing = tmp_path / "missing.json"
    with pytest.raises(SystemExit) as exit_info:
        cli.run(data_main, [str(synthetic_dataset), "--set", f"data.annotations={missing}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: {missing}: file not found (data.annotations)\n"


def test_synthetic_cli(tmp_path):
    result = run_module("localization.synthetic", "--out", str(tmp_path / "s"), "--videos", "8", "--seed", "4")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str((tmp_path / "s" / "config.yaml").resolve())
    assert len(list((tmp_path / "s" / "features" / "slowfast").glob("*.npy"))) == 8
