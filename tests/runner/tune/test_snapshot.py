"""The parts of a Ray snapshot made to agree before a resume (runner.tune.snapshot), on files in
Ray's own formats (the experiment state's trial list, the searcher's cloudpickled counters), in a
local folder here and in a bucket in test_object_storage."""

from __future__ import annotations

import json

from pyarrow.fs import LocalFileSystem
from ray import cloudpickle

from runner.tune import snapshot
from runner.tune.storage import Location


def write_snapshot(folder: Location, session: str, trials: dict[str, str], counter: int, live: set[str]) -> Location:
    """An experiment state listing ``trials`` (id -> status) and a searcher state that counted ``counter``."""
    entries = [[json.dumps({"trial_id": t, "status": status}), "{}"] for t, status in trials.items()]
    (folder / f"experiment_state-{session}.json").write_text(json.dumps({"trial_data": entries}))
    limiter = {"max_concurrent": 2, "live_trials": live, "num_unfinished_live_trials": len(live)}
    generator = {"counter": counter, "total_samples": 4, "finished": False, "name:ConcurrencyLimiter": limiter}
    path = folder / f"search_gen_state-{session}.json"
    path.write_bytes(cloudpickle.dumps(generator))
    (folder / f"searcher-state-{session}.pkl").write_bytes(b"study")
    return path


def reconciles_the_newest_searcher_state(folder: Location) -> None:
    """Two sessions' snapshots; the newest searcher counted a trial its trial list lacks."""
    write_snapshot(folder, "2026-01-01_00-00-00", {"a": "RUNNING"}, counter=1, live={"a"})
    newest = write_snapshot(
        folder, "2026-01-01_00-00-09", {"a": "TERMINATED", "b": "PENDING"}, counter=3, live={"b", "lost"}
    )
    assert snapshot.reconcile(folder)
    state = cloudpickle.loads(newest.read_bytes())
    assert state["counter"] == 2 and state["total_samples"] == 4
    assert state["name:ConcurrencyLimiter"]["live_trials"] == {"b"}
    assert state["name:ConcurrencyLimiter"]["num_unfinished_live_trials"] == 1


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
