"""Where a search's wall time goes: training vs scheduling vs tracking.

``python benchmarks/search_overhead.py [FILE] [--set k=v ...] [--num-samples N]`` runs the search
(default: the demo) in this process, then prints a markdown table:

- wall time (validation, Ray start, ``Tuner.fit``, leaderboard/plots) against the sum of the
  trials' training time (the training loop's epoch times, evaluation included);
- slot utilisation = training time / (fit time x concurrent trials);
- per-trial scheduling overhead = (fit time x concurrent trials - training time) / trials, split
  into idle slots (no trial placed: start-up, the tail when fewer trials than slots remain) and
  time inside trials that is not training (worker start or reuse, imports, data loading, model
  build, checkpoint copies, result round trips), using the child runs' start and end times;
- per-trial start-up latency (child run start to the end of its first epoch, minus that epoch);
- per-trial tracking overhead: the driver's time inside MLflow calls (measured by the recorder).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from runner import search
from runner.tracking import mlflow_store


def run_times(client: MlflowClient, rows: list) -> tuple[list[float], list[float]]:
    """Per trial: seconds its child run was open (driver clock, trial start to end), and the
    start-up latency (run start to its first epoch result, minus that epoch's own time)."""
    durations, latencies = [], []
    for row in rows:
        info = client.get_run(row.run_id).info
        if info.end_time:
            durations.append((info.end_time - info.start_time) / 1000)
        first = [m for m in client.get_metric_history(row.run_id, "epoch_time_s") if m.step == 1]
        if first:
            latencies.append((first[0].timestamp - info.start_time) / 1000 - first[0].value)
    return durations, latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("file", nargs="?", type=Path, default=Path("search_spaces/demo.yaml"))
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--num-samples", type=int)
    parser.add_argument("--storage-path", type=Path, default=Path(search.DEFAULT_STORAGE))
    args = parser.parse_args(argv)

    outcome = search.run(args.file, overrides=args.set, num_samples=args.num_samples, storage_path=args.storage_path)
    spec = search.load_search_file(args.file, args.set, args.num_samples)
    client = MlflowClient(tracking_uri=mlflow_store.resolve_store(spec.tracking.uri, Path.cwd()).uri)
    rows, t = outcome.rows, outcome.timings
    n = max(len(rows), 1)
    train = sum(r.train_time_s for r in rows)
    epochs = sum(r.epochs for r in rows)
    slots = max(outcome.concurrency, 1)
    durations, latencies = run_times(client, rows)
    open_time = sum(durations)
    by_status = " / ".join(str(sum(r.status == s for r in rows)) for s in ("finished", "pruned", "failed"))
    fit = t.get("fit", 0.0)
    table = [
        ("trials (finished / pruned / failed)", f"{len(rows)} ({by_status})"),
        ("trial-epochs trained", f"{epochs}"),
        ("concurrent trials", f"{slots}"),
        ("wall time, total", f"{t.get('total', 0):.1f} s"),
        ("  validate file + data, open the MLflow store", f"{t.get('validate', 0):.1f} s"),
        ("  Ray start", f"{t.get('ray_start', 0):.1f} s"),
        ("  Tuner.fit", f"{t.get('fit', 0):.1f} s"),
        ("  leaderboard + plots to MLflow", f"{t.get('finalize', 0):.1f} s"),
        ("  Ray shutdown", f"{t.get('ray_stop', 0):.1f} s"),
        ("sum of trials' training time (epochs incl. validation)", f"{train:.1f} s"),
        ("slot utilisation (training / (fit x slots))", f"{train / max(fit * slots, 1e-9):.0%}"),
        ("scheduling overhead per trial ((fit x slots - training) / trials)", f"{(fit * slots - train) / n:.2f} s"),
        (
            "  of which slots idle ((fit x slots - time trials were running) / trials)",
            f"{(fit * slots - open_time) / n:.2f} s",
        ),
        (
            "  of which inside trials ((time trials were running - training) / trials)",
            f"{(open_time - train) / n:.2f} s",
        ),
        (
            "start-up latency per trial (median, run start -> first epoch - epoch)",
            f"{statistics.median(latencies):.2f} s" if latencies else "-",
        ),
        (
            "tracking (MLflow) time per trial, driver side",
            f"{outcome.tracking_seconds / n:.2f} s ({outcome.tracking_calls} callback calls)",
        ),
        ("tracking time per trial-epoch", f"{outcome.tracking_seconds / max(epochs, 1) * 1000:.0f} ms"),
    ]
    given = argv if argv is not None else sys.argv[1:]
    command = " ".join(["python benchmarks/search_overhead.py", *given])
    print(f"\n### Search overhead: `{command}`\n")
    print("| measure | value |\n|---|---|")
    for name, value in table:
        print(f"| {name} | {value} |")
    return 0 if outcome.status == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
