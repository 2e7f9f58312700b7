"""Honest model selection: a held-out slice of the training subset to select on.

Selecting the best trial on the validation subset and then reporting validation mAP overstates
the result (the selection has seen the test data). ``search.selection: {holdout_fraction: 0.1,
seed: 0}`` instead holds out a deterministic slice of the training videos: trials train on the
rest, are scored (and selected) on the slice, and validation stays untouched for the final
``runner.evaluate``.

The split hashes each video id with the seed, so it depends only on the set of ids, the fraction
and the seed: not on file order, Python's hash seed, or the machine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from localization.api import ConfigError, DataConfig, load_subset
from runner.names import SELECTION


def _rank(video_id: str, seed: int) -> str:
    """Order key of one video: a SHA-256 of seed and id (stable everywhere, unlike ``hash``)."""
    return hashlib.sha256(f"{seed}:{video_id}".encode()).hexdigest()


def holdout_size(num_videos: int, fraction: float) -> int:
    """Videos held out: ``round(fraction * n)``, at least 1 and leaving at least 1 to train on."""
    return min(max(round(fraction * num_videos), 1), num_videos - 1)


def holdout_split(video_ids: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``video_ids`` into (train_ids, holdout_ids), disjoint, each in input order.

    The held-out videos are the ``holdout_size`` ids with the smallest hash of (seed, id).
    """
    if not 0 < fraction < 1:
        raise ConfigError(f"search.selection.holdout_fraction: must be in (0, 1), got {fraction}")
    if len(set(video_ids)) != len(video_ids):
        raise ConfigError("search.selection: the training subset lists a video id twice")
    if len(video_ids) < 2:
        raise ConfigError(f"search.selection: needs at least 2 training videos, got {len(video_ids)}")
    ranked = sorted(video_ids, key=lambda vid: _rank(vid, seed))
    held = set(ranked[: holdout_size(len(video_ids), fraction)])
    train = [vid for vid in video_ids if vid not in held]
    holdout = [vid for vid in video_ids if vid in held]
    return train, holdout


@dataclass(frozen=True)
class Selection:
    """Which videos chose the promoted trial: what the final evaluation must not reuse."""

    subset: str  # the subset whose videos scored the trials (data.val_subset of the trial)
    holdout: bool  # True: a held-out slice of that subset, never trained on
    description: str  # one line for people

    def warning_for(self, evaluated_subset: str) -> str | None:
        """A warning when evaluating on ``evaluated_subset`` scores the videos that selected the model.

        The training loop evaluates the config's val subset restricted to ``data.val_videos``, so with a
        holdout the evaluated videos are then exactly the held-out slice that selected the model.
        """
        if evaluated_subset.lower() != self.subset.lower():
            return None
        advice = "" if self.holdout else " (use search.selection.holdout_fraction for an honest estimate)"
        return (
            f"the model was selected on {self.description}, the videos being evaluated: this mAP is optimistic{advice}"
        )


def describe_selection(params: Mapping[str, str], search_tags: Mapping[str, str]) -> Selection:
    """Read the selection from a trial run's params and its search (parent) run's tags.

    Contract: the trial's param ``data.val_subset`` is the subset it was scored on, and a
    non-empty ``data.val_videos`` (a file of held-out video ids, see :func:`write_selection`)
    restricts that subset to the held-out slice. The parent run's tag ``runner.selection`` (JSON
    ``{"holdout_fraction": f, "seed": s}``) adds the split's settings to the description.
    """
    subset = params.get("data.val_subset", "validation")
    if params.get("data.val_videos") in (None, "", "None", "null"):  # MLflow params are text
        return Selection(subset, False, f"the whole {subset!r} subset")
    settings = json.loads(search_tags.get(SELECTION, "{}"))
    detail = f" ({settings['holdout_fraction']:.0%}, seed {settings['seed']})" if settings else ""
    return Selection(subset, True, f"a held-out slice of {subset!r}{detail}, not trained on")


def write_selection(data_cfg: DataConfig, fraction: float, seed: int, out_dir: Path) -> list[str]:
    """Split the training subset, write both id lists to ``out_dir``; return the run-config
    overrides that make a trial train on one list and score (select) on the other.

    Meant for runner.search when ``search.selection`` is set: the search's base config gets these
    overrides and its parent run the tag ``runner.selection``. The training loop trains on
    ``data.train_videos`` of the train subset and scores ``data.val_videos`` of the val subset.
    """
    video_ids = [video.video_id for video in load_subset(data_cfg, data_cfg.train_subset).videos]
    train_ids, holdout_ids = holdout_split(video_ids, fraction, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    lists = {"train_videos": train_ids, "val_videos": holdout_ids}
    for name, ids in lists.items():
        (out_dir / f"{name}.txt").write_text("\n".join(ids) + "\n")
    return [
        f"data.val_subset={data_cfg.train_subset}",
        *(f"data.{name}={(out_dir / f'{name}.txt').resolve()}" for name in lists),
    ]
