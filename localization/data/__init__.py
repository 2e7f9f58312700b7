"""Data for ActionFormer on FineAction: annotations, feature streams, datasets and batching."""

from localization.data.annotations import (
    DIRTY_REASONS,
    SubsetAnnotations,
    VideoAnnotation,
    load_class_names,
    load_subset,
)
from localization.data.dataset import (
    InferenceDataset,
    TrainingDataset,
    build_loader,
    collate,
    random_crop,
)
from localization.data.features import FeatureReader
from localization.data.timegrid import feat_offset, grid_to_seconds, seconds_to_grid

__all__ = [
    "DIRTY_REASONS",
    "FeatureReader",
    "InferenceDataset",
    "SubsetAnnotations",
    "TrainingDataset",
    "VideoAnnotation",
    "build_loader",
    "collate",
    "feat_offset",
    "grid_to_seconds",
    "load_class_names",
    "load_subset",
    "random_crop",
    "seconds_to_grid",
]
