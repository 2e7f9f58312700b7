"""Every shipped search file is its configs/ twin plus what it says it changes (one source per
setting), and the demo's config is the one the synthetic generator writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from localization.api import flatten, load_config
from localization.data.synthetic import write_config
from runner.searchfile.spec import BASE_KEY, load_search_file

REPO = Path(__file__).resolve().parents[3]
SEARCH_FILES = sorted((REPO / "search_spaces").glob("*.yaml"))


def leaves(mapping: dict, prefix: str = "") -> set[str]:
    """The dotted keys a YAML mapping sets (a mapping's keys recursively; anything else is a leaf)."""
    keys: set[str] = set()
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        keys |= leaves(value, f"{dotted}.") if isinstance(value, dict) else {dotted}
    return keys


def test_there_are_search_files_to_check() -> None:
    assert {p.stem for p in SEARCH_FILES} >= {"demo", "fineaction"}


@pytest.mark.parametrize("path", SEARCH_FILES, ids=lambda p: p.stem)
def test_a_search_file_resolves_to_its_config_except_what_it_changes(path: Path) -> None:
    raw = yaml.safe_load(path.read_text())
    twin = REPO / "configs" / path.name
    assert raw.get(BASE_KEY) == f"../configs/{path.name}", f"{path.name} must start from its twin {twin}"
    changed = set()
    for section in ("data", "model", "train", "test"):
        changed |= leaves(raw.get(section) or {}, f"{section}.")

    searched = flatten(load_search_file(path).base)
    config = flatten(load_config(twin))
    differ = {key for key in searched.keys() | config.keys() if searched.get(key) != config.get(key)}
    assert differ <= changed, f"{path.name} differs from {twin.name} in {sorted(differ - changed)} without saying so"
    assert changed <= set(config), f"{path.name} sets keys its config does not have: {sorted(changed - set(config))}"


def test_fineaction_search_reads_the_shared_feature_store() -> None:
    """The recipe's search holds one float16 copy of the features per node, like its config."""
    data = load_search_file(REPO / "search_spaces" / "fineaction.yaml").base.data
    assert data.store and data.store_dtype == "float16" and data.num_workers == 4


def test_the_demo_config_is_the_generators(tmp_path: Path) -> None:
    """configs/demo.yaml and the config the synthetic generator writes train the same model the same way."""
    written = flatten(load_config(write_config(tmp_path)))
    demo = flatten(load_config(REPO / "configs" / "demo.yaml"))
    for key in demo:
        if key.startswith(("model.", "train.")) and key != "train.eval_every":
            assert demo[key] == written[key], key


def test_a_base_that_is_not_a_run_config_is_refused_naming_it(tmp_path: Path) -> None:
    from localization.api import ConfigError

    (tmp_path / "base.yaml").write_text("search: {num_samples: 2}\n")
    (tmp_path / "s.yaml").write_text("experiment: x\nbase: base.yaml\n")
    with pytest.raises(ConfigError, match=r"base\.yaml: search: not a run-config section"):
        load_search_file(tmp_path / "s.yaml")
