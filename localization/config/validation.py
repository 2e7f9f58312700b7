"""Range and consistency checks of a run config that the types alone cannot express.

:func:`validate` runs one named step per section, then the rules across sections; the first
broken rule raises :class:`ConfigError` naming the file and the dotted key.
"""

from __future__ import annotations

from pathlib import Path

from localization.config.schema import (
    FEATURE_FILE_TYPES,
    DataConfig,
    ModelConfig,
    RunConfig,
    TestConfig,
    TrainConfig,
    max_div_factor,
    num_levels,
    window_sizes,
)
from localization.errors import ConfigError


def validate(cfg: RunConfig, source: str) -> None:
    """Every rule, section by section; raises ConfigError on the first that fails."""
    check = _Checks(source)
    _check_data(cfg.data, check)
    _check_model(cfg.model, check)
    _check_input_length(cfg.data, cfg.model, check)
    _check_train(cfg.train, check)
    _check_test(cfg.test, check)
    _check_class_agnostic(cfg.model, cfg.test, check)


class _Checks:
    """The shared rules, each failing with one line that names the file and the key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> None:
        raise ConfigError(f"{self.source}: {key}: {message}")

    def positive(self, key: str, value: float) -> None:
        if value <= 0:
            self.fail(key, f"must be > 0, got {value}")

    def unit(self, key: str, value: float, low_open: bool = False) -> None:
        if not (0 < value <= 1 if low_open else 0 <= value <= 1):
            self.fail(key, f"must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")


def _check_data(d: DataConfig, check: _Checks) -> None:
    """Streams exist and are well formed; ranges of the data keys."""
    if not d.features:
        check.fail("data.features", "must name at least one stream")
    for name in d.features:
        if name not in d.streams:
            check.fail("data.features", f"unknown stream {name!r} (data.streams has {sorted(d.streams)})")
    if len(set(d.features)) != len(d.features):
        check.fail("data.features", f"names a stream twice: {d.features}")
    for name, stream in d.streams.items():
        for key in ("dim", "num_frames", "downsample"):
            check.positive(f"data.streams.{name}.{key}", getattr(stream, key))
        if stream.feat_stride != "auto":
            check.positive(f"data.streams.{name}.feat_stride", stream.feat_stride)
        if "{video_id}" not in stream.file_pattern:
            check.fail(f"data.streams.{name}.file_pattern", "must contain {video_id}")
        if Path(stream.file_pattern).suffix not in FEATURE_FILE_TYPES:
            check.fail(
                f"data.streams.{name}.file_pattern",
                f"must end in one of {list(FEATURE_FILE_TYPES)}, got {stream.file_pattern!r}",
            )
    check.positive("data.default_fps", d.default_fps)
    if d.resize_length is not None:
        check.positive("data.resize_length", d.resize_length)
    check.positive("data.max_seq_len", d.max_seq_len)
    if d.crop_ratio is not None and (len(d.crop_ratio) != 2 or not 0 < d.crop_ratio[0] <= d.crop_ratio[1] <= 1):
        check.fail("data.crop_ratio", f"must be [low, high] with 0 < low <= high <= 1, got {d.crop_ratio}")
    check.unit("data.trunc_thresh", d.trunc_thresh)
    if d.boundary_tolerance < 0:
        check.fail("data.boundary_tolerance", f"must be >= 0, got {d.boundary_tolerance}")
    if d.align_tolerance < 0 or d.num_workers < 0:
        check.fail("data.align_tolerance" if d.align_tolerance < 0 else "data.num_workers", "must be >= 0")


def _check_model(m: ModelConfig, check: _Checks) -> None:
    """Architecture keys: pyramid, windows, dims, heads, dropout rates, loss settings."""
    if len(m.backbone_arch) != 3 or min(m.backbone_arch) < 0 or m.backbone_arch[0] < 1:
        check.fail("model.backbone_arch", f"must be [embed >= 1, stem >= 0, branch >= 0], got {m.backbone_arch}")
    levels = num_levels(m)
    if len(m.regression_range) != levels:
        check.fail("model.regression_range", f"needs {levels} ranges (one per level), got {len(m.regression_range)}")
    for i, rng in enumerate(m.regression_range):
        if len(rng) != 2 or rng[0] < 0 or rng[1] <= rng[0]:
            check.fail(f"model.regression_range[{i}]", f"must be [low, high] with 0 <= low < high, got {rng}")
    if isinstance(m.n_mha_win_size, list) and len(m.n_mha_win_size) != levels:
        check.fail("model.n_mha_win_size", f"needs {levels} values (one per level), got {len(m.n_mha_win_size)}")
    for w in window_sizes(m):
        if w > 1 and w % 2 == 0:
            check.fail("model.n_mha_win_size", f"windows must be odd, got {w}")
    if m.scale_factor < 2 or m.scale_factor % 2:
        check.fail("model.scale_factor", f"must be an even number >= 2, got {m.scale_factor}")
    if m.fpn_dim != m.embd_dim:
        check.fail("model.fpn_dim", f"must equal model.embd_dim={m.embd_dim} (identity neck), got {m.fpn_dim}")
    for key in ("embd_dim", "fpn_dim", "head_dim", "n_head", "embd_kernel_size", "head_kernel_size"):
        check.positive(f"model.{key}", getattr(m, key))
    for key in ("embd_kernel_size", "head_kernel_size"):
        if getattr(m, key) % 2 == 0:
            check.fail(f"model.{key}", "must be odd")
    for key in ("embd_dim", "fpn_dim"):
        if getattr(m, key) % m.n_head:
            check.fail(f"model.{key}", f"must be divisible by model.n_head={m.n_head}")
    if m.head_num_layers < 1:
        check.fail("model.head_num_layers", "must be >= 1")
    if m.fpn_start_level != 0:
        check.fail("model.fpn_start_level", "only 0 is supported (the reference default)")
    if m.use_rel_pe:
        check.fail("model.use_rel_pe", "relative position encoding is not implemented (reference default false)")
    for key in ("dropout", "droppath", "label_smoothing"):
        if not 0 <= getattr(m, key) < 1:
            check.fail(f"model.{key}", f"must be in [0, 1), got {getattr(m, key)}")
    if not 0 < m.cls_prior_prob < 1:
        check.fail("model.cls_prior_prob", f"must be in (0, 1), got {m.cls_prior_prob}")
    check.positive("model.init_loss_norm", m.init_loss_norm)
    if m.center_sample_radius <= 0:
        check.fail("model.center_sample_radius", f"must be > 0, got {m.center_sample_radius}")


def _check_input_length(d: DataConfig, m: ModelConfig, check: _Checks) -> None:
    """data.max_seq_len must fit the model's strides and attention windows."""
    factor = max_div_factor(m)
    if d.max_seq_len % factor:
        check.fail(
            "data.max_seq_len",
            f"{d.max_seq_len} is not divisible by {factor}, which the model's "
            f"strides and attention windows need (for example {d.max_seq_len // factor * factor or factor})",
        )


def _check_train(t: TrainConfig, check: _Checks) -> None:
    """Optimiser, schedule, EMA and device keys."""
    check.positive("train.lr", t.lr)
    if t.weight_decay < 0:
        check.fail("train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    check.positive("train.epochs", t.epochs)
    if not 0 <= t.warmup_epochs < t.epochs:
        check.fail("train.warmup_epochs", f"must be in [0, train.epochs={t.epochs}), got {t.warmup_epochs}")
    if not 0 <= t.eta_min < t.lr:
        check.fail("train.eta_min", f"must be in [0, train.lr), got {t.eta_min}")
    check.positive("train.batch_size", t.batch_size)
    check.positive("train.eval_every", t.eval_every)
    if not 0 < t.ema_decay < 1:
        check.fail("train.ema_decay", f"must be in (0, 1), got {t.ema_decay}")
    if t.device not in ("auto", "cpu") and not t.device.startswith("cuda"):
        check.fail("train.device", f"must be auto, cpu or cuda[:N], got {t.device!r}")
    if t.num_threads < 0:
        check.fail("train.num_threads", "must be >= 0")


def _check_test(s: TestConfig, check: _Checks) -> None:
    """Post-processing and evaluation keys."""
    check.unit("test.pre_nms_thresh", s.pre_nms_thresh)
    check.positive("test.pre_nms_topk", s.pre_nms_topk)
    check.unit("test.iou_threshold", s.iou_threshold)
    check.unit("test.min_score", s.min_score)
    check.positive("test.max_seg_num", s.max_seg_num)
    check.positive("test.nms_sigma", s.nms_sigma)
    if s.duration_thresh < 0:
        check.fail("test.duration_thresh", "must be >= 0")
    if s.voting_thresh > 1:
        check.fail("test.voting_thresh", f"must be <= 1, got {s.voting_thresh}")
    check.positive("test.ext_topk", s.ext_topk)
    if not s.tiou_thresholds:
        check.fail("test.tiou_thresholds", "must not be empty")
    for i, thr in enumerate(s.tiou_thresholds):
        check.unit(f"test.tiou_thresholds[{i}]", thr, low_open=True)


def _check_class_agnostic(m: ModelConfig, s: TestConfig, check: _Checks) -> None:
    """A class-agnostic model is named by an external classifier, and only such a model is."""
    if m.class_agnostic and s.ext_score_file is None:
        check.fail("model.class_agnostic", "needs test.ext_score_file (the classifier that names the segments)")
    if s.ext_score_file is not None and not m.class_agnostic:
        check.fail("test.ext_score_file", "labels class-agnostic segments: set model.class_agnostic: true")
