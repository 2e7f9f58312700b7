"""The run config: defaults, YAML overrides, --set, and one-line errors naming file and key."""

from __future__ import annotations

import re

import pytest

from localization.config.loading import config_from_dict, dump_yaml, flatten, load_config
from localization.config.schema import RunConfig, max_div_factor
from localization.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_recipe():
    cfg = RunConfig()
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.batch_size, cfg.train.epochs) == (1e-4, 0.05, 4, 20)
    assert cfg.data.crop_ratio == [0.9, 1.0]
    assert cfg.test.nms_method == "soft" and cfg.test.max_seg_num == 100
    assert cfg.data.features == ["i3d", "slowfast"]
    assert len(cfg.test.tiou_thresholds) == 10 and cfg.test.tiou_thresholds[0] == 0.5


def test_a_file_overrides_only_what_it_names(tmp_path):
    cfg = load_config(write(tmp_path, "train: {lr: 1e-3}\ndata:\n  streams:\n    i3d: {dir: /x}\n"))
    assert cfg.train.lr == 1e-3  # PyYAML leaves 1e-3 a string: float fields accept it
    assert cfg.train.weight_decay == 0.05
    assert cfg.data.streams["i3d"].dir == "/x" and cfg.data.streams["i3d"].dim == 2048
    assert cfg.data.streams["slowfast"].dim == 2304


def test_set_overrides_parse_yaml_values(tmp_path):
    overrides = ["data.features=[i3d]", "train.epochs=8", "model.n_mha_win_size=[9,9,9,9,9,-1]"]
    cfg = load_config(write(tmp_path, ""), overrides)
    assert cfg.data.features == ["i3d"]
    assert cfg.train.epochs == 8
    assert cfg.model.n_mha_win_size == [9, 9, 9, 9, 9, -1]


def test_round_trip_through_yaml_and_flatten(tmp_path):
    cfg = load_config(None, ["train.lr=3.0e-4"])
    again = load_config(write(tmp_path, dump_yaml(cfg)))
    assert again == cfg
    flat = flatten(cfg)
    assert flat["train.lr"] == 3e-4 and flat["data.streams.i3d.dim"] == 2048


def test_new_stream_needs_dir_and_dim():
    cfg = config_from_dict({"data": {"streams": {"rgb": {"dir": "/r", "dim": 8}}, "features": ["rgb"]}}, "x.yaml")
    assert cfg.data.streams["rgb"].feat_stride == 16
    with pytest.raises(ConfigError, match=r"^x\.yaml: data\.streams\.rgb: missing required key\(s\) \['dim'\]$"):
        config_from_dict({"data": {"streams": {"rgb": {"dir": "/r"}}}}, "x.yaml")


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("train: {lr: [}", r"YAML syntax error \(line 1"),
        ("- a\n- b", r"expected a mapping at the top level"),
        ("trian: {}", r"trian: unknown key"),
        ("train: {lrr: 1}", r"train\.lrr: unknown key"),
        ("train: {epochs: 2.5}", r"train\.epochs: expected an integer"),
        ("train: {lr: fast}", r"train\.lr: expected a number, got 'fast'"),
        ("train: {lr: -1.0}", r"train\.lr: must be > 0"),
        ("train: {bf16: 1}", r"train\.bf16: expected true or false"),
        ("data: {features: [i3d, flow]}", r"data\.features: unknown stream 'flow'"),
        ("data: {features: []}", r"data\.features: must name at least one stream"),
        ("data: {crop_ratio: [1.0, 0.5]}", r"data\.crop_ratio: must be \[low, high\]"),
        ("data: {max_seq_len: 1000}", r"data\.max_seq_len: 1000 is not divisible by 576"),
        ("data: {streams: {i3d: {layout: tt}}}", r"data\.streams\.i3d\.layout: 'tt' is not one of"),
        ("model: {regression_range: [[0, 4]]}", r"model\.regression_range: needs 6 ranges"),
        ("model: {n_mha_win_size: 8}", r"model\.n_mha_win_size: windows must be odd"),
        ("model: {fpn_dim: 256}", r"model\.fpn_dim: must equal model\.embd_dim"),
        ("train: {warmup_epochs: 20}", r"train\.warmup_epochs: must be in \[0, train\.epochs=20\)"),
        ("test: {nms_method: fancy}", r"test\.nms_method: 'fancy' is not one of"),
        ("test: {tiou_thresholds: [0.5, 1.5]}", r"test\.tiou_thresholds\[1\]: must be in \(0, 1\]"),
    ],
)
def test_bad_input_is_one_line_naming_file_and_key(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert re.search(pattern, message), message


def test_missing_file_and_bad_set_syntax(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"expected dotted\.key=value"):
        load_config(None, ["train.lr"])


def test_max_div_factor_follows_the_reference_rule():
    cfg = RunConfig()
    assert max_div_factor(cfg.model) == 32 * 18  # stride 32 times window overlap 2 * (19 // 2)
    cfg.model.n_mha_win_size = [7, 7, 7, 7, 7, -1]
    assert max_div_factor(cfg.model) == 16 * 6
