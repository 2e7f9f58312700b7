"""Typed run configuration: the schema. Defaults live here, a YAML file overrides only what it names.

A run config has four sections: ``data``, ``model``, ``train`` and ``test`` (post-processing).
Every key is a dataclass field with its default and a one-line meaning; names follow the
ActionFormer reference release where it has one.
Reading and ``--set`` are in :mod:`localization.config.loading`, range checks in
:mod:`localization.config.validation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

RUN_SECTIONS = ("data", "model", "train", "test")
FEATURE_FILE_TYPES = (".npy", ".npz", ".pt", ".pth")  # chosen by the file_pattern's extension


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------


@dataclass
class StreamConfig:
    """One feature stream on disk (for example I3D or SlowFast), one file per video."""

    dir: str  # folder holding the per-video feature files
    dim: int  # channels of this stream; checked against every file read
    # frames between consecutive feature steps (fractional allowed); auto: fixed-length features,
    # stride = clip = the video's frames / its steps
    feat_stride: int | float | Literal["auto"] = 16
    num_frames: int | float = 16  # frames seen by one feature (clip length); ignored with feat_stride auto
    layout: Literal["tc", "ct"] = "tc"  # array layout on disk: [T, C] or [C, T]
    file_pattern: str = "{video_id}.npy"  # file name inside `dir`; its extension picks .npy/.npz/.pt/.pth
    key: str | None = None  # .npz / .pt dict entry holding the array; null: the only one, else "feats"
    downsample: int = 1  # keep every k-th step (stride x k)


def _default_streams() -> dict[str, StreamConfig]:
    return {
        "i3d": StreamConfig(dir="data/fineaction/features/i3d", dim=2048, num_frames=16),
        "slowfast": StreamConfig(dir="data/fineaction/features/slowfast", dim=2304, num_frames=32),
    }


@dataclass
class DataConfig:
    """Where the annotations and features are, and how training samples are cut."""

    annotations: str = "data/fineaction/annotations_gt.json"  # ActivityNet-style "database" JSON
    class_list: str | None = None  # optional text file, one class name per line (line = label id)
    train_subset: str = "training"
    val_subset: str = "validation"
    # Optional files of video ids (one per line) restricting the training / validation subset,
    # e.g. a held-out slice of training to select on (runner: search.selection).
    train_videos: str | None = None
    val_videos: str | None = None
    default_fps: float = 30.0  # used when a video entry has no "fps" (always, with force_default_fps)
    force_default_fps: bool = False  # true: default_fps wins over a per-video "fps" (the public pipelines)
    resize_length: int | None = None  # resample every video to N steps (OpenTAD's resize recipe, e.g. 192)
    streams: dict[str, StreamConfig] = field(default_factory=_default_streams)
    features: list[str] = field(default_factory=lambda: ["i3d", "slowfast"])  # concat order
    max_seq_len: int = 2304  # training length in feature steps (crop / truncation)
    crop_ratio: list[float] | None = field(default_factory=lambda: [0.9, 1.0])
    trunc_thresh: float = 0.5  # keep a cropped ground truth if this fraction of it remains
    boundary_tolerance: float = 0.0  # seconds a segment may overshoot [0, duration] and be kept
    align_tolerance: int = 2  # streams whose lengths differ by at most this are trimmed
    on_missing: Literal["error", "skip"] = "error"  # a video without features: fail, or skip
    cache_features: bool = True  # keep loaded features in memory (per process; off when `store` is on)
    store: bool = False  # read features from the node's packed, memory-mapped store (one copy per node)
    store_dir: str | None = None  # where stores are built; default: a "store" folder beside the first stream's
    store_dtype: Literal["float16", "float32"] = "float16"  # precision of the packed features
    num_workers: int = 0  # DataLoader worker processes for training


@dataclass
class ModelConfig:
    """ActionFormer architecture and loss settings (reference defaults, section 2.1)."""

    backbone_arch: list[int] = field(default_factory=lambda: [2, 2, 5])  # embed, stem, branch
    scale_factor: int = 2  # downsampling between pyramid levels
    regression_range: list[list[float]] = field(
        default_factory=lambda: [[0, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 10000]]
    )
    n_head: int = 4
    n_mha_win_size: int | list[int] = 19  # local attention window; <= 1 means global attention
    embd_kernel_size: int = 3
    embd_dim: int = 512
    embd_with_ln: bool = True
    fpn_dim: int = 512
    fpn_with_ln: bool = True
    fpn_start_level: int = 0
    head_dim: int = 512
    head_kernel_size: int = 3
    head_num_layers: int = 3  # including the final predictor
    head_with_ln: bool = True
    use_abs_pe: bool = False
    use_rel_pe: bool = False
    dropout: float = 0.0  # attention / MLP projection dropout
    droppath: float = 0.1  # stochastic depth; > 0 also enables LayerScale (as the reference)
    center_sample: Literal["radius", "none"] = "radius"
    center_sample_radius: float = 1.5
    loss_weight: float = 1.0  # weight of the regression loss; <= 0 balances automatically
    cls_prior_prob: float = 0.01
    init_loss_norm: float = 100.0  # initial EMA of the positive count (THUMOS-style recipe)
    label_smoothing: float = 0.0
    class_agnostic: bool = False  # one foreground class; labels from test.ext_score_file


@dataclass
class TrainConfig:
    """Optimisation. `epochs` counts every epoch, warm-up included (the reference adds
    warm-up epochs on top of its `epochs`)."""

    lr: float = 1.0e-4
    weight_decay: float = 0.05
    epochs: int = 20
    warmup_epochs: int = 5
    eta_min: float = 1.0e-8  # final learning rate of the cosine decay
    batch_size: int = 4
    clip_grad_l2norm: float = 1.0  # <= 0 disables clipping
    ema_decay: float = 0.999
    seed: int = 1234567891
    eval_every: int = 1  # evaluate (EMA weights) every N epochs; the last epoch always
    device: str = "auto"  # auto: cuda when present, else cpu
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the model on CUDA
    num_threads: int = 0  # CPU threads for torch; 0 keeps torch's default


@dataclass
class TestConfig:
    """Inference and post-processing (reference names, section 2.1 and 7)."""

    pre_nms_thresh: float = 0.001
    pre_nms_topk: int = 5000  # per pyramid level
    iou_threshold: float = 0.1  # hard NMS only
    min_score: float = 0.001
    max_seg_num: int = 100  # segments kept per video (recipe: top 100)
    nms_method: Literal["soft", "hard", "none"] = "soft"
    nms_sigma: float = 0.5  # Gaussian Soft-NMS: score * exp(-IoU^2 / sigma)
    duration_thresh: float = 0.05  # drop predictions shorter than this (feature steps)
    multiclass_nms: bool = True
    voting_thresh: float = 0.75  # score voting IoU (class-agnostic NMS only); <= 0 disables
    # The official ActivityNet values, np.linspace(0.5, 0.95, 10) (0.9 is 0.8999999999999999).
    tiou_thresholds: list[float] = field(default_factory=lambda: np.linspace(0.5, 0.95, 10).tolist())
    gt_filter: Literal["none", "actionformer"] = "none"  # evaluation ground-truth filter
    ext_score_file: str | None = None  # video-level classifier JSON labelling class-agnostic segments
    ext_topk: int = 2  # classes of ext_score_file each segment becomes (fused score sqrt(p_seg * p_cls))


# The post-processing settings that can change without running the model again: applied to
# saved raw candidates (localization.inference.subset_postprocess); the other test keys shape the
# candidates (pre_nms_*, duration_thresh) or the scoring (tiou_thresholds, gt_filter).
RESCORABLE_TEST_KEYS = tuple(
    f"test.{key}"
    for key in (
        "nms_method",
        "nms_sigma",
        "iou_threshold",
        "min_score",
        "max_seg_num",
        "multiclass_nms",
        "voting_thresh",
    )
)


@dataclass
class RunConfig:
    """Everything one training run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


# --------------------------------------------------------------------------------------------
# Derived values: pyramid levels, attention windows, divisibility
# --------------------------------------------------------------------------------------------


def num_levels(model: ModelConfig) -> int:
    """Pyramid levels: the stem output plus one per branch block."""
    return model.backbone_arch[2] + 1


def output_classes(model: ModelConfig, num_classes: int) -> int:
    """Classes the model predicts: one foreground class when class-agnostic, else every class."""
    return 1 if model.class_agnostic else num_classes


def window_sizes(model: ModelConfig) -> list[int]:
    """Per-level attention window (an int in the config applies to every level)."""
    if isinstance(model.n_mha_win_size, int):
        return [model.n_mha_win_size] * num_levels(model)
    return list(model.n_mha_win_size)


def max_div_factor(model: ModelConfig) -> int:
    """The length every training input must be divisible by (the reference's rule).

    Level l has stride scale_factor**l and, with local attention, needs its length to be a
    multiple of the window overlap; the reference asserts max_seq_len is divisible by every
    ``stride * (w // 2) * 2``. Our attention works on any length, so inference only pads to the
    stride of the coarsest level (see :func:`inference_div_factor`).
    """
    factor = 1
    for level, window in enumerate(window_sizes(model)):
        stride = model.scale_factor**level
        factor = max(factor, stride * (window // 2) * 2 if window > 1 else stride)
    return factor


def inference_div_factor(model: ModelConfig) -> int:
    """Whole-video inference pads only to the coarsest level's stride."""
    return model.scale_factor ** (num_levels(model) - 1)
