"""Temporal action detection metrics: ActivityNet mAP at tIoU thresholds (+ recall), and its CLI.

``python -m localization.metrics GT.json PRED.json [--subset validation] [--json]
[--gt-filter none|actionformer]``
"""

from localization.metrics.detection import (
    DEFAULT_TIOU_THRESHOLDS,
    DEFAULT_TOP_K,
    DetectionMetrics,
    evaluate_detections,
    format_table,
    metric_key,
    metrics_as_floats,
    tiou_key,
)
from localization.metrics.inputs import (
    GT_FILTERS,
    GroundTruth,
    Predictions,
    ground_truth_from_arrays,
    load_ground_truth,
    load_predictions,
    predictions_from_arrays,
    restrict_to_videos,
)

__all__ = [
    "DEFAULT_TIOU_THRESHOLDS",
    "DEFAULT_TOP_K",
    "GT_FILTERS",
    "DetectionMetrics",
    "GroundTruth",
    "Predictions",
    "evaluate_detections",
    "format_table",
    "ground_truth_from_arrays",
    "load_ground_truth",
    "load_predictions",
    "metric_key",
    "metrics_as_floats",
    "predictions_from_arrays",
    "restrict_to_videos",
    "tiou_key",
]
