"""The MLflow pyfunc wrapper of a promoted ActionFormer, logged as "model from code".

MLflow copies this file into the model and runs it on load, instead of unpickling a Python
object (cloudpickle would execute whatever the pickle holds). The weights are a plain tensor dict
read with ``torch.load(weights_only=True)``; the config and class names are YAML and JSON.

Use::

    model = mlflow.pyfunc.load_model(
        "models:/actionformer-fineaction@champion",
        model_config={"subset": "validation", "set": ["data.annotations=/data/gt.json"]})
    detections = model.predict(["v_00000001", "v_00000002"])  # list[Detection]

``predict`` takes a list of video ids (the type hint lets MLflow check it) of the subset
``model_config["subset"]`` (default: the stored ``data.val_subset``), reads their features
through the stored data config (``model_config["set"]`` overrides any key, for example the data
paths on another machine) and returns one :class:`Detection` per detected segment. Settings go
in ``model_config`` rather than ``predict(params=...)``: MLflow drops params that the model
signature does not declare, and the type hints below are the signature.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel, PythonModelContext
from pydantic import BaseModel

from localization import api
from localization.api import DataError, apply_overrides, config_from_dict, read_yaml
from runner.names import CLASS_NAMES, CONFIG, WEIGHTS


class Detection(BaseModel):
    """One detected action segment (MLflow derives the output schema from this type)."""

    video_id: str
    t_start: float  # seconds
    t_end: float  # seconds
    label: str
    score: float


class ActionFormerModel(PythonModel):
    """Whole-video temporal action detection with the promoted weights (EMA, as evaluated)."""

    def load_context(self, context: PythonModelContext) -> None:
        settings = context.model_config or {}
        raw = read_yaml(context.artifacts[CONFIG])
        apply_overrides(raw, list(settings.get("set", [])), "model_config.set")
        cfg = config_from_dict(raw, context.artifacts[CONFIG])
        self.detector = api.Detector(Path(context.artifacts[WEIGHTS]), cfg)  # weights_only=True
        stored = json.loads(Path(context.artifacts[CLASS_NAMES]).read_text())
        if stored != self.detector.class_names:
            raise DataError(f"{context.artifacts[CLASS_NAMES]}: class names differ from the weights' own")
        self.subset = settings.get("subset") or cfg.data.val_subset

    def predict(self, context: PythonModelContext, model_input: list[str]) -> list[Detection]:
        return [Detection(**segment._asdict()) for segment in self.detector.detect(list(model_input), self.subset)]


mlflow.models.set_model(ActionFormerModel())
