"""The one door into the science: what ``runner`` (and a notebook) may use of ``localization``.

The names here are stable; the modules behind them may move. Importing this module is cheap (the
config, errors, annotations and metrics: numpy and yaml). The names that need torch (training,
evaluation, the detector, checkpoints) are loaded on first use (:func:`__getattr__`), so
``import runner.search`` or ``import runner.promote`` does not load torch by itself; type
checkers see them through the ``TYPE_CHECKING`` imports below.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localization.cli import add_set_argument, exit_status, write_json
from localization.cli import run as run_command
from localization.config.loading import (
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
from localization.config.schema import RESCORABLE_TEST_KEYS, RUN_SECTIONS, DataConfig, RunConfig, TestConfig
from localization.data.annotations import SubsetAnnotations, load_subset
from localization.errors import ConfigError, DataError, InputError
from localization.metrics import DetectionMetrics, format_table, metric_key, metrics_as_floats, tiou_key

if TYPE_CHECKING:
    from localization.inference.detector import Detector, Segment
    from localization.inference.evaluation import EvalResult, SubsetScorer, evaluate_checkpoint, rescore
    from localization.model.weights import save_inference_checkpoint
    from localization.training.loop import EpochReport, OnEpoch, TrainingDiverged, TrainResult, train

# module -> the names of it this door offers, imported on first use
_LAZY_MODULES: dict[str, tuple[str, ...]] = {
    "localization.training.loop": ("train", "EpochReport", "OnEpoch", "TrainResult", "TrainingDiverged"),
    "localization.inference.evaluation": ("evaluate_checkpoint", "rescore", "EvalResult", "SubsetScorer"),
    "localization.inference.detector": ("Detector", "Segment"),
    "localization.model.weights": ("save_inference_checkpoint",),
}
_LAZY = {name: module for module, names in _LAZY_MODULES.items() for name in names}

__all__ = [
    "RESCORABLE_TEST_KEYS",
    "RUN_SECTIONS",
    "ConfigError",
    "DataConfig",
    "DataError",
    "DetectionMetrics",
    "Detector",
    "EpochReport",
    "EvalResult",
    "InputError",
    "OnEpoch",
    "RunConfig",
    "Segment",
    "SubsetAnnotations",
    "SubsetScorer",
    "TestConfig",
    "TrainResult",
    "TrainingDiverged",
    "add_set_argument",
    "apply_overrides",
    "build_section",
    "config_from_dict",
    "dump_yaml",
    "evaluate_checkpoint",
    "exit_status",
    "flatten",
    "format_table",
    "load_config",
    "load_subset",
    "make_synthetic",
    "metric_key",
    "metrics_as_floats",
    "pack_features",
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


def __getattr__(name: str) -> Any:
    """Load a torch-side name on first use (PEP 562) and keep it for the next lookups."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def probe_features(data: DataConfig, annotations: SubsetAnnotations) -> list[str]:
    """Check every video's feature files the way the datasets read them (DataError otherwise);
    returns the subset's coverage warnings (a wrong fps or time grid, ``localization.data.report``)."""
    from localization.data.dataset import InferenceDataset
    from localization.data.features import FeatureReader
    from localization.data.report import data_warnings

    reader = FeatureReader(dataclasses.replace(data, cache_features=False, store=False))  # the files themselves
    return data_warnings({annotations.subset: InferenceDataset(data, annotations, reader)})


def pack_features(data: DataConfig) -> str:
    """Build (or find) the node's feature store of ``data.features`` (``data.store_dir``) before any trial
    starts, so trials only map it; returns one line per stream (where, size, built or found)."""
    from localization.data.feature_store import describe, pack

    return describe(pack(data))


def set_torch_threads(num_threads: int) -> None:
    """Use ``num_threads`` CPU threads for torch (as a trial did, so float sums match to the digit)."""
    import torch

    torch.set_num_threads(num_threads)


def make_synthetic(out_dir: Path, seed: int, videos: int) -> Path:
    """Write the synthetic dataset (FineAction's layout) into ``out_dir``; returns its ``config.yaml``."""
    from localization.data.synthetic import generate

    return generate(out_dir, seed=seed, videos=videos)
