"""The one door into the science: what ``runner`` (and a notebook) may use of ``localization``.

Everything here is typed and stable; the modules behind it may move. Importing this module is
cheap (the config, errors and metrics: numpy and yaml): functions that need torch import it when
called, so ``import runner.search`` or ``import runner.promote`` never loads torch by itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from localization.cli import add_set_argument, write_json
from localization.cli import run as run_command
from localization.config import (
    RUN_SECTIONS,
    DataConfig,
    RunConfig,
    apply_overrides,
    build_section,
    config_from_dict,
    dump_yaml,
    flatten,
    load_config,
    read_yaml,
    set_dotted,
    to_dict,
)
from localization.data.annotations import SubsetAnnotations, load_subset
from localization.errors import ConfigError, DataError, InputError
from localization.metrics import DetectionMetrics, format_table, metric_key, metrics_as_floats, tiou_key

if TYPE_CHECKING:
    from localization.inference.detector import Detector
    from localization.training.loop import EpochReport, EvalResult, OnEpoch, TrainResult

__all__ = [
    "RUN_SECTIONS",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DetectionMetrics",
    "Detector",
    "EpochReport",
    "EvalResult",
    "InputError",
    "RunConfig",
    "SubsetAnnotations",
    "TrainResult",
    "add_set_argument",
    "apply_overrides",
    "build_section",
    "config_from_dict",
    "dump_yaml",
    "evaluate_checkpoint",
    "flatten",
    "format_table",
    "load_config",
    "load_detector",
    "load_subset",
    "make_synthetic",
    "metric_key",
    "metrics_as_floats",
    "probe_features",
    "read_yaml",
    "rescore",
    "run_command",
    "save_inference_checkpoint",
    "set_dotted",
    "set_torch_threads",
    "tiou_key",
    "to_dict",
    "train",
    "write_json",
]


def train(
    cfg: RunConfig,
    out_dir: Path,
    on_epoch: OnEpoch | None = None,
    resume: Path | None = None,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train one model, checkpointing ``out_dir/checkpoint.pt`` every epoch; ``on_epoch`` may stop it."""
    from localization.training.loop import train as train_model

    return train_model(cfg, out_dir, on_epoch=on_epoch, resume=resume, log=log)


def evaluate_checkpoint(
    cfg: RunConfig, checkpoint: Path, subset: str, raw_out: Path | None = None, use_ema: bool = True
) -> EvalResult:
    """Detections and mAP of a checkpoint on ``subset`` with ``cfg``'s data and post-processing."""
    from localization.inference.evaluation import evaluate_checkpoint as evaluate

    return evaluate(cfg, checkpoint, subset, raw_out=raw_out, use_ema=use_ema)


def rescore(cfg: RunConfig, raw_path: Path, subset: str) -> EvalResult:
    """Re-score raw candidates saved by ``evaluate_checkpoint(raw_out=...)`` with ``cfg.test``."""
    from localization.inference.evaluation import rescore as rescore_raw

    return rescore_raw(cfg, raw_path, subset)


def load_detector(weights: Path, cfg: RunConfig) -> Detector:
    """A model ready to detect actions in named videos (EMA weights, ``cfg``'s settings)."""
    from localization.inference.detector import Detector

    return Detector(weights, cfg)


def save_inference_checkpoint(checkpoint: Path, dest: Path) -> list[str]:
    """Write the inference part of a training checkpoint to ``dest``; returns its class names."""
    from localization.training.checkpoints import save_inference_checkpoint as save

    return save(checkpoint, dest)


def probe_features(data: DataConfig, annotations: SubsetAnnotations) -> list[str]:
    """Check every video's feature files the way the datasets read them (DataError otherwise);
    returns the subset's coverage warnings (a wrong fps or time grid, ``localization.data.report``)."""
    import dataclasses

    from localization.data.dataset import InferenceDataset
    from localization.data.features import FeatureReader
    from localization.data.report import data_warnings

    reader = FeatureReader(dataclasses.replace(data, cache_features=False))
    return data_warnings({annotations.subset: InferenceDataset(data, annotations, reader)})


def make_synthetic(out_dir: Path, seed: int, videos: int) -> None:
    """Write the synthetic dataset (FineAction's layout) and its ``config.yaml`` into ``out_dir``."""
    from localization.data.synthetic import generate

    generate(out_dir, seed=seed, videos=videos)


def set_torch_threads(num_threads: int) -> None:
    """Use ``num_threads`` CPU threads for torch (as a trial did, so float sums match to the digit)."""
    import torch

    torch.set_num_threads(num_threads)
