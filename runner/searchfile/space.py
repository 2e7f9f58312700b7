"""Search-space distributions from YAML, sampled by Optuna define-by-run.

One entry of ``search.space`` maps a dotted run-config key to exactly one distribution:

====================================  ============================================================
``{uniform: [low, high]}``            float in [low, high]; optional ``step: q``
``{loguniform: [low, high]}``         float, log scale; 0 < low < high
``{int: [low, high]}``                integer in [low, high]; optional ``step: n`` (default 1),
                                      ``log: true`` (log scale, step must be 1)
``{choice: [a, b, ...]}``             one of the listed values (numbers, strings, lists, ...)
``{value: x}``                        a fixed value (shown as searched, never sampled)
====================================  ============================================================

Any entry may add ``when: {other.key: allowed}``: the parameter is sampled only when the
earlier parameter ``other.key`` took one of the allowed values; otherwise the base config's
value stays. ``allowed`` is a list of values, or a single value that is not a list; to
condition on a list-valued choice such as ``data.features: [i3d]`` write a list of lists
(``when: {data.features: [[i3d]]}``). Several keys in ``when`` must all hold. The referenced
key must be a ``choice``, ``int`` or ``value`` parameter listed earlier in the file.

Numbers written like ``1e-4`` (which PyYAML reads as strings) are accepted as numbers.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from localization.api import ConfigError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "value")
_OPTIONS = {"uniform": {"step"}, "loguniform": set(), "int": {"step", "log"}, "choice": set(), "value": set()}
# Optuna stores categorical choices only as these scalar types; other values get a JSON label.
_SCALARS = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Param:
    """One searched key with its distribution and optional activation condition."""

    key: str
    kind: str  # one of DISTRIBUTIONS
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()  # choice values; for `value`, the one fixed value
    when: tuple[tuple[str, tuple[Any, ...]], ...] = ()  # (earlier key, allowed values), all must hold

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether every `when` condition holds for the values sampled so far."""
        return all(key in values and values[key] in allowed for key, allowed in self.when)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Ask Optuna for this parameter's value (decoded to the config value)."""
        if self.kind in ("uniform", "loguniform"):
            return trial.suggest_float(self.key, self.low, self.high, step=self.step, log=self.kind == "loguniform")
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        if self.kind == "choice":
            labels = [_label(c) for c in self.choices]
            picked = trial.suggest_categorical(self.key, labels)
            return self.choices[labels.index(picked)]
        return self.choices[0]

    def candidates(self) -> list[Any]:
        """Values worth type-checking against the run config: bounds, choices, the fixed value."""
        if self.kind == "choice" or self.kind == "value":
            return list(self.choices)
        return [self.low, self.high]

    def allows(self, value: Any) -> bool:
        """Whether this parameter can take `value` (`when` conditions, seed configs)."""
        if self.kind in ("choice", "value"):
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int":
            return (
                isinstance(value, int) and self.low <= value <= self.high and (value - self.low) % (self.step or 1) == 0
            )
        if not self.low <= value <= self.high:
            return False
        return self.step is None or math.isclose(round((value - self.low) / self.step) * self.step, value - self.low)

    def encode(self, value: Any) -> Any:
        """The Optuna parameter value of config value `value` (the inverse of `suggest`)."""
        if self.kind == "choice":
            return _label(value)
        return int(value) if self.kind == "int" else float(value)

    def describe(self) -> str:
        """Compact one-line spelling, e.g. ``loguniform[3e-05, 0.0003]`` (for logs and tables)."""
        if self.kind == "choice":
            text = f"choice{list(self.choices)}"
        elif self.kind == "value":
            text = f"value {self.choices[0]!r}"
        else:
            text = f"{self.kind}[{self.low}, {self.high}]"
            text += f" step {self.step}" if self.step else ""
            text += " log" if self.log else ""
        if self.when:
            text += " when " + ", ".join(f"{k} in {list(v)}" for k, v in self.when)
        return text


class SearchSpace:
    """The define-by-run space handed to Ray's ``OptunaSearch``.

    A module-level class (not a closure) because ``OptunaSearch.save`` pickles it into the
    experiment checkpoint. Calling it samples every active parameter in file
    order and returns ``{dotted key: config value}``, which Ray merges into the trial config, so
    trials receive decoded values (lists stay lists) under flat dotted keys.
    """

    def __init__(self, params: list[Param]) -> None:
        self.params = tuple(params)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for param in self.params:
            if param.active(values):
                values[param.key] = param.suggest(trial)
        return values

    def __getitem__(self, key: str) -> Param:
        return next(p for p in self.params if p.key == key)

    def fixed_params(self, given: Mapping[str, Any], recipe: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Optuna parameters that make the space return `given` (a seed config) for a queued trial.

        Active keys that `given` leaves out take the recipe's (base config's) value, so ``{}`` is
        the recipe itself. Raises ConfigError naming `where` and the key when a value is outside
        its distribution or a given key is not searched or not active.
        """
        unknown = [key for key in given if key not in self.keys]
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]}: not a searched key (searched: {self.keys})")
        values: dict[str, Any] = {}
        params: dict[str, Any] = {}
        for param in self.params:
            if not param.active(values):
                if param.key in given:
                    raise ConfigError(f"{where}.{param.key}: not active with these values ({param.describe()})")
                continue
            value = given[param.key] if param.key in given else recipe[param.key]
            if param.kind in ("uniform", "loguniform") and isinstance(value, str):
                value = _number(value, f"{where}.{param.key}")
            if not param.allows(value):
                whose = "" if param.key in given else "the recipe's value "
                raise ConfigError(f"{where}.{param.key}: {whose}{value!r} is not in {param.describe()}")
            values[param.key] = value
            if param.kind != "value":
                params[param.key] = param.encode(value)
        return params


def make_sampler(
    name: str, seed: int, startup_trials: int = 10, multivariate: bool = False
) -> optuna.samplers.BaseSampler:
    """A seeded Optuna sampler (Ray's OptunaSearch ignores its own `seed`.

    TPE samples at random until `startup_trials` trials ended (COMPLETE or PRUNED; seed configs
    count), and with ``constant_liar`` treats running trials as bad, so concurrent trials spread out.
    ``multivariate`` fits one density over all keys instead of one per key, so a good region that is
    an interaction (both feature streams only at a high learning rate) can be found.
    """
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # multivariate is marked experimental by Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup_trials, constant_liar=True, multivariate=multivariate
        )


def sample_configs(
    space: SearchSpace,
    sampler: optuna.samplers.BaseSampler,
    count: int,
    direction: str = "maximize",
    queued: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The first `count` trial values a fresh study with `sampler` proposes, after the `queued`
    Optuna parameters (seed configs, see :meth:`SearchSpace.fixed_params`).

    The trials are asked and never told, as Ray's OptunaSearch does while the first trials
    run, so with the search's seeded sampler these are the configs the search starts with.
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=sampler, direction=direction)
    for params in queued or []:
        study.enqueue_trial(params)
    return [space(study.ask()) for _ in range(count)]


def parse_space(raw: Any, source: str, section: str = "search.space") -> SearchSpace:
    """Parse ``search.space`` (or another ``section`` of the same syntax, a mapping of dotted key
    -> distribution) into a SearchSpace.

    Errors are one line: ``<file>: <section>.<key>: <what is wrong>``.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {section}: expected a mapping of dotted keys, got {type(raw).__name__}")
    params: list[Param] = []
    for key, spec in raw.items():
        where = f"{source}: {section}.{key}"
        param = _parse_param(str(key), spec, where)
        _check_when(param, params, where)
        params.append(param)
    return SearchSpace(params)


def _parse_param(key: str, spec: Any, where: str) -> Param:
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: expected a distribution such as {{uniform: [a, b]}}, "
            f"{{choice: [...]}} or {{value: x}}, got {spec!r}"
        )
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: needs exactly one of {list(DISTRIBUTIONS)}, got {sorted(map(str, spec))}")
    kind = kinds[0]
    allowed = _OPTIONS[kind] | {kind, "when"}
    unknown = [str(k) for k in spec if k not in allowed]
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} for {kind} (allowed: {sorted(allowed)})")
    when = _parse_when(spec.get("when"), where)
    body = spec[kind]
    if kind == "value":
        return Param(key, kind, choices=(body,), when=when)
    if kind == "choice":
        if not isinstance(body, list) or not body:
            raise ConfigError(f"{where}: choice needs a non-empty list, got {body!r}")
        labels = [_label(c) for c in body]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"{where}: choice lists a value twice: {body}")
        return Param(key, kind, choices=tuple(body), when=when)
    if not isinstance(body, list) or len(body) != 2:
        raise ConfigError(f"{where}: {kind} needs [low, high], got {body!r}")
    if kind == "int":
        low, high = (_integer(v, f"{where}: int bound") for v in body)
        step = _integer(spec.get("step", 1), f"{where}: step")
        log = spec.get("log", False)
        if not isinstance(log, bool):
            raise ConfigError(f"{where}: log must be true or false, got {log!r}")
        if step < 1:
            raise ConfigError(f"{where}: step must be >= 1, got {step}")
        if log and step != 1:
            raise ConfigError(f"{where}: log: true needs step 1, got step {step}")
    else:
        low, high = (_number(v, f"{where}: {kind} bound") for v in body)
        step = _number(spec["step"], f"{where}: step") if "step" in spec else None
        log = kind == "loguniform"
        if step is not None and step <= 0:
            raise ConfigError(f"{where}: step must be > 0, got {step}")
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs low < high, got [{low}, {high}]")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log-scale distribution needs low > 0, got [{low}, {high}]")
    return Param(
        key,
        kind,
        low=low,
        high=high,
        step=step if kind != "int" or step != 1 else None,
        log=log and kind == "int",
        when=when,
    )


def _parse_when(raw: Any, where: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: when: expected a mapping {{other.key: value or [values]}}, got {raw!r}")
    return tuple((str(k), tuple(v) if isinstance(v, list) else (v,)) for k, v in raw.items())


def _check_when(param: Param, earlier: list[Param], where: str) -> None:
    """Conditions reference an earlier choice/int/value parameter and values it can take."""
    by_key = {p.key: p for p in earlier}
    for key, allowed in param.when:
        other = by_key.get(key)
        if other is None:
            raise ConfigError(f"{where}: when: {key} is not a parameter listed before this one")
        if other.kind not in ("choice", "int", "value"):
            raise ConfigError(f"{where}: when: {key} is {other.kind}; conditions need a choice, int or value")
        for value in allowed:
            if not other.allows(value):
                raise ConfigError(
                    f"{where}: when: {key} can never be {value!r} ({other.describe()}); "
                    "a list means allowed values, so wrap a list value in a list"
                )


def _number(value: Any, what: str) -> float:
    """A finite number; also accepts strings like ``1e-4`` that PyYAML leaves unparsed."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ConfigError(f"{what}: expected a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{what}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{what}: expected a finite number, got {value!r}")
    return number


def _integer(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what}: expected an integer, got {value!r}")
    return value


def _label(value: Any) -> Any:
    """Optuna's categorical value for a choice: scalars as they are, others as compact JSON."""
    return value if isinstance(value, _SCALARS) else json.dumps(value, separators=(",", ":"))
