"""Reading what a trial left in its Ray trial folder: reported results, kept checkpoints, its error.

Plain files only (no Ray import): the recorder reads them when a trial ends or a search resumes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from runner.names import REPORT_FILE


def best_checkpoint(trial_dir: Path, metric: str, sign: float) -> tuple[Path, dict[str, Any]] | None:
    """The kept checkpoint whose epoch measured the best `metric` (ties: the later epoch).

    Ray keeps the best-scored checkpoint (see runner.trial's ``checkpoint_score``; on equal
    scores the later one) and the latest, so the best measured epoch is always among them.
    """
    best: tuple[float, int, Path, dict[str, Any]] | None = None
    for directory in trial_dir.glob("checkpoint_*"):
        report_file = directory / REPORT_FILE
        if not report_file.is_file():
            continue
        report = json.loads(report_file.read_text())
        value = report["metrics"].get(metric)
        if value is None or not math.isfinite(value):
            continue
        key = (sign * value, int(report["epoch"]))
        if best is None or key > best[:2]:
            best = (*key, directory, report)
    return None if best is None else (best[2], best[3])


def reported_results(trial_dir: Path) -> list[dict[str, Any]]:
    """What the trial reported to Tune so far (Ray's ``result.json``, one JSON object per line)."""
    path = trial_dir / "result.json"
    if not path.is_file():
        return []
    results = []
    for line in path.read_text().splitlines():
        try:
            results.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    return [r for r in results if "epoch" in r]


def failure_reason(trial: Any) -> str:
    """The last line of the trial's error (for example the training loop's TrainingDiverged message)."""
    error_file = getattr(trial, "error_file", None)
    text = Path(error_file).read_text() if error_file and Path(error_file).is_file() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "trial failed (no error message)")[:1000]
