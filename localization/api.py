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
from typing import TYPE_CHECKING, Any

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
    from localization.data.synthetic import generate as make_synthetic
    from localization.inference.detector import Detector, Segment
    from localization.inference.evaluation import EvalResult, evaluate_checkpoint, rescore
    from localization.training.checkpoints import save_inference_checkpoint
    from localization.training.loop import EpochReport, OnEpoch, TrainingDiverged, TrainResult, train

# name -> (module, attribute), imported on first use
_LAZY: dict[str, tuple[str, str]] = {
    "train": ("localization.training.loop", "train"),
    "EpochReport": ("localization.training.loop", "EpochReport"),
    "OnEpoch": ("localization.training.loop", "OnEpoch"),
    "TrainResult": ("localization.training.loop", "TrainResult"),
    "TrainingDiverged": ("localization.training.loop", "TrainingDiverged"),
    "evaluate_checkpoint": ("localization.inference.evaluation", "evaluate_checkpoint"),
    "rescore": ("localization.inference.evaluation", "rescore"),
    "EvalResult": ("localization.inference.evaluation", "EvalResult"),
    "Detector": ("localization.inference.detector", "Detector"),
    "Segment": ("localization.inference.detector", "Segment"),
    "save_inference_checkpoint": ("localization.training.checkpoints", "save_inference_checkpoint"),
    "make_synthetic": ("localization.data.synthetic", "generate"),
}

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
    "OnEpoch",
    "RunConfig",
    "Segment",
    "SubsetAnnotations",
    "TrainResult",
    "TrainingDiverged",
    "add_set_argument",
    "apply_overrides",
    "build_section",
    "config_from_dict",
    "dump_yaml",
    "evaluate_checkpoint",
    "flatten",
    "format_table",
    "load_config",
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


def __getattr__(name: str) -> Any:
    """Load a torch-side name on first use (PEP 562) and keep it for the next lookups."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def probe_features(data: DataConfig, annotations: SubsetAnnotations) -> None:
    """Check every video's feature files (headers only) the way the datasets read them; DataError otherwise."""
    from localization.data.dataset import InferenceDataset
    from localization.data.features import FeatureReader

    InferenceDataset(data, annotations, FeatureReader(dataclasses.replace(data, cache_features=False)))


def set_torch_threads(num_threads: int) -> None:
    """Use ``num_threads`` CPU threads for torch (as a trial did, so float sums match to the digit)."""
    import torch

    torch.set_num_threads(num_threads)
