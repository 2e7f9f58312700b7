"""The dataset input a trial logs: its digest follows the annotation file and the feature files read."""

from __future__ import annotations

import dataclasses
import os

import yaml

from localization.api import config_from_dict
from localization.data.synthetic import generate
from runner.tracking.dataset_input import dataset_input


def test_digest_changes_with_features_read_annotations_and_files(tmp_path):
    generate(tmp_path / "data", seed=0, videos=4)
    raw = yaml.safe_load((tmp_path / "data" / "config.yaml").read_text())  # the generator's own config
    data = config_from_dict(raw, "config.yaml").data
    both = dataclasses.replace(data, features=["i3d", "slowfast"])
    i3d = dataclasses.replace(data, features=["i3d"])
    first = dataset_input(both).dataset
    assert first.name == "data[i3d+slowfast]" and dataset_input(i3d).dataset.name == "data[i3d]"
    assert dataset_input(both).dataset.digest == first.digest  # stable
    assert dataset_input(i3d).dataset.digest != first.digest

    feature = next((tmp_path / "data" / "features" / "slowfast").glob("*.npy"))
    stat = feature.stat()
    os.utime(feature, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a regenerated file
    assert dataset_input(both).dataset.digest != first.digest

    changed = dataset_input(both).dataset.digest
    annotations = tmp_path / "data" / "annotations_gt.json"
    annotations.write_text(annotations.read_text() + " ")
    assert dataset_input(both).dataset.digest != changed
