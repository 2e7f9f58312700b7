"""``search.repeat_top: {k, seeds}``: re-train the search's best configs with other ``train.seed`` values.

A search's winner is partly the luck of its seed. After the search, the `k` best trials that ran to
their last epoch (pruned ones were judged on shorter training) are trained again, each with `seeds`
other seeds (the trial's own ``train.seed`` + 1, + 2, ...), as extra child runs of the search tagged
``runner.repeat_of`` with the trial they repeat. The leaderboard then shows each config's mean and
spread, and runner.promote ranks by the mean.

The repeats are their own Ray experiment beside the search's (``<search>/repeats-<time>``, FIFO,
every config once). After an interruption ``--resume`` keeps the repeats that finished and trains
the others again (their interrupted runs are deleted): a repeat is short next to a whole search.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from ray.tune.search import Searcher

from runner.names import REPEAT_OF, STATUS
from runner.searchfile.spec import SearchFile
from runner.tracking import report, search_run
from runner.tune.recorder import TrialRecorder
from runner.tune.trial import TrialSetup

SEED_KEY = "train.seed"


def repeat_configs(rows: list[report.TrialRow], spec: SearchFile, done: set[tuple[str, int]]) -> list[dict[str, Any]]:
    """The trial configs still to train: the top-k finished trials, each with `seeds` new seeds.

    ``done`` holds (repeated trial id, seed) pairs that already have a finished run.
    """
    repeat = spec.search.repeat_top
    sign = 1.0 if spec.search.mode == "max" else -1.0
    finished = [r for r in rows if r.status == "finished" and r.repeat_of is None and math.isfinite(r.best)]
    top = sorted(finished, key=lambda r: (-sign * r.best, r.order))[: repeat.k]
    configs = []
    for row in top:
        own_seed = int(row.values.get(SEED_KEY, spec.base.train.seed))
        for offset in range(1, repeat.seeds + 1):
            if (row.trial_id, own_seed + offset) not in done:
                configs.append({**row.values, SEED_KEY: own_seed + offset, REPEAT_OF: row.trial_id})
    return configs


def run_repeats(
    client: MlflowClient,
    exp_id: str,
    parent_id: str,
    setup: TrialSetup,
    ray_path: Path,
    tuner_factory: Callable[[Path, Any, Any, int], Any],
    recorder: TrialRecorder,
    echo: Callable[[str], None],
) -> bool:
    """Train the repeats still missing; True when every one of them ran (none interrupted)."""
    from ray.tune.schedulers import FIFOScheduler

    spec = setup.spec
    children = search_run.child_runs(client, exp_id, parent_id)
    done = set()
    for run in children:
        repeated = run.data.tags.get(REPEAT_OF)
        if repeated is None:
            continue
        if run.data.tags.get(STATUS) == "finished":
            done.add((repeated, int(run.data.params[SEED_KEY])))
        else:  # interrupted or failed before: trained again below
            client.delete_run(run.info.run_id)
    rows = report.collect(client, [r for r in children if r.data.tags.get(REPEAT_OF) is None], spec.search.metric)
    configs = repeat_configs(rows, spec, done)
    if not configs:
        return True
    repeated = sorted({c[REPEAT_OF] for c in configs})
    echo(f"repeat_top: {len(configs)} re-training runs of trial(s) {', '.join(repeated)} with other train.seed values")
    path = ray_path / f"repeats-{time.strftime('%Y%m%d-%H%M%S')}"
    tuner = tuner_factory(path, FixedConfigs(configs), FIFOScheduler(), len(configs))
    results = tuner.fit()
    return len(results) == len(configs) and search_run.close_open_children(client, exp_id, parent_id) == 0


class FixedConfigs(Searcher):
    """A searcher proposing the given trial configs in order (Ray's BasicVariantGenerator wants
    every key of a preset config declared in ``param_space``, which dotted keys and lists defeat)."""

    def __init__(self, configs: list[dict[str, Any]]) -> None:
        super().__init__()
        self.configs = list(configs)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to learn: the configs are fixed."""

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps(self.configs))

    def restore(self, checkpoint_path: str) -> None:
        self.configs = json.loads(Path(checkpoint_path).read_text())
