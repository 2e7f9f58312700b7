"""The parts of a Ray snapshot made to agree before a resume (runner.tune.snapshot), on files in
Ray's own formats (tests.restore_cases), in a local folder here and in a bucket in
test_object_storage."""

from __future__ import annotations

from pyarrow.fs import LocalFileSystem

from runner.tune import snapshot
from runner.tune.storage import Location
from tests.restore_cases import reconciles_the_newest_searcher_state, write_snapshot


def test_the_newest_searcher_state_counts_exactly_the_trials_the_experiment_holds(tmp_path):
    reconciles_the_newest_searcher_state(Location(LocalFileSystem(), str(tmp_path)))


def test_a_snapshot_without_searcher_state_is_discarded_but_the_log_stays(tmp_path):
    folder = Location(LocalFileSystem(), str(tmp_path))
    write_snapshot(folder, "2026-01-01_00-00-00", {"a": "RUNNING"}, counter=1, live={"a"})
    for part in [*tmp_path.glob("search_gen_state-*"), *tmp_path.glob("searcher-state-*")]:
        part.unlink()
    (tmp_path / "trial_a" / "checkpoint_000000").mkdir(parents=True)
    (tmp_path / "search.log").write_text("log")
    assert not snapshot.reconcile(folder)
    snapshot.discard(folder)
    assert [p.name for p in tmp_path.iterdir()] == ["search.log"]
