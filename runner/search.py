"""``python -m runner.search FILE``: a hyperparameter search, Ray Tune + Optuna, tracked in MLflow.

Order of work, so that bad input costs nothing: validate the search file and the data (exit 2,
nothing started), connect to the tracking store, start or join Ray, create the parent run, run
the Tuner, then write the leaderboard and plots to the parent run and print the best trial.
"""

from __future__ import annotations

import argparse
import contextlib
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localization.api import (
    InputError,
    add_set_argument,
    dump_yaml,
    load_subset,
    make_synthetic,
    pack_features,
    probe_features,
    run_command,
)
from runner import console
from runner.names import BEST_RUN_ID, BEST_TRIAL_ID, IMPORTANCE_DIR, NOTE, SPEC_HASH, STATUS, best_metric
from runner.searchfile.space import make_sampler, sample_configs
from runner.searchfile.spec import SearchFile, dump, load_search_file
from runner.tracking import report, search_run
from runner.tracking.importance import Importance, param_importance
from runner.tracking.importance import write as write_importance
from runner.tracking.mlflow_store import Store, connect, experiment_id, resolve_store
from runner.tracking.system_metrics import ParentRunAddress
from runner.tune import cluster
from runner.tune.recorder import TrialRecorder, lost_reason
from runner.tune.repeats import run_repeats
from runner.tune.searcher import load_saved_search
from runner.tune.storage import Location, resolve
from runner.tune.storage_check import check_storage
from runner.tune.trial import TrialSetup
from runner.tune.tuner import build_tuner, new_tuner

DRY_RUN_SAMPLES = 4
DEFAULT_STORAGE = "ray_results"
SEARCH_LOG = "search.log"  # in the search's folder: Ray's tables, the trials' output
REMOTE_LOGS = "search_logs"  # where the log of a search whose storage is a bucket goes (its own folder)
NOTE_LIMIT = 8000  # MLflow tag values are capped (8,000 characters on SQL stores)


@dataclass
class SearchOutcome:
    """What a finished (or interrupted) search returns; the benchmark reads the timings."""

    status: str  # finished | interrupted | failed | tracking_lost (the MLflow store failed mid-search)
    parent_run_id: str | None = None
    best: report.TrialRow | None = None
    rows: list[report.TrialRow] = field(default_factory=list)
    ray_path: Location | None = None  # the search's folder on the storage path
    concurrency: int = 0  # trials run at once
    timings: dict[str, float] = field(default_factory=dict)  # seconds: ray_start, fit, finalize, ...
    tracking_seconds: float = 0.0  # time the recorder spent writing to MLflow
    tracking_calls: int = 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    outcome = run(
        args.file,
        overrides=args.overrides,
        num_samples=args.num_samples,
        dry_run=args.dry_run,
        address=args.address,
        resume=args.resume,
        storage_path=args.storage_path,
        argv=argv,
        log_to_file=True,
        verbose=args.verbose,
    )
    if outcome.status == "finished" and outcome.best is None and not args.dry_run:
        return 1  # every trial failed before its first evaluation
    return {"finished": 0, "interrupted": 130, "tracking_lost": 3}.get(outcome.status, 1)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m runner.search", description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path, help="search file (YAML; see docs/search.md)")
    add_set_argument(parser, "override any key, e.g. train.epochs=4 or search.space.train.lr='{value: 1e-4}'")
    parser.add_argument("--num-samples", type=int, help="number of trials (search.num_samples)")
    parser.add_argument(
        "--dry-run", action="store_true", help="validate, print the base config and a few sampled trials; start nothing"
    )
    parser.add_argument("--address", help="join this Ray cluster (host:port) instead of starting one")
    parser.add_argument("--resume", action="store_true", help="continue the last interrupted search of FILE")
    parser.add_argument(
        "--verbose", action="store_true", help="show Ray's status tables and the trials' output here too"
    )
    parser.add_argument(
        "--storage-path",
        default=DEFAULT_STORAGE,
        help=f"Ray Tune results and checkpoints: a folder every node mounts, or s3://bucket/prefix (with "
        f"endpoint_override=HOST:PORT&scheme=http for an S3-compatible store), gs://... (default ./{DEFAULT_STORAGE})",
    )
    return parser


def run(
    path: Path,
    overrides: list[str] | None = None,
    num_samples: int | None = None,
    dry_run: bool = False,
    address: str | None = None,
    resume: bool = False,
    storage_path: str | Path = DEFAULT_STORAGE,
    argv: list[str] | None = None,
    echo: Callable[[str], None] = print,
    log_to_file: bool = False,
    verbose: bool = False,
) -> SearchOutcome:
    """The whole search; raises InputError (nothing started) on bad input.

    With ``log_to_file`` (the command) Ray's status tables and the trials' output go to
    ``SEARCH_LOG`` in the search's folder, unless ``verbose``; ``echo`` gets one line per event.
    """
    started = time.perf_counter()
    spec = load_search_file(path, overrides, num_samples)
    if dry_run:
        _print_dry_run(spec, echo)
        return SearchOutcome(status="finished")
    ray_path = _check_inputs(spec, address, storage_path, resume, echo)
    record = _open_record(spec)
    parent_id = _resumable_parent(record, spec, ray_path) if resume else None
    timings = {"validate": time.perf_counter() - started}
    outcome = SearchOutcome(status="failed", ray_path=ray_path, timings=timings)
    # Local folders: the search's own (its log beside its results; a search on object storage keeps
    # its log in the working folder), and the outermost one this search creates (the storage path
    # itself on a first search)
    local = Path(ray_path.path) if ray_path.local else Path(REMOTE_LOGS) / ray_path.name
    created = next((p for p in reversed([local, *local.parents]) if not p.exists()), None)
    try:
        with contextlib.ExitStack() as stack:
            if log_to_file:
                log = local / SEARCH_LOG
                echo(
                    f"Ray's tables and the trials' output: {log}" + ("" if verbose else " (--verbose shows them here)")
                )
                stack.enter_context(console.capture(log, verbose))
            else:
                stack.enter_context(console.speaking_through(echo))
            _search(spec, record, address, ray_path, parent_id, resume, outcome, console.say)
    except InputError:  # refused before any trial (the cluster cannot run one): leave nothing behind
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    timings["total"] = time.perf_counter() - started
    _say_how_to_continue(outcome, record.store, argv, echo)
    if outcome.best is not None and outcome.parent_run_id is not None:
        _say_where_to_look(record, outcome, echo)
    return outcome


def _search(
    spec: SearchFile,
    record: _Record,
    address: str | None,
    ray_path: Location,
    parent_id: str | None,
    resume: bool,
    outcome: SearchOutcome,
    echo: Callable[[str], None],
) -> None:
    """Start (or join) Ray, run the trials, record the summary, stop Ray."""
    mark = time.perf_counter()
    info = cluster.start(address)
    outcome.timings["ray_start"] = time.perf_counter() - mark
    recorder = None
    try:
        trials = _place_trials(spec, record, info, ray_path, parent_id, outcome, echo)
        recorder = trials.recorder
        _fit(spec, record, trials, ray_path, resume, outcome, echo)
    finally:
        _close(spec, record, info, recorder, outcome, echo)


def _say_where_to_look(record: _Record, outcome: SearchOutcome, echo: Callable[[str], None]) -> None:
    """How to open the search in the MLflow UI: its runs view (the UI may otherwise open on its
    GenAI overview, which shows nothing of a training search)."""
    runs_view = f"#/experiments/{record.exp_id}/runs?workflowType=machine_learning"
    uri = record.store.uri
    if uri.startswith(("http://", "https://")):
        echo(f"open the trials in the MLflow UI: {uri.rstrip('/')}/{runs_view}")
        return
    echo(f"open the trials in the MLflow UI: mlflow ui --backend-store-uri {_relative_uri(uri)} --host 127.0.0.1")
    echo(f"  then http://127.0.0.1:5000/{runs_view}")


def _relative_uri(uri: str) -> str:
    """A SQLite URI under the working folder, written relative to it (shorter to type)."""
    if not uri.startswith("sqlite:///"):
        return uri
    path = Path(uri.removeprefix("sqlite:///"))
    with contextlib.suppress(ValueError):
        return f"sqlite:///{path.relative_to(Path.cwd())}"
    return uri


@dataclass
class _Record:
    """The MLflow side of a search: the store, a client and the experiment's id."""

    store: Store
    client: Any  # MlflowClient
    exp_id: str


def _check_inputs(
    spec: SearchFile, address: str | None, storage_path: str | Path, resume: bool, echo: Callable[[str], None]
) -> Location:
    """Everything that can fail on bad input, before anything is written; returns the Ray path."""
    _ensure_synthetic(spec, echo)
    echo(check_data(spec))
    if spec.base.data.store:  # once per node, before any trial: trials then only map it
        echo(pack_features(spec.trial_config({"data.features": candidate_streams(spec)}).data))
    if address is not None:  # before anything is written: ray.init retries a dead address for minutes
        cluster.check_reachable(address)
    storage = resolve(storage_path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    ray_path = _resume_path(spec, storage) if resume else storage / f"{spec.experiment}-{stamp}"
    if spec.search.selection is not None:  # before trials exist: every trial (and the hash) sees it
        echo(_apply_selection(spec, ray_path))
    return ray_path


def _open_record(spec: SearchFile) -> _Record:
    store = resolve_store(spec.tracking.uri, Path.cwd())
    client = connect(store)
    return _Record(store, client, experiment_id(client, store, spec.experiment))


@dataclass
class _Trials:
    """How trials run: their setup, resources each, how many at once, and their MLflow recorder."""

    setup: TrialSetup
    resources: dict[str, float]
    concurrency: int
    recorder: TrialRecorder


def _place_trials(
    spec: SearchFile,
    record: _Record,
    info: cluster.Cluster,
    ray_path: Location,
    parent_id: str | None,
    outcome: SearchOutcome,
    echo: Callable[[str], None],
) -> _Trials:
    """Size the trials to the cluster, check that every node reaches the storage, open (or reopen) the
    parent run, set up the recorder."""
    client, exp_id = record.client, record.exp_id
    resources = cluster.trial_resources(spec.resources, info)
    concurrency = cluster.max_concurrent(spec.search, info, resources)
    echo(check_storage(ray_path.parent))  # every node reaches it, before any run is created
    outcome.concurrency = concurrency
    searcher = (
        f"optuna-{spec.search.sampler} seed={spec.search.seed} startup={spec.search.startup_trials} "
        f"seed_configs={len(spec.seed_configs)} + {spec.search.scheduler.type}"
    )
    if parent_id is None:
        parent_id = search_run.start_parent(client, exp_id, spec, ray_path.uri, ray_path.name, searcher)
    else:
        client.update_run(parent_id, status="RUNNING")
    outcome.parent_run_id = parent_id
    setup = TrialSetup(spec, cluster.torch_threads(resources), ParentRunAddress(record.store.uri, exp_id, parent_id))
    recorder = TrialRecorder(record.store, exp_id, parent_id, setup)
    echo(
        f"search {ray_path.name}: {spec.search.num_samples} trials, {concurrency} at a time, "
        f"{resources['cpu']:g} CPU + {resources['gpu']:g} GPU each on a cluster of {info.cpus:g} CPUs, "
        f"{info.gpus:g} GPUs; MLflow {record.store.uri} (experiment {spec.experiment}, parent run {parent_id})"
    )
    return _Trials(setup, resources, concurrency, recorder)


def _fit(
    spec: SearchFile,
    record: _Record,
    trials: _Trials,
    ray_path: Location,
    resume: bool,
    outcome: SearchOutcome,
    echo: Callable[[str], None],
) -> None:
    """Run the Tuner to its end; sets ``outcome.status``."""
    tuner = build_tuner(trials.setup, ray_path, trials.resources, trials.concurrency, trials.recorder, resume)
    mark = time.perf_counter()
    results = tuner.fit()
    outcome.timings["fit"] = time.perf_counter() - mark
    outcome.status = _fit_status(spec, record, outcome.parent_run_id, resume, results)
    if outcome.status == "finished" and spec.search.repeat_top is not None:
        _repeat_top(record, trials, ray_path, outcome, echo)


def _repeat_top(
    record: _Record, trials: _Trials, ray_path: Location, outcome: SearchOutcome, echo: Callable[[str], None]
) -> None:
    """``search.repeat_top``: re-train the best finished configs with other seeds (runner.tune.repeats)."""
    mark = time.perf_counter()

    def tuner_for(path: Location, search_alg: Any, scheduler: Any, num_samples: int) -> Any:
        setup, resources, concurrency, recorder = trials.setup, trials.resources, trials.concurrency, trials.recorder
        return new_tuner(setup, path, resources, concurrency, recorder, search_alg, scheduler, num_samples)

    parent_id = outcome.parent_run_id
    complete = run_repeats(
        record.client, record.exp_id, parent_id, trials.setup, ray_path, tuner_for, trials.recorder, echo
    )
    outcome.timings["repeats"] = time.perf_counter() - mark
    if lost_reason(parent_id) is not None:
        outcome.status = "tracking_lost"
    elif not complete:
        outcome.status = "interrupted"


def _fit_status(spec: SearchFile, record: _Record, parent_id: str, resume: bool, results: Any) -> str:
    """finished, interrupted (trials left to run) or tracking_lost; closes children left open."""
    if lost_reason(parent_id) is not None:
        return "tracking_lost"
    client, exp_id = record.client, record.exp_id
    if resume:  # runs of trials Ray never snapshotted: the searcher reran them under new ids
        search_run.drop_orphans(client, exp_id, parent_id, {Path(r.path).name.removeprefix("trial_") for r in results})
    interrupted = search_run.close_open_children(client, exp_id, parent_id) > 0 or (
        len(results) < spec.search.num_samples
    )
    return "interrupted" if interrupted else "finished"


def _close(
    spec: SearchFile,
    record: _Record,
    info: cluster.Cluster,
    recorder: TrialRecorder | None,
    outcome: SearchOutcome,
    echo: Callable[[str], None],
) -> None:
    """Finish the parent run (unless its store is lost), keep the tracking overhead, stop Ray."""
    timings = outcome.timings
    mark = time.perf_counter()
    if outcome.parent_run_id is not None and outcome.status != "tracking_lost":
        if outcome.status == "failed":
            search_run.close_open_children(record.client, record.exp_id, outcome.parent_run_id)
        _finalize(record.client, record.exp_id, spec, outcome, echo)
    timings["finalize"] = time.perf_counter() - mark
    if recorder is not None:
        outcome.tracking_seconds, outcome.tracking_calls = recorder.seconds, recorder.calls
    mark = time.perf_counter()
    cluster.stop(info)
    timings["ray_stop"] = time.perf_counter() - mark


def _say_how_to_continue(
    outcome: SearchOutcome, store: Store, argv: list[str] | None, echo: Callable[[str], None]
) -> None:
    """An interrupted search, or one whose tracking store failed, prints the command that resumes it."""
    if outcome.status not in ("interrupted", "tracking_lost"):
        return
    again = ["python", "-m", "runner.search", *(argv if argv is not None else sys.argv[1:])]
    command = shlex.join([*again, *([] if "--resume" in again else ["--resume"])])
    if outcome.status == "interrupted":
        echo(f"search interrupted; continue it with: {command}")
    else:
        print(
            f"error: search stopped: tracking store {store.uri} failed ({lost_reason(outcome.parent_run_id)}); "
            f"trial results and checkpoints are kept in {outcome.ray_path}; once the store is back, continue "
            f"with: {command}",
            file=sys.stderr,
        )


def check_data(spec: SearchFile) -> str:
    """Open the annotations and probe every feature file of every stream the search may use.

    Probing reads the feature files (only the headers of .npy), once per file and stream, the way
    the training loop's datasets do, so a bad file fails here (DataError naming it) rather than in a trial.
    Coverage warnings (``localization.data.report``) follow the summary line, one per line.
    """
    data = spec.base.data
    subsets = {name: load_subset(data, name) for name in dict.fromkeys((data.train_subset, data.val_subset))}
    warnings = []
    for name in candidate_streams(spec):
        cfg = spec.trial_config({"data.features": [name]}).data
        for subset in subsets.values():
            # probes every video's file, honours on_missing; coverage catches a wrong time grid
            warnings += probe_features(cfg, subset)
    train = subsets[data.train_subset]
    summary = (
        f"data: {len(train.videos)} {data.train_subset} / {len(subsets[data.val_subset].videos)} "
        f"{data.val_subset} videos, {len(train.class_names)} classes ({data.annotations})"
    )
    return "\n".join([summary, *(f"warning: {line}" for line in warnings)])


def candidate_streams(spec: SearchFile) -> list[str]:
    """Every feature stream some trial of the search may read."""
    streams = list(spec.base.data.features)
    if "data.features" in spec.space.keys:
        streams += [name for combo in spec.space["data.features"].candidates() for name in combo]
    return list(dict.fromkeys(streams))


def _ensure_synthetic(spec: SearchFile, echo: Callable[[str], None]) -> None:
    """``synthetic:`` in the file: generate the dataset into data.annotations' folder if missing."""
    annotations = Path(spec.base.data.annotations)
    if spec.synthetic is None or annotations.exists():
        return
    echo(
        f"generating the synthetic dataset into {annotations.parent} "
        f"(seed {spec.synthetic.seed}, {spec.synthetic.videos} videos)"
    )
    make_synthetic(annotations.parent, seed=spec.synthetic.seed, videos=spec.synthetic.videos)
    if not annotations.is_file():
        raise InputError(
            f"{spec.source}: data.annotations: the synthetic generator writes "
            f"annotations_gt.json, not {annotations.name}"
        )


def _apply_selection(spec: SearchFile, ray_path: Location) -> str:
    """``search.selection``: split the training subset into ``<ray path>/selection`` and point the
    base config at it, so trials train on the rest and are scored (selected) on the held-out slice."""
    from runner.searchfile.selection import write_selection

    selection = spec.search.selection
    if not ray_path.local:  # trials read the split as local files, like the rest of the data
        raise InputError(
            f"search.selection: the held-out split is written beside the search's results, which needs a "
            f"--storage-path folder every node mounts, not {ray_path.parent}"
        )
    out = Path(ray_path.path) / "selection"
    overrides = write_selection(spec.base.data, selection.holdout_fraction, selection.seed, out)
    spec.with_overrides(overrides)
    return (
        f"selection: trials are scored on {selection.holdout_fraction:.0%} of {spec.base.data.val_subset!r} "
        f"held out (seed {selection.seed}, {spec.base.data.val_videos}); validation stays untouched"
    )


def _resume_path(spec: SearchFile, storage: Location) -> Location:
    """The newest search of this experiment under the storage path that Ray can restore."""
    from ray import tune

    for candidate in reversed(storage.glob(f"{spec.experiment}-*")):
        if tune.Tuner.can_restore(candidate.path, storage_filesystem=candidate.fs):
            return candidate
    raise InputError(f"--resume: no search of experiment {spec.experiment!r} to resume under {storage}")


def _resumable_parent(record: _Record, spec: SearchFile, ray_path: Location) -> str:
    """The parent run of the search to resume, refusing a finished search or a changed file."""
    parent_id = search_run.find_parent(record.client, record.exp_id, ray_path.uri)
    if parent_id is None:
        raise InputError(f"--resume: no MLflow parent run for {ray_path} in {record.store.uri}")
    tags = record.client.get_run(parent_id).data.tags
    if tags.get(STATUS) == "finished":
        raise InputError(f"--resume: the last search ({ray_path.name}) finished; nothing to resume")
    if tags.get(SPEC_HASH) != search_run.spec_hash(spec):
        raise InputError(
            f"--resume: {spec.source} (with --set/--num-samples) differs from the one "
            f"search {ray_path.name} started with; resume with the same file and options"
        )
    return parent_id


def _finalize(client: Any, exp_id: str, spec: SearchFile, outcome: SearchOutcome, echo: Callable[[str], None]) -> None:
    """Leaderboard, plots, best trial and status on the parent run; print the summary."""
    parent_id = outcome.parent_run_id
    metric, mode = spec.search.metric, spec.search.mode
    rows = report.collect(client, search_run.child_runs(client, exp_id, parent_id), metric)
    table = report.leaderboard(rows, spec.space, metric, mode)
    markdown = report.to_markdown(table)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        table.to_csv(out / "leaderboard.csv", index=False)
        (out / "leaderboard.md").write_text(markdown + "\n")
        client.log_artifact(parent_id, str(out / "leaderboard.csv"))
        client.log_artifact(parent_id, str(out / "leaderboard.md"))
        if rows:
            report.plot_all(rows, spec.space, metric, mode, out / "plots")
            client.log_artifacts(parent_id, str(out / "plots"), "plots")
        importance = _log_importance(client, parent_id, outcome.ray_path, out / "importance")
    best = report.best_row(rows, mode)
    outcome.rows, outcome.best = rows, best
    if best is not None:
        client.log_metric(parent_id, best_metric(metric), best.best)
        client.set_tag(parent_id, BEST_TRIAL_ID, best.trial_id)
        client.set_tag(parent_id, BEST_RUN_ID, best.run_id)
    client.set_tag(parent_id, STATUS, outcome.status)
    summary = importance.summary() if importance is not None else ""
    client.set_tag(parent_id, NOTE, f"Search {outcome.status}. {summary}\n\n{markdown}"[:NOTE_LIMIT])
    status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(outcome.status, "FAILED")
    client.set_terminated(parent_id, status)

    counts = {s: sum(r.status == s for r in rows) for s in ("finished", "pruned", "failed", "interrupted")}
    echo("\n" + markdown + "\n")
    echo(f"{len(rows)} trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    echo(importance.summary() if importance is not None else "what mattered: fewer than 2 finished trials")
    repeats = report.repeat_scores([(r.trial_id, r.repeat_of, r.best) for r in rows])
    for trial_id, scores in repeats.items():
        mean, spread = report.mean_and_spread(scores)
        echo(f"repeats of trial {trial_id}: {metric} mean {mean:.4g}, spread {spread:.3g} over {len(scores)} seeds")
    if best is not None:
        label = "validation mAP" if "mAP" in metric else f"validation {metric}"
        echo(f"best {label}: {best.best} (trial {best.trial_id}, MLflow run {best.run_id})")
        if best.trial_id in repeats:
            echo(f"  chosen by the mean over its {len(repeats[best.trial_id])} seeds (search.repeat_top)")
    else:
        echo("no trial reached an evaluation: no best trial")


def _log_importance(client: Any, parent_id: str, ray_path: Location | None, out: Path) -> Importance | None:
    """The searched keys' importance over the study Ray saved, as artifacts of the parent run."""
    saved = load_saved_search(ray_path) if ray_path is not None else None
    importance = param_importance(saved.study) if saved is not None else None
    if importance is not None:
        write_importance(importance, out)
        client.log_artifacts(parent_id, str(out), IMPORTANCE_DIR)
    return importance


def _print_dry_run(spec: SearchFile, echo: Callable[[str], None]) -> None:
    s = spec.search
    echo(f"# {spec.path}: valid\n# resolved base config\n{dump_yaml(spec.base)}")
    options = {
        k: v for k, v in spec.resolved().items() if k in ("experiment", "search", "resources", "tracking", "synthetic")
    }
    options["search"].pop("space")
    echo(f"# search\n{dump(options)}")
    echo("# space")
    for param in spec.space.params:
        echo(f"  {param.key}: {param.describe()}")
    if spec.postprocess is not None:
        echo(f"# post-processing: {spec.postprocess.trials} settings tried at every evaluation, no retraining")
        for param in spec.postprocess.space.params:
            echo(f"  {param.key}: {param.describe()}")
    direction = "maximize" if s.mode == "max" else "minimize"
    queued = spec.seed_params()
    known = s.startup_trials if s.sampler == "tpe" else s.num_samples  # later TPE picks depend on results
    count = min(s.num_samples, max(len(queued), min(DRY_RUN_SAMPLES, known)))
    samples = sample_configs(
        spec.space, make_sampler(s.sampler, s.seed, s.startup_trials, s.multivariate), count, direction, queued
    )
    startup = f", {s.startup_trials} start-up trials before TPE" if s.sampler == "tpe" else ""
    echo(
        f"# first {len(samples)} trial configs ({len(queued)} seed configs, "
        f"then the seeded {s.sampler} sampler{startup})"
    )
    for i, values in enumerate(samples, start=1):
        shown = ", ".join(f"{k}={console.compact(v)}" for k, v in values.items())
        echo(f"  trial {i}{' (seed config)' if i <= len(queued) else ''}: {shown}")
    annotations = Path(spec.base.data.annotations)
    if annotations.exists():
        echo(f"# {check_data(spec)}")
    elif spec.synthetic is not None:
        echo(f"# data: {annotations} is missing and will be generated (synthetic seed {spec.synthetic.seed})")
    echo("# dry run: nothing started")


if __name__ == "__main__":
    run_command(main)
