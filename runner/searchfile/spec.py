"""The search file: one YAML holding the base run config and how to search around it.

Top-level sections: ``data``, ``model``, ``train``, ``test`` (the run config every trial starts
from, validated by :func:`localization.config.config_from_dict`), plus ``experiment`` (name),
``search``, ``resources``, ``tracking`` and optionally ``synthetic``. ``base: PATH`` (relative to
the search file) names a single-run config under ``configs/`` that the run sections start from:
the search file then holds only what it changes, so the recipe is written once and a search
cannot drift from it (nested mappings merge key by key; a list or a value replaces). Everything is checked here,
before Ray starts or an MLflow run exists, so a typo costs seconds, not a cluster start: errors
are one :class:`ConfigError` line naming the file and the dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from localization.api import (
    RESCORABLE_TEST_KEYS,
    RUN_SECTIONS,
    ConfigError,
    RunConfig,
    apply_overrides,
    build_section,  # the config module's strict typed reader; reused so errors read the same
    config_from_dict,
    flatten,
    metric_key,
    read_yaml,
    set_dotted,
    to_dict,
)
from runner.names import AVERAGE_MAP, LOSS_METRICS
from runner.searchfile.space import SearchSpace, make_sampler, parse_space, sample_configs

SEARCH_SECTIONS = ("experiment", "search", "resources", "tracking", "synthetic")
BASE_KEY = "base"  # a run config file the run sections start from
# Engine metrics a trial reports every epoch, and the ones only evaluated epochs carry.
VALIDATION_SAMPLES = 8  # sampled configs built (type- and range-checked) before the search starts
# Run-config keys a post-processing search may tune: applied to raw candidates, no model run
POSTPROCESS_KEYS = RESCORABLE_TEST_KEYS


@dataclass(frozen=True)
class SchedulerSpec:
    type: Literal["asha", "fifo"] = "asha"
    grace_period: int = 1  # epochs before ASHA may stop a trial (its first rung)
    reduction_factor: int = 2  # keep 1/reduction_factor of the trials at each rung


@dataclass(frozen=True)
class SelectionSpec:
    """Select trials on a held-out slice of the training subset (runner.searchfile.selection), not validation."""

    holdout_fraction: float = 0.1  # share of the training videos held out, in (0, 1)
    seed: int = 0  # the split's seed (a hash of seed and video id, see runner.searchfile.selection)


@dataclass(frozen=True)
class RepeatSpec:
    """Re-train the best `k` configs with `seeds` other ``train.seed`` values after the search."""

    k: int = 3
    seeds: int = 2


@dataclass(frozen=True)
class SearchOptions:
    metric: str = AVERAGE_MAP  # a metric the training loop reports: average_mAP, mAP_0.50, ..., or a loss
    mode: Literal["max", "min"] = "max"
    num_samples: int = 8
    max_concurrent: int | None = None  # null: one trial per GPU, or per 2 CPUs without GPUs
    seed: int = 0
    sampler: Literal["tpe", "random"] = "tpe"
    startup_trials: int | None = None  # random trials before TPE; null: a quarter of num_samples, >= 2
    multivariate: bool = False  # TPE models the keys jointly (interactions such as features x lr), not one by one
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    max_failures: int = 2  # retries of a trial whose worker died, from its last checkpoint
    selection: SelectionSpec | None = None  # null: select on data.val_subset (the recipe)
    repeat_top: RepeatSpec | None = None  # null: no repeats


@dataclass(frozen=True)
class PostprocessSpec:
    """``search.postprocess``: at every evaluation a trial tunes these ``test.*`` keys on the
    raw candidates of its one model run (runner.tune.postprocess_search), ``trials`` settings each."""

    trials: int
    space: SearchSpace
    raw_space: dict[str, Any]  # as written


@dataclass(frozen=True)
class ResourcesSpec:
    gpu: float = 1  # per trial; a fraction (0.5, 0.25) packs trials on one GPU; ignored without GPUs
    cpu: float = 1  # per trial; capped to the cluster's CPUs; sets torch's thread count on CPU


@dataclass(frozen=True)
class TrackingSpec:
    uri: str | None = None  # else MLFLOW_TRACKING_URI, else the embedded sqlite store
    model_name: str = "actionformer"  # registered-model name used by runner.promote


@dataclass(frozen=True)
class SyntheticSpec:
    """Generate the synthetic dataset into data.annotations' folder when that file is missing."""

    seed: int = 0
    videos: int = 160


@dataclass
class SearchFile:
    """A validated search file (with ``--set`` overrides applied)."""

    path: Path
    experiment: str
    search: SearchOptions
    space: SearchSpace
    resources: ResourcesSpec
    tracking: TrackingSpec
    synthetic: SyntheticSpec | None
    run_raw: dict[str, Any]  # the run sections as written (plus overrides): every trial's base
    base: RunConfig
    raw_space: dict[str, Any] = field(default_factory=dict)  # search.space as written
    seed_configs: list[dict[str, Any]] = field(default_factory=list)  # search.seed_configs as written
    postprocess: PostprocessSpec | None = None  # search.postprocess; None: cfg.test as given
    base_path: Path | None = None  # the ``base:`` run config, as resolved; None: none named

    def seed_params(self) -> list[dict[str, Any]]:
        """Optuna parameters of the seed configs, queued before anything is sampled."""
        recipe = flatten(self.base)
        return [
            self.space.fixed_params(given, recipe, f"{self.source}: search.seed_configs[{i}]")
            for i, given in enumerate(self.seed_configs)
        ]

    @property
    def source(self) -> str:
        return str(self.path)

    def trial_config(self, values: dict[str, Any]) -> RunConfig:
        """The run config of one trial: the base with the sampled ``{dotted key: value}`` set."""
        raw = copy.deepcopy(self.run_raw)
        for key, value in values.items():
            set_dotted(raw, key, value, self.source)
        return config_from_dict(raw, self.source)

    def with_overrides(self, overrides: list[str]) -> None:
        """Apply run-config ``dotted.key=value`` overrides to every trial's base (e.g. the selection's)."""
        apply_overrides(self.run_raw, overrides, self.source)
        self.base = config_from_dict(copy.deepcopy(self.run_raw), self.source)

    def max_epochs(self) -> int:
        """The longest trial (ASHA's max_t): train.epochs, or its largest searched value."""
        if "train.epochs" in self.space.keys:
            return max(int(v) for v in self.space["train.epochs"].candidates())
        return self.base.train.epochs

    def resolved(self) -> dict[str, Any]:
        """The whole search file as resolved (defaults filled, overrides applied), YAML-ready."""
        return {
            "experiment": self.experiment,
            **({BASE_KEY: str(self.base_path)} if self.base_path else {}),
            **to_dict(self.base),
            "search": {
                **to_dict(self.search),
                "seed_configs": self.seed_configs,
                "space": self.raw_space,
                **({"postprocess": _postprocess_raw(self.postprocess)} if self.postprocess else {}),
            },
            "resources": to_dict(self.resources),
            "tracking": to_dict(self.tracking),
            "synthetic": to_dict(self.synthetic) if self.synthetic else None,
        }


def load_search_file(
    path: str | Path, overrides: list[str] | None = None, num_samples: int | None = None
) -> SearchFile:
    """Read, override and validate a search file; raises ConfigError naming file and key."""
    path = Path(path)
    source = str(path)
    raw = read_yaml(path)
    base_path = _merge_base(raw, path)
    _apply_overrides(raw, overrides or [])
    unknown = [k for k in raw if k not in RUN_SECTIONS + SEARCH_SECTIONS]
    if unknown:
        expected = [BASE_KEY, *RUN_SECTIONS, *SEARCH_SECTIONS]
        raise ConfigError(f"{source}: {unknown[0]}: unknown section (expected one of {expected})")
    run_raw = {k: raw[k] for k in RUN_SECTIONS if k in raw}
    base = config_from_dict(copy.deepcopy(run_raw), source)

    experiment = raw.get("experiment")
    if not isinstance(experiment, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", experiment):
        raise ConfigError(
            f"{source}: experiment: expected a name of letters, digits, '_', '.', '-', got {experiment!r}"
        )
    search_raw = raw.get("search") or {}
    if not isinstance(search_raw, dict):
        raise ConfigError(f"{source}: search: expected a mapping, got {type(search_raw).__name__}")
    search_raw = dict(search_raw)
    raw_space = search_raw.pop("space", None) or {}
    seed_configs = search_raw.pop("seed_configs", None) or []
    if not isinstance(seed_configs, list) or not all(isinstance(c, dict) for c in seed_configs):
        raise ConfigError(f"{source}: search.seed_configs: expected a list of mappings {{dotted.key: value}}")
    postprocess = _parse_postprocess(search_raw.pop("postprocess", None), source)
    if num_samples is not None:
        search_raw["num_samples"] = num_samples
    search = build_section(SearchOptions, search_raw, "search", source, SearchOptions())
    if search.startup_trials is None:
        search = dataclasses.replace(search, startup_trials=default_startup_trials(search.num_samples))
    resources = build_section(ResourcesSpec, raw.get("resources") or {}, "resources", source, ResourcesSpec())
    tracking = build_section(TrackingSpec, raw.get("tracking") or {}, "tracking", source, TrackingSpec())
    synthetic = (
        build_section(SyntheticSpec, raw["synthetic"] or {}, "synthetic", source, SyntheticSpec())
        if "synthetic" in raw
        else None
    )
    space = parse_space(raw_space, source)
    spec = SearchFile(
        path=path,
        experiment=experiment,
        search=search,
        space=space,
        resources=resources,
        tracking=tracking,
        synthetic=synthetic,
        run_raw=run_raw,
        base=base,
        raw_space=copy.deepcopy(raw_space),
        seed_configs=copy.deepcopy(seed_configs),
        postprocess=postprocess,
        base_path=base_path,
    )
    _validate(spec)
    return spec


def _merge_base(raw: dict[str, Any], path: Path) -> Path | None:
    """Replace ``base: PATH`` by that config's run sections, with the search file's own on top."""
    if BASE_KEY not in raw:
        return None
    name = raw.pop(BASE_KEY)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: {BASE_KEY}: expected the path of a run config, got {name!r}")
    base_path = Path(os.path.normpath(path.parent / name))
    base_raw = read_yaml(base_path)
    extra = [k for k in base_raw if k not in RUN_SECTIONS]
    if extra:
        raise ConfigError(f"{base_path}: {extra[0]}: not a run-config section (a base holds only {list(RUN_SECTIONS)})")
    for section in RUN_SECTIONS:
        if section in base_raw:
            raw[section] = merge_mappings(base_raw[section], raw.get(section) or {})
    return base_path


def merge_mappings(base: Any, over: Any) -> Any:
    """``over`` on top of ``base``: mappings merge key by key, anything else is replaced whole."""
    if not (isinstance(base, dict) and isinstance(over, dict)):
        return copy.deepcopy(over)
    merged = copy.deepcopy(base)
    for key, value in over.items():
        merged[key] = merge_mappings(merged[key], value) if key in merged else copy.deepcopy(value)
    return merged


def default_startup_trials(num_samples: int) -> int:
    """TPE's random start-up when the file sets none: a quarter of the budget, at least 2."""
    return max(2, round(num_samples / 4))


def _parse_postprocess(raw: Any, source: str) -> PostprocessSpec | None:
    """``search.postprocess: {trials: N, space: {test.key: distribution, ...}}`` (checked against
    the run config in :func:`_validate`)."""
    if raw is None:
        return None
    where = f"{source}: search.postprocess"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping {{trials: N, space: {{test.key: ...}}}}, got {raw!r}")
    unknown = sorted(str(k) for k in raw if k not in ("trials", "space"))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (expected trials and space)")
    trials = raw.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{where}.trials: expected an integer >= 1, got {trials!r}")
    raw_space = raw.get("space") or {}
    space = parse_space(raw_space, source, "search.postprocess.space")
    if not space.params:
        raise ConfigError(f"{where}.space: lists no setting to search (e.g. test.nms_sigma: {{uniform: [0.3, 0.95]}})")
    return PostprocessSpec(trials, space, copy.deepcopy(raw_space))


def _postprocess_raw(postprocess: PostprocessSpec) -> dict[str, Any]:
    return {"trials": postprocess.trials, "space": postprocess.raw_space}


def _apply_overrides(raw: dict[str, Any], overrides: list[str]) -> None:
    """``--set`` values; ``search.space.<dotted key>=...`` (and ``search.postprocess.space.<dotted
    key>``) addresses one space entry whole."""
    for item in overrides:
        key = item.partition("=")[0].strip()
        section = next((p for p in (("search", "space"), ("search", "postprocess", "space")) if _under(key, p)), None)
        if section is None:
            apply_overrides(raw, [item])
            continue
        holder: dict[str, Any] = {}
        apply_overrides(holder, [f"value={item.partition('=')[2]}"])
        space = raw
        for name in section:
            space = space.setdefault(name, {}) if isinstance(space, dict) else None
        if not isinstance(space, dict):
            raise ConfigError(f"--set: {key}: {'.'.join(section)} is not a mapping")
        space[key[len(".".join(section)) + 1 :]] = holder["value"]


def _under(key: str, section: tuple[str, ...]) -> bool:
    prefix = ".".join(section) + "."
    return key.startswith(prefix) and len(key) > len(prefix)


def _validate(spec: SearchFile) -> None:
    source, s = spec.source, spec.search

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {key}: {message}")

    if s.num_samples < 1:
        fail("search.num_samples", f"must be >= 1, got {s.num_samples}")
    if s.max_concurrent is not None and s.max_concurrent < 1:
        fail("search.max_concurrent", f"must be >= 1 or null, got {s.max_concurrent}")
    if s.max_failures < 0:
        fail("search.max_failures", f"must be >= 0, got {s.max_failures}")
    if s.startup_trials < 0:
        fail("search.startup_trials", f"must be >= 0 or null, got {s.startup_trials}")
    if s.multivariate and s.sampler != "tpe":
        fail("search.multivariate", f"applies to sampler: tpe, not {s.sampler!r}")
    if s.repeat_top is not None and (s.repeat_top.k < 1 or s.repeat_top.seeds < 1):
        fail("search.repeat_top", f"k and seeds must be >= 1, got {to_dict(s.repeat_top)}")
    if len(spec.seed_configs) > s.num_samples:
        fail("search.seed_configs", f"{len(spec.seed_configs)} seed configs exceed num_samples={s.num_samples}")
    if s.selection is not None and not 0 < s.selection.holdout_fraction < 1:
        fail("search.selection.holdout_fraction", f"must be in (0, 1), got {s.selection.holdout_fraction}")
    known = set(LOSS_METRICS) | set(validation_metrics(spec.base))
    if s.metric not in known:
        fail("search.metric", f"unknown metric {s.metric!r} (expected one of {sorted(known)})")
    if spec.resources.cpu <= 0:
        fail("resources.cpu", f"must be > 0, got {spec.resources.cpu}")
    gpu = spec.resources.gpu
    if gpu < 0 or (gpu > 1 and gpu != int(gpu)):  # Ray's rule: a fraction of one GPU, or whole GPUs
        fail("resources.gpu", f"must be a fraction of one GPU (0.5, 0.25) or a whole number >= 0, got {gpu}")
    check_tracking_uri(spec.tracking.uri, source)
    if spec.synthetic is not None and spec.synthetic.videos < 2:
        fail("synthetic.videos", f"must be >= 2, got {spec.synthetic.videos}")

    if not spec.space.params:
        fail("search.space", "lists no parameter to search (e.g. train.lr: {loguniform: [1.0e-5, 1.0e-3]})")
    leaves = flatten(spec.base)
    for param in spec.space.params:
        if param.key not in leaves:
            fail(f"search.space.{param.key}", _unknown_key_message(param.key, leaves))
        for value in param.candidates():
            _check_value(spec, {param.key: value}, f"search.space.{param.key}")

    if spec.postprocess is not None:
        _validate_postprocess(spec, spec.postprocess)

    sched = s.scheduler
    if sched.type == "asha":
        if not 1 <= sched.grace_period <= spec.max_epochs():
            fail(
                "search.scheduler.grace_period",
                f"must be in [1, train.epochs={spec.max_epochs()}], got {sched.grace_period}",
            )
        if sched.reduction_factor < 2:
            fail("search.scheduler.reduction_factor", f"must be >= 2, got {sched.reduction_factor}")

    # Combinations can break cross-field rules (e.g. eta_min < lr): build a few sampled configs.
    sampler = make_sampler("random", s.seed)
    for values in sample_configs(spec.space, sampler, VALIDATION_SAMPLES):
        _check_value(spec, values, "search.space")
    queued = spec.seed_params()
    for i, values in enumerate(sample_configs(spec.space, sampler, len(queued), queued=queued)):
        _check_value(spec, values, f"search.seed_configs[{i}]")


def _validate_postprocess(spec: SearchFile, post: PostprocessSpec) -> None:
    """Post-processing keys only (``POSTPROCESS_KEYS``), not also in search.space, each value and
    a few sampled combinations valid, and a mAP metric for the inner study to maximise."""
    section = "search.postprocess.space"
    if spec.search.metric not in validation_metrics(spec.base):
        raise ConfigError(
            f"{spec.source}: search.postprocess: needs a mAP search.metric (it picks settings by mAP), "
            f"got {spec.search.metric!r}"
        )
    for param in post.space.params:
        where = f"{spec.source}: {section}.{param.key}"
        if param.key not in POSTPROCESS_KEYS:
            raise ConfigError(
                f"{where}: not a post-processing setting re-applicable to raw candidates "
                f"(allowed: {list(POSTPROCESS_KEYS)})"
            )
        if param.key in spec.space.keys:
            raise ConfigError(f"{where}: also in search.space; search it in one place")
        for value in param.candidates():
            _check_value(spec, {param.key: value}, f"{section}.{param.key}")
    sampler = make_sampler("random", spec.search.seed)
    for values in sample_configs(post.space, sampler, VALIDATION_SAMPLES):
        _check_value(spec, values, section)


def _check_value(spec: SearchFile, values: dict[str, Any], key: str) -> None:
    """Build the trial config for `values`; re-word its error so it names the space entry."""
    try:
        spec.trial_config(values)
    except ConfigError as exc:
        detail = str(exc).removeprefix(f"{spec.source}: ")
        shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
        raise ConfigError(f"{spec.source}: {key}: with {shown}: {detail}") from None


def _unknown_key_message(key: str, leaves: dict[str, Any]) -> str:
    section = key.rpartition(".")[0]
    near = sorted(k for k in leaves if k.rpartition(".")[0] == section) or sorted({k.split(".")[0] for k in leaves})
    return f"not a run-config value (keys here: {near})"


def check_tracking_uri(uri: str | None, source: str) -> None:
    """``tracking.uri`` must look like a URI (None: the default store); ConfigError naming ``source``."""
    if uri is not None and not (
        isinstance(uri, str) and re.fullmatch(r"[a-z][a-z0-9+.-]*://\S*|databricks(://\S*)?", uri)
    ):
        raise ConfigError(
            f"{source}: tracking.uri: expected a URI such as sqlite:////abs/mlflow.db or http://host:5000, got {uri!r}"
        )


def validation_metrics(cfg: RunConfig) -> list[str]:
    """Metrics the training loop reports only on evaluated epochs: average_mAP and mAP at each tIoU."""
    return [AVERAGE_MAP, *(metric_key(t) for t in cfg.test.tiou_thresholds)]


def dump(data: Any) -> str:
    """YAML for the console (dry-run) and for artifacts."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
