"""Is the search worth its GPU-hours? Searches against the recipe, at a size where a trial learns.

``python benchmarks/search_quality.py [--seeds 0 1 2] [--epochs 12] [--budget 24] [--grace-period 3]
[--reduction-factor 2] [--videos 160] [--variants ...] [--results FILE] [--work DIR]`` runs, per search
seed and variant, one search with ``python -m runner.search`` on the demo's synthetic data and model
(``search_spaces/demo.yaml``):

- ``recipe``: the search file's base config alone, trained once (``train.seed`` = the seed);
- ``random``: ``--budget`` random trials, every one trained to the end;
- ``random_asha``, ``tpe_asha``: ``--budget`` trials, ASHA stopping the weak ones at its rungs;
- ``tpe_asha_post``: as ``tpe_asha``, with the demo's post-processing keys tuned at every evaluation
  on the raw candidates (``search.postprocess``); every other variant searches them by retraining;
- further variants (``VARIANTS``) try multivariate TPE, TPE's start-up size and ASHA's grace period / reduction factor.

Three data roles, as a real search has them: trials train on the training subset minus a held-out
quarter, are selected on that quarter (``search.selection``), and the selected trial's best
checkpoint (with its config, tuned post-processing included) is scored once on the validation
subset, which no search decision saw: ``test_mAP``. Cost: trial-epochs and wall seconds. Every trial
that was the search's choice when some trial ended is scored on test too, which gives the anytime
curve: the test mAP of the trial the search would have picked, against the trial-epochs spent.

The results file is written (atomically) after every finished (variant, seed) and is the resume
state: a rerun with the same settings skips what it holds. Seeds interleave (every variant of
seed 0, then seed 1, ...), so a partial file is already a comparison.
``benchmarks/search_quality_report.py`` makes the table and plot from it.

Cost of the defaults, per seed: recipe 12 + random 24 x 12 = 288 + three ASHA searches of about
24 x 3 + 12 x 3 + 6 x 6 = 144 trial-epochs each (more when rungs promote early): ~780 trial-epochs.
A trial-epoch (training plus holdout evaluation) takes ~2.5 s on one core of the 2-core build
machine, and each search ~30 s to start and finish: ~2,400 core-seconds per seed, ~27 minutes
per seed on 1.5 free cores, ~80 minutes for three seeds. Shared with other work (load average 8
to 20, at ``nice -n 15``) seed 0 took 65 minutes (3,876 s of searches).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from localization.api import config_from_dict, evaluate_checkpoint, make_synthetic, read_yaml
from runner.names import (
    AVERAGE_MAP,
    BEST_CHECKPOINT_DIR,
    BEST_RUN_ID,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LOSS_HISTORY,
    PARENT,
    ROLE,
    ROLE_SEARCH,
    ROLE_TRIAL,
    STATUS,
)

TEST_SUBSET = "validation"  # never seen by a search decision: selection uses a slice of training
RESULTS = Path("benchmarks/results/search_quality.json")
DEMO = Path("search_spaces/demo.yaml")
CORE = ("recipe", "random", "random_asha", "tpe_asha", "tpe_asha_post")

# Per variant, the ``search`` keys it sets (``None`` in ``postprocess``: the demo's post-processing search)
ASHA: dict[str, Any] = {"type": "asha"}  # grace period and reduction factor from the command line
VARIANTS: dict[str, dict[str, Any]] = {
    "recipe": {"sampler": "random", "num_samples": 1, "seed_configs": [{}], "scheduler": {"type": "fifo"}},
    "random": {"sampler": "random", "scheduler": {"type": "fifo"}},
    "random_asha": {"sampler": "random", "scheduler": ASHA},
    "tpe_asha": {"sampler": "tpe", "scheduler": ASHA},
    "tpe_asha_post": {"sampler": "tpe", "scheduler": ASHA, "postprocess": None},
    "tpe_asha_multivariate": {"sampler": "tpe", "scheduler": ASHA, "multivariate": True},
    "tpe_asha_startup12": {"sampler": "tpe", "scheduler": ASHA, "startup_trials": 12},
    "tpe_asha_startup3": {"sampler": "tpe", "scheduler": ASHA, "startup_trials": 3},
    "tpe_asha_grace6": {"sampler": "tpe", "scheduler": {"type": "asha", "grace_period": 6}},
    "tpe_asha_rf3": {"sampler": "tpe", "scheduler": {"type": "asha", "reduction_factor": 3}},
}


# ---- the results file: the benchmark's output and its resume state --------------------------------------


def new_results(settings: dict[str, int], seeds: list[int], command: str) -> dict[str, Any]:
    """An empty results file for these settings."""
    return {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "command": command,
        "seeds": list(seeds),
        **settings,
        "variants": {name: [] for name in CORE},
    }


def load_results(path: Path, settings: dict[str, int], seeds: list[int], command: str) -> dict[str, Any]:
    """The results so far, or a new file; refuses one written with other settings (it would mix runs)."""
    if not path.is_file():
        return new_results(settings, seeds, command)
    results = json.loads(path.read_text())
    for key, value in settings.items():
        if results.get(key) != value:
            raise SystemExit(
                f"error: {path}: {key}: holds {results.get(key)!r}, this run has {value!r}; use another --results"
            )
    results["seeds"] = sorted(set(results["seeds"]) | set(seeds))
    if command != results["command"] and command not in results.setdefault("more_commands", []):
        results["more_commands"].append(command)  # e.g. further variants into the same file
    return results


def pending(results: dict[str, Any], variants: list[str], seeds: list[int]) -> Iterator[tuple[str, int]]:
    """The (variant, seed) searches the file lacks, seed by seed so that partial results compare variants."""
    for seed in seeds:
        for name in variants:
            if not any(entry["seed"] == seed for entry in results["variants"].get(name, [])):
                yield name, seed


def add_entry(results: dict[str, Any], name: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The results with ``entry`` under ``name`` (replacing an entry of the same seed), seeds in order."""
    merged = copy.deepcopy(results)
    kept = [e for e in merged["variants"].get(name, []) if e["seed"] != entry["seed"]]
    merged["variants"][name] = sorted([*kept, entry], key=lambda e: e["seed"])
    return merged


def write_atomic(path: Path, results: dict[str, Any]) -> None:
    """Write the file whole or not at all: an interrupted write leaves the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(json.dumps(results, indent=1) + "\n")
    os.chmod(handle.name, 0o644)  # a temporary file is private; the results are not
    os.replace(handle.name, path)


def save_entry(path: Path, settings: dict[str, int], command: str, name: str, entry: dict[str, Any]) -> None:
    """Add one finished search to the file as it is now (another run, e.g. of further variants, may add too)."""
    current = load_results(path, settings, [entry["seed"]], command)
    write_atomic(path, add_entry(current, name, entry))


def machine() -> str:
    """CPU model and core count (the numbers depend on the machine only through wall time)."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if "model name" in line]
        model = names[0] if names else model
    return f"{os.cpu_count()}-core CPU ({model}), {platform.system()}, Python {platform.python_version()}"


# ---- one search -----------------------------------------------------------------------------------------


def search_file(name: str, seed: int, args: argparse.Namespace, data_dir: Path, work: Path) -> dict[str, Any]:
    """The demo search file for one variant and seed: the demo's model, ``--epochs``, selection on a holdout."""
    raw = read_yaml(DEMO)
    raw.pop("synthetic", None)
    base = raw.pop("base", None)
    if base is not None:  # the demo's run config, the search file's own sections on top: one file here
        for section, values in read_yaml(DEMO.parent / base).items():
            raw[section] = {**values, **raw.get(section, {})}
    raw["experiment"] = f"quality-{name}-s{seed}"
    data = raw["data"]
    data["annotations"] = str(data_dir / "annotations_gt.json")
    for stream, spec in data["streams"].items():
        spec["dir"] = str(data_dir / "features" / stream)
    warmup = min(raw["train"]["warmup_epochs"], args.epochs - 1)
    raw["train"] = {**raw["train"], "epochs": args.epochs, "warmup_epochs": warmup, "seed": seed, "eval_every": 1}
    search = raw["search"]
    post = search.pop("postprocess")
    change = copy.deepcopy(VARIANTS[name])
    if "postprocess" in change:  # tuned on raw candidates, not by retraining
        change["postprocess"] = post
    else:
        search["space"].update(post["space"])
    scheduler = {"grace_period": args.grace_period, "reduction_factor": args.reduction_factor}
    change["scheduler"] = (
        {**scheduler, **change["scheduler"]} if change["scheduler"]["type"] == "asha" else {"type": "fifo"}
    )
    search.update(num_samples=args.budget, max_concurrent=2, seed=seed, selection={"holdout_fraction": 0.25, "seed": 0})
    search.update(change)
    raw["tracking"] = {"uri": f"sqlite:///{work / 'mlflow.db'}", "model_name": "quality"}
    return raw


def run_search(raw: dict[str, Any], work: Path) -> float:
    """``python -m runner.search`` on the file (output to ``work/<experiment>.log``); its wall seconds."""
    path = work / f"{raw['experiment']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    command = [sys.executable, "-m", "runner.search", str(path), "--storage-path", str(work / "ray")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    started = time.perf_counter()
    with open(work / f"{raw['experiment']}.log", "a") as log:
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"{shlex.join(command)} exited {code}; see {work / raw['experiment']}.log")
    return wall


@dataclasses.dataclass
class Trial:
    """One child run as the anytime curve needs it."""

    run_id: str
    status: str
    epoch_times: list[int]  # ms timestamps of its logged epochs
    scores: list[float]  # holdout mAP of its evaluated epochs, in epoch order

    @property
    def selection_mAP(self) -> float:
        """Its best evaluated epoch on the holdout; -inf when never evaluated."""
        return max(self.scores, default=-math.inf)


def read_search(uri: str, experiment: str) -> tuple[str, list[Trial]]:
    """The newest finished search of the experiment in MLflow: its best run id and its trials."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    parents = client.search_runs(
        [exp.experiment_id], f"tags.`{ROLE}` = '{ROLE_SEARCH}'", order_by=["attributes.start_time DESC"]
    )
    parent = parents[0]
    children = client.search_runs(
        [exp.experiment_id], f"tags.`{PARENT}` = '{parent.info.run_id}' and tags.`{ROLE}` = '{ROLE_TRIAL}'"
    )
    trials = []
    for run in children:
        run_id = run.info.run_id
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, AVERAGE_MAP))
        epochs = sorted(m.timestamp for m in client.get_metric_history(run_id, LOSS_HISTORY))
        scores = [value for _, value in history if math.isfinite(value)]
        trials.append(Trial(run_id, run.data.tags.get(STATUS, ""), epochs, scores))
    return parent.data.tags.get(BEST_RUN_ID, ""), trials


def incumbents(trials: list[Trial]) -> list[tuple[int, Trial]]:
    """At each trial's end, the trial the search would pick (best holdout mAP among ended trials), with the
    trial-epochs spent by then (running trials' epochs included): one point per change of the pick."""
    spent = sorted(t for trial in trials for t in trial.epoch_times)
    points: list[tuple[int, Trial]] = []
    pick: Trial | None = None
    for trial in sorted((t for t in trials if t.epoch_times), key=lambda t: t.epoch_times[-1]):
        if math.isfinite(trial.selection_mAP) and (pick is None or trial.selection_mAP > pick.selection_mAP):
            pick = trial
            epochs = sum(1 for t in spent if t <= trial.epoch_times[-1])
            points.append((epochs, pick))
    return points


def test_score(uri: str, run_id: str) -> float:
    """The run's best checkpoint, with its config, scored once on the test subset."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(client.download_artifacts(run_id, BEST_CHECKPOINT_DIR, tmp))
        cfg = config_from_dict(read_yaml(directory / CONFIG_FILE), str(directory / CONFIG_FILE))
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, val_subset=TEST_SUBSET, val_videos=None))
        scored = evaluate_checkpoint(cfg, directory / CHECKPOINT_FILE, TEST_SUBSET)
    return float(scored.metrics.average_mAP) if scored.metrics is not None else math.nan


def measure(raw: dict[str, Any], work: Path, seed: int) -> dict[str, Any]:
    """Run one search and score it: the entry of the results file."""
    wall = run_search(raw, work)
    uri = raw["tracking"]["uri"]
    best_run, trials = read_search(uri, raw["experiment"])
    tests: dict[str, float] = {}
    curve = []
    for epochs, pick in incumbents(trials):
        tests.setdefault(pick.run_id, test_score(uri, pick.run_id))
        curve.append({"trial_epochs": epochs, "selection_mAP": pick.selection_mAP, "test_mAP": tests[pick.run_id]})
    best = next(t for t in trials if t.run_id == best_run)
    if best_run not in tests:
        tests[best_run] = test_score(uri, best_run)
    counts = {s: sum(t.status == s for t in trials) for s in ("finished", "pruned", "failed")}
    return {
        "seed": seed,
        "test_mAP": round(tests[best_run], 3),
        "selection_mAP": round(best.selection_mAP, 3),
        "trial_epochs": sum(len(t.epoch_times) for t in trials),
        "wall_s": round(wall, 1),
        "trials": len(trials),
        **counts,
        "anytime": [{k: round(v, 3) if isinstance(v, float) else v for k, v in point.items()} for point in curve],
        "per_trial": [{"status": t.status, "holdout_mAP": [round(v, 2) for v in t.scores]} for t in trials],
        "load": round(os.getloadavg()[0], 1),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run_all(args: argparse.Namespace, results: dict[str, Any], save: Callable[[str, dict[str, Any]], None]) -> None:
    """Every pending (variant, seed), saving each entry as it finishes."""
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "data"
    if not (data_dir / "annotations_gt.json").is_file():
        make_synthetic(data_dir, seed=0, videos=args.videos)
    for name, seed in pending(results, args.variants, args.seeds):
        print(f"{time.strftime('%H:%M:%S')} {name} seed {seed}: running", flush=True)
        entry = measure(search_file(name, seed, args, data_dir, work), work, seed)
        save(name, entry)
        print(f"{time.strftime('%H:%M:%S')} {name} seed {seed}: {json.dumps(entry)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=12, help="train.epochs of every trial (the demo recipe)")
    parser.add_argument("--budget", type=int, default=24, help="trials per search (search.num_samples)")
    parser.add_argument("--grace-period", type=int, default=3, help="ASHA's first rung, in epochs")
    parser.add_argument("--reduction-factor", type=int, default=2, help="ASHA keeps 1 in this many at a rung")
    parser.add_argument("--videos", type=int, default=160, help="synthetic dataset size (generator seed 0)")
    parser.add_argument("--variants", nargs="+", default=list(CORE), choices=list(VARIANTS))
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, default=Path("bench_search_quality"), help="data, MLflow, Ray, logs")
    args = parser.parse_args(argv)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # downloads of checkpoints, in the log
    settings = {
        "budget_trials": args.budget,
        "epochs": args.epochs,
        "videos": args.videos,
        "grace_period": args.grace_period,
        "reduction_factor": args.reduction_factor,
    }
    command = shlex.join(["python", "benchmarks/search_quality.py", *(argv if argv is not None else sys.argv[1:])])
    results = load_results(args.results, settings, args.seeds, command)
    run_all(args, results, lambda name, entry: save_entry(args.results, settings, command, name, entry))
    return 0


if __name__ == "__main__":
    sys.exit(main())
