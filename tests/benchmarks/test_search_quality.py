"""benchmarks/search_quality.py's resume state and anytime curve, and the report made from its file."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


quality = _load("search_quality")
report = _load("search_quality_report")
SETTINGS = {"budget_trials": 24, "epochs": 9, "videos": 160, "grace_period": 3, "reduction_factor": 3}


def entry(seed: int, test: float, spent: int, curve: list[tuple[int, float]] | None = None) -> dict:
    points = [{"trial_epochs": e, "selection_mAP": t, "test_mAP": t} for e, t in (curve or [(spent, test)])]
    return {
        "seed": seed,
        "test_mAP": test,
        "selection_mAP": test,
        "trial_epochs": spent,
        "wall_s": 10.0,
        "anytime": points,
    }


def test_resume_skips_finished_searches_seed_by_seed(tmp_path: Path) -> None:
    path = tmp_path / "results" / "search_quality.json"
    results = quality.load_results(path, SETTINGS, [0, 1], "cmd")
    assert set(results["variants"]) == set(quality.CORE) and results["seeds"] == [0, 1]
    assert list(quality.pending(results, ["recipe", "random"], [0, 1])) == [
        ("recipe", 0),
        ("random", 0),
        ("recipe", 1),
        ("random", 1),
    ]
    results = quality.add_entry(results, "random", entry(0, 30.0, 216))
    quality.write_atomic(path, results)
    assert [p.name for p in path.parent.iterdir()] == ["search_quality.json"]  # no temporary left behind

    assert path.stat().st_mode & 0o777 == 0o644
    again = quality.load_results(path, SETTINGS, [0, 1, 2], "cmd --variants tpe_asha_grace6")
    assert again["seeds"] == [0, 1, 2] and again["more_commands"] == ["cmd --variants tpe_asha_grace6"]
    assert list(quality.pending(again, ["recipe", "random"], [0, 1])) == [("recipe", 0), ("recipe", 1), ("random", 1)]
    for key in ("machine", "date", "command", "seeds", "budget_trials", "epochs", "variants"):
        assert key in again
    assert set(again["variants"]["random"][0]) >= {"seed", "test_mAP", "selection_mAP", "trial_epochs", "wall_s"}


def test_save_entry_keeps_what_another_run_added(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    mine = quality.load_results(path, SETTINGS, [0], "cmd")  # this run's view, taken before the other wrote
    quality.save_entry(path, SETTINGS, "cmd --variants tpe_asha_grace6", "tpe_asha_grace6", entry(0, 31.0, 200))
    quality.save_entry(path, SETTINGS, "cmd", "recipe", entry(1, 25.0, 12))
    saved = json.loads(path.read_text())
    assert mine["variants"]["recipe"] == [] and saved["seeds"] == [0, 1]
    assert [e["test_mAP"] for e in saved["variants"]["tpe_asha_grace6"]] == [31.0]
    assert [e["seed"] for e in saved["variants"]["recipe"]] == [1]


def test_add_entry_replaces_its_seed_and_keeps_order() -> None:
    results = quality.new_results(SETTINGS, [0, 1], "cmd")
    results = quality.add_entry(results, "recipe", entry(1, 20.0, 9))
    results = quality.add_entry(results, "recipe", entry(0, 10.0, 9))
    updated = quality.add_entry(results, "recipe", entry(1, 25.0, 9))
    assert [(e["seed"], e["test_mAP"]) for e in updated["variants"]["recipe"]] == [(0, 10.0), (1, 25.0)]
    assert [e["test_mAP"] for e in results["variants"]["recipe"]] == [10.0, 20.0]  # the input is not changed


def test_results_of_other_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    quality.write_atomic(path, quality.new_results(SETTINGS, [0], "cmd"))
    with pytest.raises(SystemExit, match="epochs: holds 9, this run has 12"):
        quality.load_results(path, {**SETTINGS, "epochs": 12}, [0], "cmd")


def test_incumbents_follow_the_pick_at_each_trial_end() -> None:
    trial = quality.Trial
    trials = [
        trial("a", "finished", [10, 20, 30], [1.0, 5.0, 4.0]),  # ends at 30, when 8 of the 9 epochs are logged
        trial("b", "pruned", [11, 21], [0.5, 2.0]),  # ends first, at 21: the first pick
        trial("c", "finished", [12, 22, 40], [0.0, 3.0, 9.0]),  # ends last: the pick from then on
        trial("d", "failed", [13], []),  # never evaluated: never a pick
    ]
    points = [(spent, pick.run_id) for spent, pick in quality.incumbents(trials)]
    assert points == [(6, "b"), (8, "a"), (9, "c")]


def test_search_file_sets_the_variant(tmp_path: Path) -> None:
    class Args:
        epochs, budget, grace_period, reduction_factor = 9, 24, 3, 3

    post = quality.search_file("tpe_asha_post", 2, Args, tmp_path, tmp_path)
    assert post["search"]["postprocess"]["trials"] > 0 and "test.nms_sigma" not in post["search"]["space"]
    assert post["search"]["scheduler"] == {"type": "asha", "grace_period": 3, "reduction_factor": 3}
    assert post["train"]["seed"] == 2 and post["search"]["seed"] == 2 and post["search"]["num_samples"] == 24
    recipe = quality.search_file("recipe", 1, Args, tmp_path, tmp_path)
    assert recipe["search"]["num_samples"] == 1 and recipe["search"]["seed_configs"] == [{}]
    assert recipe["search"]["scheduler"] == {"type": "fifo"} and "test.nms_sigma" in recipe["search"]["space"]
    grace = quality.search_file("tpe_asha_grace6", 0, Args, tmp_path, tmp_path)
    assert grace["search"]["scheduler"] == {"type": "asha", "grace_period": 6, "reduction_factor": 3}


def test_report_table_plot_and_page_from_the_file(tmp_path: Path) -> None:
    results = quality.new_results(SETTINGS, [0, 1], "python benchmarks/search_quality.py")
    results = quality.add_entry(results, "recipe", entry(0, 20.0, 9))
    results = quality.add_entry(results, "random", entry(0, 30.0, 216, [(18, 10.0), (100, 30.0)]))
    results = quality.add_entry(results, "random", entry(1, 40.0, 216, [(30, 40.0)]))
    results = quality.add_entry(results, "tpe_asha", entry(0, 35.0, 120, [(50, 35.0)]))
    rows = report.table(json.loads(json.dumps(results)))
    assert "test mAP at 120 trial-epochs" in rows[0]
    random_row = next(r for r in rows if r.startswith("| random, no early"))
    # mean ± sd of 30 and 40; at 120 trial-epochs seed 0 had picked its 30.0 trial, seed 1 its 40.0
    assert "| 2 | 35.00 ± 7.07 |" in random_row and "| 35.00 ± 7.07 | s0 30.0, s1 40.0 |" in random_row
    assert not any(r.startswith("| random + ASHA") for r in rows)  # no entries, no row
    assert report.pick_at(results["variants"]["random"][0], 17) is None

    png = report.plot(results, tmp_path / "anytime.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    page = tmp_path / "BENCHMARKS.md"
    page.write_text(f"# B\n\nbefore\n{report.BEGIN}\nstale figures\n{report.END}\nafter\n")
    code = report.main(["--results", str(_saved(tmp_path, results)), "--plot", str(png), "--markdown", str(page)])
    text = page.read_text()
    assert code == 0 and "stale figures" not in text and "before" in text and "after" in text
    assert "![best test mAP against trial-epochs](anytime.png)" in text and random_row in text
    page.write_text("no markers")
    assert report.main(["--results", str(tmp_path / "r.json"), "--plot", str(png), "--markdown", str(page)]) == 2
    assert page.read_text() == "no markers"


def test_rung_signal_ranks_trials_at_each_epoch() -> None:
    results = quality.new_results({**SETTINGS, "epochs": 3}, [0], "cmd")
    curves = [[0.1, 5.0, 9.0], [0.3, 4.0, 6.0], [0.2, 1.0, 3.0], [0.0, 0.5, 2.0]]  # best: 9, 6, 3, 2
    random = {**entry(0, 30.0, 12), "per_trial": [{"status": "finished", "holdout_mAP": c} for c in curves]}
    rows = report.rung_signal(quality.add_entry(results, "random", random))
    # epoch 1 ranks them 2,4,3,1 against 4,3,2,1 (rho 0.4), and the best (0.1) third: a rung would stop it;
    # epoch 2 ranks them exactly as their best
    assert rows[2:] == ["| 1 | 0.40 | 0 of 1 |", "| 2 | 1.00 | 1 of 1 |"]
    assert report.rung_signal(results) == []


def _saved(tmp_path: Path, results: dict) -> Path:
    path = tmp_path / "r.json"
    quality.write_atomic(path, results)
    return path
