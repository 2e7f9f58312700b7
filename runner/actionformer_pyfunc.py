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

import dataclasses
import json
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel, PythonModelContext
from pydantic import BaseModel

from localization.checkpoint import load_checkpoint, model_from_checkpoint
from localization.config import apply_overrides, config_from_dict, read_yaml
from localization.data.annotations import load_subset
from localization.data.dataset import InferenceDataset
from localization.data.features import FeatureReader
from localization.engine import resolve_device
from localization.errors import DataError
from localization.inference import detect, predict
from runner.registry import CLASS_NAMES, CONFIG, WEIGHTS


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
        ckpt = load_checkpoint(Path(context.artifacts[WEIGHTS]))  # weights_only=True
        self.model, self.cfg, self.class_names = model_from_checkpoint(ckpt, use_ema=True, cfg=cfg)
        stored = json.loads(Path(context.artifacts[CLASS_NAMES]).read_text())
        if stored != self.class_names:
            raise DataError(f"{context.artifacts[CLASS_NAMES]}: class names differ from the weights' own")
        self.subset = settings.get("subset") or self.cfg.data.val_subset
        self.device = resolve_device(self.cfg.train.device)
        self.model.to(self.device)

    def predict(self, context: PythonModelContext, model_input: list[str]) -> list[Detection]:
        video_ids = list(model_input)
        subset = self.subset
        annotations = load_subset(self.cfg.data, subset)
        by_id = {video.video_id: video for video in annotations.videos}
        unknown = [vid for vid in video_ids if vid not in by_id]
        if unknown:
            raise DataError(f"{self.cfg.data.annotations}: subset {subset!r} has no video {unknown[0]!r}")
        chosen = dataclasses.replace(annotations, videos=[by_id[vid] for vid in video_ids])
        dataset = InferenceDataset(self.cfg.data, chosen, FeatureReader(self.cfg.data))
        raw = predict(self.model, dataset, self.cfg, self.device)
        return [
            Detection(
                video_id=vid, t_start=float(s), t_end=float(e), label=self.class_names[int(label)], score=float(score)
            )
            for vid, det in detect(raw, dataset, self.cfg, self.class_names).items()
            for (s, e), score, label in zip(det.segments, det.scores, det.labels, strict=True)
        ]


mlflow.models.set_model(ActionFormerModel())
