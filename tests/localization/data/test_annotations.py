"""Annotation JSON reading, class maps, dirty-annotation rules and their error messages."""

from __future__ import annotations

import re

import numpy as np
import pytest

from localization.data.annotations import DIRTY_REASONS, load_class_names, load_subset
from localization.errors import DataError


def ann(start: float, end: float, label: str = "run", label_id: int = 0) -> dict:
    return {"segment": [start, end], "label": label, "label_id": label_id}


def video(subset: str, duration: float, annotations: list[dict], **extra) -> dict:
    return {"subset": subset, "duration": duration, "annotations": annotations, **extra}


BASIC = {
    "v1": video("Training", 10.0, [ann(1.0, 2.5), ann(3.0, 4.0, "jump", 1)], fps=25.0),
    "v2": video("validation", 5.0, [ann(0.5, 1.0, "jump", 1)]),
    "v3": video("training", 8.0, []),
}


def test_reads_subset_case_insensitively_with_fps_and_labels(tiny_data):
    cfg = tiny_data(BASIC, default_fps=30.0)
    train = load_subset(cfg, "training")
    assert [v.video_id for v in train.videos] == ["v1", "v3"]
    v1, v3 = train.videos
    assert v1.fps == 25.0 and v3.fps == 30.0  # the video's fps, else data.default_fps
    assert v1.duration == 10.0
    np.testing.assert_array_equal(v1.segments, [[1.0, 2.5], [3.0, 4.0]])
    np.testing.assert_array_equal(v1.labels, [0, 1])
    assert v1.segments.dtype == np.float64 and v1.labels.dtype == np.int64
    assert v3.segments.shape == (0, 2) and v3.labels.shape == (0,)
    assert train.class_names == ["run", "jump"]
    assert train.dropped == dict.fromkeys(DIRTY_REASONS, 0)
    assert [v.video_id for v in load_subset(cfg, "VALIDATION").videos] == ["v2"]


def test_class_map_spans_all_subsets_and_orders_by_id(tiny_data):
    database = {
        "t": video("training", 9.0, [ann(1, 2, "b", 1)]),
        "v": video("validation", 9.0, [ann(1, 2, "c", 2), ann(2, 3, "a", 0)]),
    }
    cfg = tiny_data(database)
    assert load_class_names(cfg) == ["a", "b", "c"]
    assert load_subset(cfg, "training").class_names == ["a", "b", "c"]  # "a", "c" only appear in validation


def test_class_list_file_sets_the_ids(tiny_data, tmp_path):
    class_list = tmp_path / "classes.txt"
    class_list.write_text("jump\nrun\n\n")  # trailing blank lines are fine
    cfg = tiny_data(BASIC, class_list=str(class_list))
    assert load_class_names(cfg) == ["jump", "run"]
    np.testing.assert_array_equal(load_subset(cfg, "training").videos[0].labels, [1, 0])


def test_class_list_errors(tiny_data, tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("run\n")
    with pytest.raises(DataError, match=r"v1\.annotations\[1\]\.label: 'jump' is not in the class list"):
        load_subset(tiny_data(BASIC, class_list=str(path)), "training")
    path.write_text("run\njump\nrun\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: line 3: class 'run' repeats line 1"):
        load_class_names(tiny_data(BASIC, class_list=str(path)))
    path.write_text("run\n\njump\n")
    with pytest.raises(DataError, match=rf"{re.escape(str(path))}: line 2: empty class name"):
        load_class_names(tiny_data(BASIC, class_list=str(path)))
    missing = tmp_path / "nope.txt"
    with pytest.raises(DataError, match=rf"{re.escape(str(missing))}: file not found \(data.class_list\)"):
        load_class_names(tiny_data(BASIC, class_list=str(missing)))


@pytest.mark.parametrize(
    ("annotations", "message"),
    [
        ([ann(1, 2, "run", 0), ann(2, 3, "run", 1)], r"v\.annotations\[1\]\.label_id: label 'run' has id 1 here but 0"),
        (
            [ann(1, 2, "run", 0), ann(2, 3, "jump", 0)],
            r"v\.annotations\[1\]\.label_id: id 0 is used for 'jump' here and for 'run' at "
            r"database\.v\.annotations\[0\]",
        ),
        ([ann(1, 2, "run", -1)], r"v\.annotations\[0\]\.label_id: must be >= 0, got -1"),
        (
            [ann(1, 2, "run", 0), {"segment": [1, 2], "label": "jump"}],
            r"v\.annotations\[1\]\.label_id: missing, but database\.v\.annotations\[0\] has one",
        ),
        ([ann(1, 2, "run ", 0), ann(2, 3, "run", 1)], r"v\.annotations\[1\]\.label_id: label 'run' has id 1"),
        ([{"segment": [1, 2], "label": "run", "label_id": "0"}], r"v\.annotations\[0\]\.label_id: expected an integer"),
    ],
)
def test_inconsistent_label_ids(tiny_data, annotations, message):
    cfg = tiny_data({"v": video("training", 10.0, annotations)})
    with pytest.raises(DataError, match=rf"^{re.escape(cfg.annotations)}: database\.{message}"):
        load_subset(cfg, "training")


def test_dirty_rules_drop_and_count_each_reason(tiny_data):
    database = {
        "a": video(
            "training",
            10.0,
            [
                ann(1.0, 2.0),
                ann(3.0, 2.0),  # end < start
                ann(4.0, 4.0),  # end == start
                ann(9.0, 10.5),  # end > duration
                ann(-0.2, 1.0),  # start < 0
                ann(11.0, 12.0),  # start > duration
                ann(1.0, 2.0 + 1e-7),  # duplicate of the first within 1e-6
                ann(1.0, 2.0, "jump", 1),  # same segment, another label: kept
                ann(1.0, 2.001),  # 1 ms apart: not a duplicate
            ],
        ),
        "b": video("training", 5.0, [ann(0.0, 5.0), ann(0.0, 5.0), ann(0.0, 5.0)]),  # two duplicates
        "c": video("validation", 5.0, [ann(2.0, 1.0)]),  # other subset: not counted
    }
    subset = load_subset(tiny_data(database), "training")
    assert subset.dropped == {"end_not_after_start": 2, "outside_video": 3, "duplicate": 3}
    a, b = subset.videos
    np.testing.assert_array_equal(a.segments, [[1.0, 2.0], [1.0, 2.0], [1.0, 2.001]])
    np.testing.assert_array_equal(a.labels, [0, 1, 0])
    np.testing.assert_array_equal(b.segments, [[0.0, 5.0]])
    assert load_subset(tiny_data(database), "validation").dropped["end_not_after_start"] == 1


def test_boundary_tolerance_keeps_small_overshoots_unchanged(tiny_data):
    database = {"a": video("training", 10.0, [ann(-0.05, 1.0), ann(9.0, 10.1), ann(9.0, 10.3)])}
    subset = load_subset(tiny_data(database, boundary_tolerance=0.2), "training")
    np.testing.assert_array_equal(subset.videos[0].segments, [[-0.05, 1.0], [9.0, 10.1]])  # not clamped
    assert subset.dropped["outside_video"] == 1


def test_missing_annotation_file(tiny_data, tmp_path):
    cfg = tiny_data(BASIC)
    missing = tmp_path / "missing.json"
    cfg.annotations = str(missing)
    with pytest.raises(DataError, match=rf"^{re.escape(str(missing))}: file not found \(data.annotations\)$"):
        load_subset(cfg, "training")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"videos": {}}', r"database: missing"),
        ('{"database": []}', r"database: expected a mapping"),
        ('{"database": {', r"invalid JSON \(line 1, column 15\)"),
    ],
)
def test_malformed_annotation_file(tiny_data, text, message):
    cfg = tiny_data(BASIC)
    with open(cfg.annotations, "w") as handle:
        handle.write(text)
    with pytest.raises(DataError, match=rf"^{re.escape(cfg.annotations)}: {message}"):
        load_subset(cfg, "training")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"subset": "training", "annotations": []}, r"database\.v\.duration: missing"),
        ({"subset": "training", "duration": "long"}, r"database\.v\.duration: expected a finite number"),
        ({"subset": "training", "duration": 0}, r"database\.v\.duration: must be > 0"),
        ({"subset": "training", "duration": 5, "fps": -1}, r"database\.v\.fps: must be > 0"),
        ({"duration": 5}, r"database\.v\.subset: missing"),
        (video("training", 5, [{"label": "run", "label_id": 0}]), r"database\.v\.annotations\[0\]\.segment: missing"),
        (
            video("training", 5, [{"segment": [1], "label": "run", "label_id": 0}]),
            r"database\.v\.annotations\[0\]\.segment: expected \[start, end\]",
        ),
        (
            video("training", 5, [{"segment": [1, None], "label": "run", "label_id": 0}]),
            r"database\.v\.annotations\[0\]\.segment\[1\]: expected a finite number",
        ),
        (video("training", 5, [{"segment": [1, 2], "label_id": 0}]), r"database\.v\.annotations\[0\]\.label: missing"),
        ({"subset": "training", "duration": 5, "annotations": {}}, r"database\.v\.annotations: expected a list"),
    ],
)
def test_malformed_video_entries_name_the_field(tiny_data, entry, message):
    database = {"ok": video("validation", 5.0, [ann(1, 2)]), "v": entry}
    cfg = tiny_data(database)
    with pytest.raises(DataError, match=rf"^{re.escape(cfg.annotations)}: {message}"):
        load_subset(cfg, "training")


def test_unknown_subset_lists_the_ones_present(tiny_data):
    cfg = tiny_data(BASIC)
    with pytest.raises(
        DataError,
        match=r"no video has subset 'testing' \(subsets in the file: "
        r"\['Training', 'training', 'validation'\]\)",
    ):
        load_subset(cfg, "testing")


def test_no_labels_and_no_class_list(tiny_data):
    cfg = tiny_data({"v": video("testing", 5.0, [])})
    with pytest.raises(DataError, match=r"no annotation has a label.*set data\.class_list"):
        load_class_names(cfg)
