"""FineAction as publicly distributed: class maps, feature file types, sampling rules,
the fps switch, coverage warnings and the one subset rule, on mock files in each public layout."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from localization.config.loading import config_from_dict, load_config
from localization.config.schema import DataConfig, StreamConfig
from localization.data.annotations import load_subset, read_annotation_file
from localization.data.dataset import InferenceDataset
from localization.data.report import coverage_summary, coverage_warnings, data_warnings
from localization.data.timegrid import grid_to_seconds
from localization.errors import ConfigError, DataError
from localization.metrics import load_ground_truth


def ann(start: float, end: float, label: str, label_id: int | None = None) -> dict:
    out = {"segment": [start, end], "label": label}
    return out if label_id is None else {**out, "label_id": label_id}


def video(subset: str, duration, annotations: list[dict], **extra) -> dict:
    return {"subset": subset, "duration": duration, "annotations": annotations, **extra}


def write_file(path: Path, database: dict, **top) -> str:
    path.write_text(json.dumps({"database": database, **top}))
    return str(path)


# ------------------------------------------------------------------------------ class map


def test_without_label_id_classes_are_the_sorted_stripped_labels(tmp_path):
    database = {
        "v1": video("training", "12.5", [ann(1, 2, "swing"), ann(3, 4, "braid hair ")]),  # duration a string
        "v2": video("validation", 9.0, [ann(1, 2, "braid hair"), ann(2, 3, " apply lipstick")]),
    }
    file = read_annotation_file(write_file(tmp_path / "gt.json", database))
    assert file.class_names == ["apply lipstick", "braid hair", "swing"]  # OpenTAD's category_idx order
    assert file.class_map == "sorted labels"
    v1, v2 = file.videos
    assert v1.duration == 12.5
    assert v1.labels.tolist() == [2, 1] and v2.labels.tolist() == [1, 0]  # "braid hair " == "braid hair"


def test_trailing_space_label_matches_the_class_list(tmp_path):
    class_list = tmp_path / "category_idx.txt"
    class_list.write_text("braid hair\nswing\n")
    database = {"v": video("training", 10.0, [ann(1, 2, "braid hair ", 0), ann(3, 4, "swing", 1)])}
    file = read_annotation_file(write_file(tmp_path / "gt.json", database), str(class_list))
    assert file.class_map == "class_list" and file.videos[0].labels.tolist() == [0, 1]


def test_unused_label_ids_keep_the_count_and_get_a_name(tmp_path):
    # ids 0..4 with 1 and 3 unused in the file (a small subset, a class absent from a split)
    database = {
        "t": video("training", 9.0, [ann(1, 2, "a", 0), ann(2, 3, "c", 2)]),
        "v": video("validation", 9.0, [ann(1, 2, "e", 4)]),
    }
    file = read_annotation_file(write_file(tmp_path / "gt.json", database))
    assert file.class_map == "label_id" and len(file.class_names) == 5
    assert file.class_names[0::2] == ["a", "c", "e"]
    assert file.class_names[1] == "<label_id 1: unused, no name in the file>"
    named = read_annotation_file(write_file(tmp_path / "tax.json", database, taxonomy=list("abcde")))
    assert named.class_names == ["a", "b", "c", "d", "e"]
    mapped = [{"label_id": 1, "label": "b "}, {"label_id": 3, "label": "d"}]
    assert read_annotation_file(write_file(tmp_path / "map.json", database, taxonomy=mapped)).class_names == list(
        "abcde"
    )
    class_list = tmp_path / "classes.txt"
    class_list.write_text("a\nB\nc\nD\ne\n")  # data.class_list names the unused ids (and sets the map)
    assert read_annotation_file(tmp_path / "gt.json", str(class_list)).class_names == ["a", "B", "c", "D", "e"]
    bad = write_file(tmp_path / "clash.json", database, taxonomy=list("xbcde"))
    with pytest.raises(
        DataError, match=r"database\.t\.annotations\[0\]\.label_id: id 0 is 'a' here but 'x' in the taxonomy"
    ):
        read_annotation_file(bad)


def test_one_name_per_id_stays_enforced(tmp_path):
    database = {"v": video("training", 9.0, [ann(1, 2, "a", 0), ann(2, 3, "b ", 0)])}
    with pytest.raises(DataError, match=r"annotations\[1\]\.label_id: id 0 is used for 'b' here and for 'a'"):
        read_annotation_file(write_file(tmp_path / "gt.json", database))


def test_evaluation_ground_truth_uses_the_same_class_map(tmp_path):
    database = {"v": video("Validation ", "10", [ann(1, 2, "swing "), ann(3, 4, "braid hair")])}
    gt = load_ground_truth(write_file(tmp_path / "gt.json", database), "validation")
    assert gt.class_names == ["braid hair", "swing"] and gt.labels.tolist() == [1, 0]


# ------------------------------------------------------------------------------ the one subset rule


def test_training_and_evaluation_share_the_subset_rule(tmp_path):
    """data.val_subset: Validation selects the same videos for training, validation and the evaluator."""
    database = {"a": video("validation", 5.0, [ann(1, 2, "x", 0)]), "b": video("training", 5.0, [ann(1, 2, "x", 0)])}
    path = write_file(tmp_path / "gt.json", database)
    cfg = DataConfig(annotations=path, streams={}, features=[])
    for name in ("Validation", "VALIDATION", " validation"):
        assert [v.video_id for v in load_subset(cfg, name).videos] == ["a"]
        assert load_ground_truth(path, name).video_ids == ["a"]
    with pytest.raises(DataError, match=r"no video has subset 'test'"):
        load_ground_truth(path, "test")
    with pytest.raises(DataError, match=r"no video has subset 'test'"):
        load_subset(cfg, "test")


# ------------------------------------------------------------------------------ feature files


STREAM = {"dim": 3, "num_frames": 16}
DB = {"v": video("training", 10.0, [ann(1.0, 2.0, "x", 0)], fps=32.0)}


def ramp(steps: int, dim: int = 3) -> np.ndarray:
    return (10.0 * np.arange(steps)[:, None] + np.arange(dim)[None, :]).astype(np.float32)


def data_cfg(tmp_path: Path, pattern: str, **stream) -> DataConfig:
    folder = tmp_path / "feats"
    folder.mkdir(exist_ok=True)
    streams = {"s": StreamConfig(dir=str(folder), file_pattern=pattern, **{**STREAM, **stream})}
    return DataConfig(
        annotations=write_file(tmp_path / "gt.json", DB), streams=streams, features=["s"], cache_features=False
    )


def load(cfg: DataConfig) -> np.ndarray:
    return InferenceDataset(cfg, load_subset(cfg, "training"))[0]["feats"].numpy()


@pytest.mark.parametrize(
    ("pattern", "key", "save"),
    [
        ("{video_id}.npy", None, lambda p, a: np.save(p, a.astype(np.float64))),  # float64 is cast to float32
        ("{video_id}.npy", None, lambda p, a: np.save(p, a.astype(np.float16))),
        ("{video_id}.npz", None, lambda p, a: np.savez(p, a)),  # the only array
        ("{video_id}.npz", None, lambda p, a: np.savez(p, feats=a, other=a[:1])),  # several: "feats"
        ("{video_id}.npz", "x", lambda p, a: np.savez(p, x=a, feats=a[:1])),  # the configured key
        ("{video_id}_spatial_pool_feature_5.pt", None, lambda p, a: torch.save(torch.from_numpy(a), p)),
        ("{video_id}.pth", "feats", lambda p, a: torch.save({"feats": torch.from_numpy(a), "n": 20}, p)),
        ("{video_id}.pt", None, lambda p, a: torch.save({"x": torch.from_numpy(a).to(torch.bfloat16)}, p)),
    ],
)
def test_every_file_type_reads_the_same_features(tmp_path, pattern, key, save):
    cfg = data_cfg(tmp_path, pattern, key=key)
    save(Path(cfg.streams["s"].dir) / pattern.format(video_id="v"), ramp(20))
    feats = load(cfg)
    assert feats.dtype == np.float32 and feats.shape == (3, 20)
    np.testing.assert_array_equal(feats, ramp(20).T)  # ramp values are exact in float16 and bfloat16


@pytest.mark.parametrize(
    ("pattern", "key", "write", "message"),
    [
        (
            "{video_id}.npz",
            "feats",
            lambda p: np.savez(p, a=ramp(4), b=ramp(4)),
            r"no entry 'feats' \(data\.streams\.s\.key; the file holds \['a', 'b'\]\)",
        ),
        (
            "{video_id}.npz",
            None,
            lambda p: p.write_bytes(b"PK\x03\x04 broken"),
            r"cannot read as \.npz \(data\.streams\.s\): ",
        ),
        (
            "{video_id}.pt",
            None,
            lambda p: p.write_bytes(b"not a torch file"),
            r"cannot read as \.pt \(data\.streams\.s\): ",
        ),
        (
            "{video_id}.pt",
            None,
            lambda p: torch.save({"a": torch.zeros(2, 3), "b": torch.zeros(2, 3)}, p),
            r"no entry 'feats'",
        ),
        (
            "{video_id}.pt",
            None,
            lambda p: torch.save([torch.zeros(2, 3)], p),
            r"expected a tensor \(data\.streams\.s\), got list",
        ),
        (
            "{video_id}.pt",
            None,
            lambda p: torch.save(torch.zeros(4, 3, dtype=torch.int32), p),
            r"expected float16, float32 or float64",
        ),
        (
            "{video_id}.pth",
            None,
            lambda p: torch.save(torch.nn.Linear(2, 3), p),
            r"cannot read as \.pth \(data\.streams\.s\): ",
        ),
        (
            "{video_id}.npy",
            None,
            lambda p: np.save(p, np.zeros((4, 3), np.int16)),
            r"expected float16, float32 or float64",
        ),
    ],
)
def test_bad_feature_files_are_one_line_naming_file_and_stream(tmp_path, pattern, key, write, message):
    cfg = data_cfg(tmp_path, pattern, key=key)
    path = Path(cfg.streams["s"].dir) / pattern.format(video_id="v")
    write(path)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: {message}") as info:
        load(cfg)
    assert "\n" not in str(info.value)


def test_unsupported_extension_is_a_config_error():
    raw = {"data": {"streams": {"i3d": {"dir": "x", "dim": 2, "file_pattern": "{video_id}.csv"}}}}
    with pytest.raises(ConfigError, match=r"^c\.yaml: data\.streams\.i3d\.file_pattern: must end in one of"):
        config_from_dict(raw, "c.yaml")


# ------------------------------------------------------------------------------ sampling rules


def boundary_case(tmp_path: Path, steps: int, duration: float, fps: float, **fields) -> tuple[float, float, np.ndarray]:
    """One video with an action starting at 10 s: (its grid position, back in seconds, the features)."""
    stream = {key: fields.pop(key) for key in ("feat_stride", "num_frames", "downsample") if key in fields}
    folder = tmp_path / "f"
    folder.mkdir(exist_ok=True)
    np.save(folder / "v.npy", ramp(steps))
    db = {"v": video("training", duration, [ann(10.0, 12.0, "x", 0)], fps=fps)}
    cfg = DataConfig(
        annotations=write_file(tmp_path / "gt.json", db),
        features=["s"],
        cache_features=False,
        streams={"s": StreamConfig(dir=str(folder), dim=3, **stream)},
        **fields,
    )
    dataset = InferenceDataset(cfg, load_subset(cfg, "training"))
    item, grid = dataset[0], dataset.grid(0)
    start = float(item["segments"][0, 0])
    return start, grid_to_seconds(start, fps, grid.stride, grid.clip), item["feats"].numpy()


@pytest.mark.parametrize(
    ("steps", "duration", "fps", "fields", "expected"),
    [
        # native: (10 s * 30 fps - 16 / 2) / 16 = (300 - 8) / 16
        (40, 21.6, 30.0, {}, 292 / 16),
        # fractional: stride 7.5, 10-frame clips: (300 - 5) / 7.5
        (80, 21.6, 30.0, {"feat_stride": 7.5, "num_frames": 10}, 295 / 7.5),
        # downsample 2 of stride 4, 16-frame clips (InternVideo2): stride 8, (300 - 8) / 8
        (160, 21.6, 30.0, {"feat_stride": 4, "downsample": 2}, 292 / 8),
        # auto: 150 s at 30 fps = 4500 frames in 100 steps: stride = clip = 45, (300 - 22.5) / 45
        (100, 150.0, 30.0, {"feat_stride": "auto"}, 277.5 / 45),
        # resize_length 192 of 40 native steps: s' = 16 * 40 / 192, clip 16 + s' - 16 = s': (300 - s'/2) / s'
        (40, 21.6, 30.0, {"resize_length": 192}, (300 - 0.5 * 640 / 192) / (640 / 192)),
    ],
    ids=["native", "fractional", "downsample", "auto", "resize_length"],
)
def test_one_boundary_by_hand_per_sampling_rule(tmp_path, steps, duration, fps, fields, expected):
    start, seconds, _ = boundary_case(tmp_path, steps, duration, fps, **fields)
    assert start == pytest.approx(expected, rel=1e-6)
    assert seconds == pytest.approx(10.0, rel=1e-6)  # and back: the conversion is consistent both ways


def test_auto_grid_fixes_the_fixed_length_misplacement(tmp_path):
    """read as native stride 16, an action at 100 s of a 150 s video lands at step 187 of 100."""
    wrong, _, _ = boundary_case(tmp_path, 100, 150.0, 30.0)
    assert wrong == pytest.approx((10 * 30 - 8) / 16)
    folder = tmp_path / "g"
    folder.mkdir()
    np.save(folder / "v.npy", ramp(100))
    db = {"v": video("training", 150.0, [ann(100.0, 101.0, "x", 0)], fps=30.0)}
    for stride, expected in ((16, (3000 - 8) / 16), ("auto", (3000 - 22.5) / 45)):
        cfg = DataConfig(
            annotations=write_file(tmp_path / "g.json", db),
            features=["s"],
            cache_features=False,
            streams={"s": StreamConfig(dir=str(folder), dim=3, feat_stride=stride)},
        )
        start = float(InferenceDataset(cfg, load_subset(cfg, "training"))[0]["segments"][0, 0])
        assert start == pytest.approx(expected)
    assert (3000 - 8) / 16 > 186  # native: step 187 of 100; auto: step 66


def test_downsample_and_resize_features(tmp_path):
    _, _, down = boundary_case(tmp_path, 160, 21.6, 30.0, feat_stride=4, downsample=2)
    np.testing.assert_array_equal(down, ramp(160)[::2].T)
    _, _, resized = boundary_case(tmp_path, 40, 21.6, 30.0, resize_length=80)
    # 40 -> 80 steps, align_corners=False: output j samples input (j + 0.5) / 2 - 0.5, clamped at the ends
    position = np.clip((np.arange(80) + 0.5) / 2 - 0.5, 0, 39)
    np.testing.assert_allclose(resized, (10 * position[None, :] + np.arange(3)[:, None]), rtol=1e-6)


# ------------------------------------------------------------------------------ fps switch and coverage


def test_force_default_fps_wins_over_the_video_fps(tmp_path):
    db = {"a": video("training", 10.0, [ann(1, 2, "x")], fps=25.0), "b": video("training", 10.0, [])}
    path = write_file(tmp_path / "gt.json", db)
    own = load_subset(DataConfig(annotations=path, default_fps=30.0), "training")
    forced = load_subset(DataConfig(annotations=path, default_fps=30.0, force_default_fps=True), "training")
    assert [v.fps for v in own.videos] == [25.0, 30.0]
    assert [v.fps for v in forced.videos] == [30.0, 30.0]


def test_coverage_and_its_warning(tmp_path):
    # 300 frames at 30 fps; 18 native steps of 16 (16-frame clips) span 17 * 16 + 16 = 288 frames: 0.96
    folder = tmp_path / "f"
    folder.mkdir()
    np.save(folder / "v.npy", ramp(18))
    db = {"v": video("training", 10.0, [ann(1, 2, "x")], fps=25.0)}
    stream = {"s": StreamConfig(dir=str(folder), dim=3)}
    base = DataConfig(annotations=write_file(tmp_path / "gt.json", db), streams=stream, features=["s"])
    forced = dataclasses.replace(base, force_default_fps=True)
    dataset = InferenceDataset(forced, load_subset(forced, "training"))
    assert coverage_summary(dataset) == {"s": pytest.approx({"min": 0.96, "median": 0.96, "max": 0.96})}
    assert data_warnings({"training": dataset}) == []
    own = InferenceDataset(base, load_subset(base, "training"))  # 250 frames at the JSON's 25 fps: 288 / 250
    assert coverage_summary(own)["s"]["median"] == pytest.approx(1.152)
    (line,) = data_warnings({"training": own})
    assert line.startswith("training: stream s: median coverage 1.152") and "feat_stride: auto" in line
    assert coverage_warnings("x", {"s": {"min": 0.5, "median": 0.951, "max": 1.0}}) == []  # within 5 %


# ------------------------------------------------------------------------------ configs per feature set


@pytest.mark.parametrize(
    "name",
    ["fineaction", "fineaction_videomaev2_g", "fineaction_videomae_h", "fineaction_internvideo2", "fineaction_i3d100"],
)
def test_feature_set_configs_load_and_match_their_search_space(name):
    from runner.searchfile.spec import load_search_file

    cfg = load_config(Path("configs") / f"{name}.yaml")
    spec = load_search_file(Path("search_spaces") / f"{name}.yaml")
    assert spec.base.data.features == cfg.data.features
    assert {n: spec.base.data.streams[n] for n in cfg.data.features} == {
        n: cfg.data.streams[n] for n in cfg.data.features
    }
    assert cfg.data.force_default_fps and spec.base.data.force_default_fps
    searched = (
        {n for combo in spec.space["data.features"].candidates() for n in combo}
        if "data.features" in spec.space.keys
        else set()
    )
    assert searched <= set(cfg.data.features)  # only streams the user of this feature set has
    header = (Path("configs") / f"{name}.yaml").read_text().split("\ndata:")[0]
    assert "Source" in header and "UNVERIFIED" in header


@pytest.mark.parametrize(
    ("layout", "i3d_file", "slowfast_file"),
    [
        ("pt", "v_00000000_spatial_pool_feature_5.pt", "v_00000000.pth"),
        ("npz", "v_00000000.npz", "v_00000000.npz"),
        ("fixed", "v_00000000.npy", "v_00000000.npy"),
        ("official", "v_00000000.npy", "v_00000000.npy"),
    ],
)
def test_synthetic_format_option_writes_each_layout(tmp_path, capsys, layout, i3d_file, slowfast_file):
    from localization.data.synthetic import TRAILING_SPACE_CLASS
    from localization.synthetic import main as synthetic_main

    assert synthetic_main(["--out", str(tmp_path / "d"), "--videos", "4", "--format", layout]) == 0
    cfg = load_config(capsys.readouterr().out.strip())
    assert (Path(cfg.data.streams["i3d"].dir) / i3d_file).is_file()
    assert (Path(cfg.data.streams["slowfast"].dir) / slowfast_file).is_file()
    dataset = InferenceDataset(cfg.data, load_subset(cfg.data, "training"))
    if layout == "fixed":
        assert set(dataset.lengths) == {100} and cfg.data.streams["i3d"].feat_stride == "auto"
        assert coverage_summary(dataset)["i3d"]["median"] == pytest.approx(1.0, abs=1e-3)
    database = json.loads(Path(cfg.data.annotations).read_text())["database"]
    anns = [a for entry in database.values() for a in entry["annotations"]]
    if layout == "official":
        assert not any("label_id" in a for a in anns) and all(isinstance(e["duration"], str) for e in database.values())
        assert dataset.annotations.class_map == "sorted labels"
        spelled = {a["label"] for a in anns}
        assert TRAILING_SPACE_CLASS not in spelled  # always spelled with its trailing space
        assert dataset.class_names == sorted({label.strip() for label in spelled})
    else:
        assert all("label_id" in a for a in anns)


def test_read_stream_gives_one_videos_stream_as_channels_by_time(tmp_path):
    from localization.data.features import read_stream

    path = tmp_path / "v.pt"
    torch.save({"feats": torch.from_numpy(ramp(9).T.copy()).half()}, path)  # stored [C, T] in float16
    stream = StreamConfig(dir=str(tmp_path), dim=3, layout="ct", downsample=2, file_pattern="{video_id}.pt")
    out = read_stream(path, stream, "s")
    assert out.dtype == np.float32 and out.shape == (3, 5)
    np.testing.assert_array_equal(out, ramp(9)[::2].T)
