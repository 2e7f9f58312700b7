"""The search file and its space: parsing, every distribution, conditions, the seeded sampler,
validation errors, ``--set`` and ``--dry-run``. No Ray and no MLflow here (they must not start)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import ray
import yaml

from localization.api import exit_status
from localization.errors import ConfigError
from runner import search
from runner.searchfile.space import SearchSpace, make_sampler, parse_space, sample_configs
from runner.searchfile.spec import load_search_file

BASE = {
    "experiment": "unit",
    "train": {"epochs": 6, "warmup_epochs": 1, "lr": "1e-4"},
    "search": {
        "num_samples": 4,
        "seed": 3,
        "scheduler": {"type": "asha", "grace_period": 2},
        "space": {
            "data.features": {"choice": [["i3d"], ["slowfast"], ["i3d", "slowfast"]]},
            "train.lr": {"loguniform": ["1e-5", 1.0e-3]},
            "model.droppath": {"uniform": [0.0, 0.3], "when": {"data.features": [["i3d"]]}},
            "test.nms_sigma": {"uniform": [0.3, 0.9], "step": 0.1},
            "train.batch_size": {"int": [2, 8], "step": 2},
            "test.max_seg_num": {"int": [10, 1000], "log": True},
            "test.nms_method": {"value": "soft"},
        },
    },
}


def write(tmp_path: Path, raw: dict, name: str = "search.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def edited(**changes: object) -> dict:
    """BASE with edits addressed by slash paths (space keys contain dots)."""
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    for path, value in changes.items():
        *parents, last = path.split("/")
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return raw


def run_study(space: SearchSpace, seed: int, sampler: str, trials: int, multivariate: bool = False) -> list[dict]:
    """Drive a real Optuna study with the space, telling a fixed objective of the values."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=make_sampler(sampler, seed, multivariate=multivariate), direction="maximize")
    proposals = []
    for _ in range(trials):
        trial = study.ask()
        values = space(trial)
        proposals.append(values)
        study.tell(trial, -abs(math.log10(values["train.lr"]) + 4) - values["test.nms_sigma"])
    return proposals


def test_every_distribution_samples_within_its_spelling(tmp_path):
    spec = load_search_file(write(tmp_path, BASE))
    samples = sample_configs(spec.space, make_sampler("random", 0), 40)
    features = [s["data.features"] for s in samples]
    assert {tuple(f) for f in features} == {("i3d",), ("slowfast",), ("i3d", "slowfast")}
    assert all(1e-5 <= s["train.lr"] <= 1e-3 for s in samples)  # "1e-5" (a YAML string) is a number
    assert all(round(s["test.nms_sigma"] * 10, 6) == round(s["test.nms_sigma"] * 10) for s in samples)
    assert all(0.3 - 1e-9 <= s["test.nms_sigma"] <= 0.9 + 1e-9 for s in samples)
    assert {s["train.batch_size"] for s in samples} <= {2, 4, 6, 8}
    seg_nums = [s["test.max_seg_num"] for s in samples]
    assert all(isinstance(n, int) and 10 <= n <= 1000 for n in seg_nums)
    assert all(s["test.nms_method"] == "soft" for s in samples)
    # log scale: about half the draws fall below the geometric middle (100), far more than a
    # uniform draw on [10, 1000] would give (9 %)
    assert sum(n < 100 for n in seg_nums) >= 10
    # each sample builds a valid run config with the values set
    cfg = spec.trial_config(samples[0])
    assert cfg.data.features == samples[0]["data.features"] and cfg.train.lr == samples[0]["train.lr"]
    assert spec.base.train.lr == 1e-4  # the base's "1e-4" string became a float


def test_conditional_parameter_only_when_its_condition_holds(tmp_path):
    spec = load_search_file(write(tmp_path, BASE))
    samples = sample_configs(spec.space, make_sampler("random", 1), 40)
    with_droppath = [s for s in samples if "model.droppath" in s]
    assert with_droppath and all(s["data.features"] == ["i3d"] for s in with_droppath)
    assert all("model.droppath" in s for s in samples if s["data.features"] == ["i3d"])
    inactive = next(s for s in samples if "model.droppath" not in s)
    assert spec.trial_config(inactive).model.droppath == spec.base.model.droppath  # the base value stays


def test_when_accepts_a_single_scalar_value():
    space = parse_space(
        {
            "test.nms_method": {"choice": ["soft", "hard"]},
            "test.nms_sigma": {"uniform": [0.3, 0.9], "when": {"test.nms_method": "soft"}},
        },
        "f",
    )
    samples = sample_configs(space, make_sampler("random", 0), 20)
    assert all(("test.nms_sigma" in s) == (s["test.nms_method"] == "soft") for s in samples)


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_seeded_sampler_repeats_its_config_sequence(tmp_path, sampler):
    space = load_search_file(write(tmp_path, BASE)).space
    # 14 trials: past TPE's 10 random start-up trials, into its model-based proposals
    first, again = run_study(space, 7, sampler, 14), run_study(space, 7, sampler, 14)
    other = run_study(space, 8, sampler, 14)
    assert first == again
    assert first != other


def test_multivariate_tpe_starts_alike_then_proposes_from_a_joint_model(tmp_path):
    spec = load_search_file(write(tmp_path, edited(**{"search/multivariate": True})))
    assert spec.search.multivariate
    joint = run_study(spec.space, 7, "tpe", 14, multivariate=spec.search.multivariate)
    per_key = run_study(spec.space, 7, "tpe", 14)
    assert joint[:10] == per_key[:10]  # the 10 random start-up trials
    assert joint[10:] != per_key[10:]


def test_dry_run_prints_base_and_the_searchs_first_configs_and_starts_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, BASE)
    assert exit_status(search.main, [str(path), "--dry-run", "--set", "train.epochs=5", "--num-samples", "3"]) == 0
    out = capsys.readouterr().out
    assert "# resolved base config" in out and "epochs: 5" in out
    spec = load_search_file(path, ["train.epochs=5"], 3)
    assert spec.search.startup_trials == 2  # the default: a quarter of num_samples, at least 2
    expected = sample_configs(spec.space, make_sampler("tpe", 3), 3)
    lines = [line for line in out.splitlines() if line.strip().startswith("trial ")]
    assert len(lines) == 2  # only the start-up trials are known before results exist
    for line, values in zip(lines, expected[:2], strict=True):
        assert f"train.lr={values['train.lr']:.4g}" in line
    assert "nothing started" in out
    assert not ray.is_initialized()
    assert not (tmp_path / "mlflow").exists() and not (tmp_path / "ray_results").exists()


def test_set_overrides_base_keys_search_options_and_space_entries(tmp_path):
    spec = load_search_file(
        write(tmp_path, BASE), ["train.epochs=8", "search.seed=11", "search.space.train.lr={value: 2.0e-4}"]
    )
    assert spec.base.train.epochs == 8 and spec.search.seed == 11
    assert spec.space["train.lr"].kind == "value"
    assert all(s["train.lr"] == 2e-4 for s in sample_configs(spec.space, make_sampler("random", 0), 5))


BAD_INPUTS = [
    # (edit to BASE, the key the one-line error must name)
    ({"search/space/train.lrr": {"uniform": [0.1, 0.2]}}, "search.space.train.lrr"),
    ({"search/space/train.lr": {"uniform": [0.5, 0.1]}}, "search.space.train.lr"),
    ({"search/space/train.lr": {"loguniform": [0.0, 0.1]}}, "search.space.train.lr"),
    ({"search/space/train.lr": {"uniform": ["abc", 0.1]}}, "search.space.train.lr"),
    ({"search/space/train.lr": 0.001}, "search.space.train.lr"),
    ({"search/space/train.lr": {"uniform": [0.1, 0.2], "log": True}}, "search.space.train.lr"),
    ({"search/space/train.lr": {"uniform": [0.1, 0.2], "choice": [1]}}, "search.space.train.lr"),
    ({"search/space/train.batch_size": {"int": [1.5, 4]}}, "search.space.train.batch_size"),
    ({"search/space/train.batch_size": {"int": [1, 8], "step": 2, "log": True}}, "search.space.train.batch_size"),
    ({"search/space/train.batch_size": {"choice": []}}, "search.space.train.batch_size"),
    ({"search/space/train.epochs": {"choice": ["many"]}}, "search.space.train.epochs"),
    ({"search/space/data.features": {"choice": [["i3d"], ["c3d"]]}}, "search.space.data.features"),
    (
        {"search/space/model.droppath": {"uniform": [0.0, 0.3], "when": {"data.feature": ["i3d"]}}},
        "search.space.model.droppath",
    ),
    (
        {"search/space/model.droppath": {"uniform": [0.0, 0.3], "when": {"data.features": ["i3d"]}}},
        "search.space.model.droppath",
    ),
    ({"search/space/train.lr": {"uniform": [1.0e-9, 1.0e-3]}, "train/eta_min": 1.0e-6}, "search.space"),
    ({"search/metric": "mAP_0.42"}, "search.metric"),
    ({"search/num_samples": 0}, "search.num_samples"),
    ({"search/sampler": "grid"}, "search.sampler"),
    ({"search/scheduler/grace_period": 7}, "search.scheduler.grace_period"),
    ({"search/max_failures": "two"}, "search.max_failures"),
    ({"search/colour": "blue"}, "search.colour"),
    ({"resources/cpu": 0}, "resources.cpu"),
    ({"tracking/uri": "not a uri"}, "tracking.uri"),
    ({"experiment": "has space"}, "experiment"),
    ({"evaluation": {}}, "evaluation"),
    ({"train/lr": "fast"}, "train.lr"),
    ({"search/sampler": "random", "search/multivariate": True}, "search.multivariate"),
]


@pytest.mark.parametrize(("changes", "key"), BAD_INPUTS, ids=[k for _, k in BAD_INPUTS])
def test_bad_search_file_is_one_line_naming_file_and_key(tmp_path, changes, key):
    path = write(tmp_path, edited(**changes))
    with pytest.raises(ConfigError) as info:
        load_search_file(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {key}"), message


def test_cli_reports_bad_input_on_stderr_with_status_2_and_starts_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, edited(**{"search/space/train.lr": {"loguniform": [-1, 0.1]}}))
    assert exit_status(search.main, [str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "search.space.train.lr" in err and "Traceback" not in err
    assert not ray.is_initialized()
    assert not (tmp_path / "mlflow").exists()


def test_yaml_syntax_error_names_the_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("search:\n  space: {train.lr: [\n")
    assert exit_status(search.main, [str(path), "--dry-run"]) == 2
    assert "line" in capsys.readouterr().err
