"""Typed run configuration: defaults live here, a YAML file overrides only what it names.

A run config has four sections: ``data``, ``model``, ``train`` and ``test`` (post-processing).
Every key is a dataclass field with its default and a one-line meaning; names follow the
ActionFormer reference release (``../shared/spec/actionformer.md`` section 2.1) where it has one.

Errors are :class:`ConfigError` with one line naming the file and the dotted key, so a typo in a
search file is caught before any trial starts.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from localization.errors import ConfigError

RUN_SECTIONS = ("data", "model", "train", "test")
FEATURE_FILE_TYPES = (".npy", ".npz", ".pt", ".pth")  # chosen by the file_pattern's extension
__all__ = ["ConfigError", "RunConfig", "config_from_dict", "load_config"]


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


@dataclass
class RunConfig:
    """Everything one training run needs."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: TestConfig = field(default_factory=TestConfig)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> None:
    """Apply ``dotted.key=value`` strings in place; values are parsed as YAML."""
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{source}: expected dotted.key=value, got {item!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"{source}: {key}: value {text!r} is not valid YAML") from None
        set_dotted(raw, key, value, source)


def set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set ``raw[a][b][c] = value`` for key ``a.b.c``, creating mappings on the way."""
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"{source}: {key}: {prefix} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file (if any), then ``--set`` overrides; validated."""
    raw = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    apply_overrides(raw, overrides or [])
    return config_from_dict(raw, source)


def config_from_dict(raw: dict[str, Any], source: str) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a plain mapping (YAML already parsed)."""
    cfg = build_section(RunConfig, raw, "", source, RunConfig())
    validate(cfg, source)
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (YAML/JSON ready) of a config dataclass."""
    return dataclasses.asdict(cfg)


def flatten(cfg: Any) -> dict[str, Any]:
    """``{"data.max_seq_len": 2304, ...}``: every leaf under its dotted key."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            out[prefix] = node

    walk(to_dict(cfg), "")
    return out


def dump_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML, loadable by :func:`load_config`."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None)


# --------------------------------------------------------------------------------------------
# Type coercion: strict, with messages that name the key
# --------------------------------------------------------------------------------------------


def build_section(cls: type, raw: Any, prefix: str, source: str, base: Any | None) -> Any:
    """Overlay mapping ``raw`` on dataclass instance ``base`` key by key (strict types, one-line errors).

    Public so that other config files (the runner's search file) read the same way.

    ``base`` is None for a new entry (for example a new stream): then every field without a
    default must be present in ``raw``.
    """
    where = prefix or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    values = {}
    for key, value in raw.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise ConfigError(f"{source}: {dotted}: unknown key (expected one of {names})")
        values[key] = _coerce(value, hints[key], dotted, source, getattr(base, key) if base is not None else None)
    if base is not None:
        return dataclasses.replace(base, **values)
    missing = [
        f.name
        for f in fields
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{source}: {where}: missing required key(s) {missing}")
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, source: str, current: Any = None) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build_section(hint, value, key, source, current)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, source, current)
            except ConfigError as exc:
                errors.append(exc)
        raise errors[-1]
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {key}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key}: expected a list, got {_kind(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {_kind(value)}")
        merged = dict(current or {})
        for name, item in value.items():
            merged[name] = _coerce(item, args[1], f"{key}.{name}", source, merged.get(name))
        return merged
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        return _to_float(value, key, source)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}: expected a string, got {_kind(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")  # a schema bug, not user input


def _to_float(value: Any, key: str, source: str) -> float:
    """Numbers, and strings such as ``1e-4`` that PyYAML (YAML 1.1) leaves as strings."""
    if isinstance(value, bool):
        raise ConfigError(f"{source}: {key}: expected a number, got {_kind(value)}")
    if isinstance(value, (int, float)):
        result = float(value)
    elif isinstance(value, str):
        try:
            result = float(value)
        except ValueError:
            raise ConfigError(f"{source}: {key}: expected a number, got {value!r}") from None
    else:
        raise ConfigError(f"{source}: {key}: expected a number, got {_kind(value)}")
    if not math.isfinite(result):
        raise ConfigError(f"{source}: {key}: expected a finite number, got {value!r}")
    return result


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return f"{value!r} ({type(value).__name__})"


# --------------------------------------------------------------------------------------------
# Validation: ranges and cross-field rules
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


def validate(cfg: RunConfig, source: str) -> None:
    """Range and consistency checks that the types alone cannot express."""

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {key}: {message}")

    def positive(key: str, value: float) -> None:
        if value <= 0:
            fail(key, f"must be > 0, got {value}")

    def unit(key: str, value: float, low_open: bool = False) -> None:
        if not (0 < value <= 1 if low_open else 0 <= value <= 1):
            fail(key, f"must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value}")

    d, m, t, s = cfg.data, cfg.model, cfg.train, cfg.test
    if not d.features:
        fail("data.features", "must name at least one stream")
    for name in d.features:
        if name not in d.streams:
            fail("data.features", f"unknown stream {name!r} (data.streams has {sorted(d.streams)})")
    if len(set(d.features)) != len(d.features):
        fail("data.features", f"names a stream twice: {d.features}")
    for name, stream in d.streams.items():
        for key in ("dim", "num_frames", "downsample"):
            positive(f"data.streams.{name}.{key}", getattr(stream, key))
        if stream.feat_stride != "auto":
            positive(f"data.streams.{name}.feat_stride", stream.feat_stride)
        if "{video_id}" not in stream.file_pattern:
            fail(f"data.streams.{name}.file_pattern", "must contain {video_id}")
        if Path(stream.file_pattern).suffix not in FEATURE_FILE_TYPES:
            fail(
                f"data.streams.{name}.file_pattern",
                f"must end in one of {list(FEATURE_FILE_TYPES)}, got {stream.file_pattern!r}",
            )
    positive("data.default_fps", d.default_fps)
    if d.resize_length is not None:
        positive("data.resize_length", d.resize_length)
    positive("data.max_seq_len", d.max_seq_len)
    if d.crop_ratio is not None and (len(d.crop_ratio) != 2 or not 0 < d.crop_ratio[0] <= d.crop_ratio[1] <= 1):
        fail("data.crop_ratio", f"must be [low, high] with 0 < low <= high <= 1, got {d.crop_ratio}")
    unit("data.trunc_thresh", d.trunc_thresh)
    if d.boundary_tolerance < 0:
        fail("data.boundary_tolerance", f"must be >= 0, got {d.boundary_tolerance}")
    if d.align_tolerance < 0 or d.num_workers < 0:
        fail("data.align_tolerance" if d.align_tolerance < 0 else "data.num_workers", "must be >= 0")

    if len(m.backbone_arch) != 3 or min(m.backbone_arch) < 0 or m.backbone_arch[0] < 1:
        fail("model.backbone_arch", f"must be [embed >= 1, stem >= 0, branch >= 0], got {m.backbone_arch}")
    levels = num_levels(m)
    if len(m.regression_range) != levels:
        fail("model.regression_range", f"needs {levels} ranges (one per level), got {len(m.regression_range)}")
    for i, rng in enumerate(m.regression_range):
        if len(rng) != 2 or rng[0] < 0 or rng[1] <= rng[0]:
            fail(f"model.regression_range[{i}]", f"must be [low, high] with 0 <= low < high, got {rng}")
    if isinstance(m.n_mha_win_size, list) and len(m.n_mha_win_size) != levels:
        fail("model.n_mha_win_size", f"needs {levels} values (one per level), got {len(m.n_mha_win_size)}")
    for w in window_sizes(m):
        if w > 1 and w % 2 == 0:
            fail("model.n_mha_win_size", f"windows must be odd, got {w}")
    if m.scale_factor < 2 or m.scale_factor % 2:
        fail("model.scale_factor", f"must be an even number >= 2, got {m.scale_factor}")
    if m.fpn_dim != m.embd_dim:
        fail("model.fpn_dim", f"must equal model.embd_dim={m.embd_dim} (identity neck), got {m.fpn_dim}")
    for key in ("embd_dim", "fpn_dim", "head_dim", "n_head", "embd_kernel_size", "head_kernel_size"):
        positive(f"model.{key}", getattr(m, key))
    for key in ("embd_kernel_size", "head_kernel_size"):
        if getattr(m, key) % 2 == 0:
            fail(f"model.{key}", "must be odd")
    for key in ("embd_dim", "fpn_dim"):
        if getattr(m, key) % m.n_head:
            fail(f"model.{key}", f"must be divisible by model.n_head={m.n_head}")
    if m.head_num_layers < 1:
        fail("model.head_num_layers", "must be >= 1")
    if m.fpn_start_level != 0:
        fail("model.fpn_start_level", "only 0 is supported (the reference default)")
    if m.use_rel_pe:
        fail("model.use_rel_pe", "relative position encoding is not implemented (reference default false)")
    for key in ("dropout", "droppath", "label_smoothing"):
        if not 0 <= getattr(m, key) < 1:
            fail(f"model.{key}", f"must be in [0, 1), got {getattr(m, key)}")
    if not 0 < m.cls_prior_prob < 1:
        fail("model.cls_prior_prob", f"must be in (0, 1), got {m.cls_prior_prob}")
    positive("model.init_loss_norm", m.init_loss_norm)
    if m.center_sample_radius <= 0:
        fail("model.center_sample_radius", f"must be > 0, got {m.center_sample_radius}")
    factor = max_div_factor(m)
    if d.max_seq_len % factor:
        fail(
            "data.max_seq_len",
            f"{d.max_seq_len} is not divisible by {factor}, which the model's "
            f"strides and attention windows need (for example {d.max_seq_len // factor * factor or factor})",
        )

    positive("train.lr", t.lr)
    if t.weight_decay < 0:
        fail("train.weight_decay", f"must be >= 0, got {t.weight_decay}")
    positive("train.epochs", t.epochs)
    if not 0 <= t.warmup_epochs < t.epochs:
        fail("train.warmup_epochs", f"must be in [0, train.epochs={t.epochs}), got {t.warmup_epochs}")
    if not 0 <= t.eta_min < t.lr:
        fail("train.eta_min", f"must be in [0, train.lr), got {t.eta_min}")
    positive("train.batch_size", t.batch_size)
    positive("train.eval_every", t.eval_every)
    if not 0 < t.ema_decay < 1:
        fail("train.ema_decay", f"must be in (0, 1), got {t.ema_decay}")
    if t.device not in ("auto", "cpu") and not t.device.startswith("cuda"):
        fail("train.device", f"must be auto, cpu or cuda[:N], got {t.device!r}")
    if t.num_threads < 0:
        fail("train.num_threads", "must be >= 0")

    unit("test.pre_nms_thresh", s.pre_nms_thresh)
    positive("test.pre_nms_topk", s.pre_nms_topk)
    unit("test.iou_threshold", s.iou_threshold)
    unit("test.min_score", s.min_score)
    positive("test.max_seg_num", s.max_seg_num)
    positive("test.nms_sigma", s.nms_sigma)
    if s.duration_thresh < 0:
        fail("test.duration_thresh", "must be >= 0")
    if s.voting_thresh > 1:
        fail("test.voting_thresh", f"must be <= 1, got {s.voting_thresh}")
    positive("test.ext_topk", s.ext_topk)
    if m.class_agnostic and s.ext_score_file is None:
        fail("model.class_agnostic", "needs test.ext_score_file (the classifier that names the segments)")
    if s.ext_score_file is not None and not m.class_agnostic:
        fail("test.ext_score_file", "labels class-agnostic segments: set model.class_agnostic: true")
    if not s.tiou_thresholds:
        fail("test.tiou_thresholds", "must not be empty")
    for i, thr in enumerate(s.tiou_thresholds):
        unit(f"test.tiou_thresholds[{i}]", thr, low_open=True)
