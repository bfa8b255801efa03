"""The offline agent: Optuna TPE over the hyperparameters listed in `experiments/space.toml`.

Why TPE: a night is 50-100 noisy, expensive evaluations of a mixed space (log-scaled floats, integers,
categories). TPE handles all three, needs no network and no GPU, and is plain random search until it has
seen enough runs to model. The agent keeps no state of its own: every `propose` rebuilds the study from the
night's ledger (the params it chose live in each record's `agent_meta`) and seeds its sampler from (space
seed, run index), so a resumed night, a restarted process and a test all see the same study and get the same
proposal from the same history.

A proposal rewrites the experiment TOML changing only the `key = value` lines of the keys that moved, so the
diff a researcher reads in the morning is exactly the hyperparameters that changed, comments intact.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, ValidationError

from harness.agents.base import Agent, AgentContext, AgentError, AgentExhausted, FileEdit, Proposal
from harness.agents.toml_edit import format_toml_value, set_toml_values
from harness.ledger import RunRecord, RunStatus
from models.config import DiTConfig, ExperimentConfig, GPTConfig, TrainConfig
from models.errors import describe_validation_error
from models.files import read_toml, read_toml_text
from models.task import TASK_SECTIONS

SPACE_FILE = "experiments/space.toml"
"""Where the search space lives, relative to the workspace (the worktree at the best commit)."""

MODEL_CLASSES: dict[str, type[BaseModel]] = {"dit": DiTConfig, "gpt": GPTConfig}
NEAR = 0.1
"""A value within this fraction of its param's range (log-scaled for log ranges) is "near the best"."""

Scalar = StrictBool | StrictInt | StrictFloat | str


# ------------------------------------------------------------------------------------------ the space


class AgentSettings(BaseModel):
    """The `[agent]` table of the space file: how the search runs."""

    model_config = ConfigDict(extra="forbid")

    seed: int = Field(0, ge=0, description="Mixed with the run index to seed each proposal's sampler.")
    n_startup_trials: int = Field(8, ge=0, description="Finished runs before TPE replaces random sampling.")
    max_resamples: int = Field(50, ge=1, description="Samples to try before giving up on a valid config.")
    max_changes: int = Field(
        0,
        ge=0,
        description="Keys a proposal may change from the best config (0: all). Few changes per run follow "
        "LOOP.md's one idea per run: fifteen changes at once teach nothing when the run loses.",
    )


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid")

    low: StrictInt | StrictFloat
    high: StrictInt | StrictFloat
    log: bool = False
    step: StrictInt | StrictFloat | None = None


class _Choices(BaseModel):
    model_config = ConfigDict(extra="forbid")

    choices: list[Scalar] = Field(min_length=1)


_ENTRY_KEYS = {"low", "high", "log", "step", "choices"}


@dataclass(frozen=True)
class Param:
    """One searched config value: a dotted key of the experiment TOML and the values it may take."""

    key: str  # e.g. "train.lr"
    distribution: BaseDistribution


@dataclass(frozen=True)
class SearchSpace:
    """A parsed and checked `space.toml`: settings plus, per model kind, the params to search."""

    path: Path
    settings: AgentSettings
    kinds: dict[str, tuple[Param, ...]]

    def params(self, kind: str) -> tuple[Param, ...]:
        if kind not in self.kinds:
            raise AgentError(f"{self.path}: no [{kind}] table, but this night trains a {kind}")
        return self.kinds[kind]


def load_space(path: Path) -> SearchSpace:
    """Read a space file; any problem is an AgentError naming the file and the entry."""
    path = Path(path)
    raw = read_toml(path, AgentError)
    unknown = sorted(set(raw) - {"agent", *MODEL_CLASSES})
    if unknown:
        raise AgentError(f"{path}: unknown table [{unknown[0]}]; expected [agent], [dit] and/or [gpt]")
    try:
        settings = AgentSettings.model_validate(raw.get("agent", {}))
    except ValidationError as err:
        raise AgentError(f"{path}: [agent]: {describe_validation_error(err, 'settings')}") from None
    kinds: dict[str, tuple[Param, ...]] = {}
    for kind in MODEL_CLASSES:
        if kind not in raw:
            continue
        if not isinstance(raw[kind], dict):
            raise AgentError(f"{path}: {kind} must be a table of params")
        params = []
        for key, entry in _entries(raw[kind]):
            try:
                params.append(Param(key, _distribution(kind, key, entry)))
            except (ValueError, ValidationError) as err:
                why = describe_validation_error(err, "entry") if isinstance(err, ValidationError) else err
                raise AgentError(f'{path}: [{kind}] "{key}": {why}') from None
        if not params:
            raise AgentError(f"{path}: [{kind}] lists no params to search")
        kinds[kind] = tuple(params)
    return SearchSpace(path, settings, kinds)


def _entries(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, entry) pairs; an unquoted dotted key (`train.lr = {...}`) arrives nested: flatten it."""
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value and not (value.keys() & _ENTRY_KEYS):
            yield from _entries(value, key + ".")
        else:
            yield key, value


def _distribution(kind: str, key: str, entry: Any) -> BaseDistribution:
    annotation = _field_annotation(kind, key)
    if not isinstance(entry, dict):
        raise ValueError(
            "an entry is { low = ..., high = ...[, log = true][, step = ...] } or { choices = [...] }"
        )
    if "choices" in entry:
        choices = _Choices.model_validate(entry).choices
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError("choices repeat a value")
        return CategoricalDistribution(choices)
    spec = _Range.model_validate(entry)
    if not spec.low < spec.high:
        raise ValueError(f"low ({spec.low}) must be below high ({spec.high})")
    if spec.log and spec.low <= 0:
        raise ValueError("a log range needs low > 0")
    if spec.log and spec.step is not None:
        raise ValueError("a range is either log or stepped, not both")
    if annotation is int:
        if not all(isinstance(v, int) for v in (spec.low, spec.high, spec.step or 1)):
            raise ValueError(f"{key} is an integer: low, high and step must be integers")
        return IntDistribution(int(spec.low), int(spec.high), log=spec.log, step=int(spec.step or 1))
    if annotation is float:
        step = None if spec.step is None else float(spec.step)
        return FloatDistribution(float(spec.low), float(spec.high), log=spec.log, step=step)
    raise ValueError(f"{key} is not a number: search it with choices = [...]")


def _field_annotation(kind: str, key: str) -> Any:
    """The type of config field `key` for a `kind` model; ValueError when it is not a searchable field."""
    section, _, rest = key.partition(".")
    if section in TASK_SECTIONS:
        raise ValueError(f"{section}.* defines the task and is fixed: keep it out of the space")
    roots: dict[str, type[BaseModel]] = {"model": MODEL_CLASSES[kind], "train": TrainConfig}
    if section not in roots or not rest:
        raise ValueError("not a config key: expected model.<field> or train.<field>")
    if key == "model.kind":
        raise ValueError("the model kind is chosen by the table ([dit] or [gpt]), not searched inside one")
    cls = roots[section]
    parts = rest.split(".")
    for depth, part in enumerate(parts):
        field = cls.model_fields.get(part)
        if field is None:
            raise ValueError(f"the {kind} config has no field {'.'.join([section, *parts[: depth + 1]])}")
        annotation = field.annotation
        if depth == len(parts) - 1:
            return annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            raise ValueError(f"{section}.{'.'.join(parts[: depth + 1])} has no sub-fields")
        cls = annotation
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------------------- config checks


def get_value(config: ExperimentConfig, key: str) -> Any:
    """The value of a dotted key in a config (`model.width` -> config.model.width)."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


@dataclass
class _Experiment:
    """One kind's experiment file as it is at the best commit: what proposals change."""

    path: str  # relative to the workspace
    text: str
    raw: dict[str, Any]
    config: ExperimentConfig

    @property
    def kind(self) -> str:
        return self.config.model.kind

    @classmethod
    def read(cls, workspace: Path, path: str) -> _Experiment:
        file = workspace / path
        text, raw = read_toml_text(file, AgentError)
        try:
            config = ExperimentConfig.model_validate(raw)
        except ValidationError as err:
            raise AgentError(f"{file}: {describe_validation_error(err)}") from None
        return cls(path, text, raw, config)

    def values(self, params: tuple[Param, ...]) -> dict[str, Any]:
        return {p.key: get_value(self.config, p.key) for p in params}

    def with_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The file's parsed TOML with each dotted key of `values` set."""
        raw = copy.deepcopy(self.raw)
        for key, value in values.items():
            *sections, name = key.split(".")
            table = raw
            for section in sections:
                table = table.setdefault(section, {})
            table[name] = value
        return raw

    def build(self, values: Mapping[str, Any]) -> tuple[ExperimentConfig | None, str | None]:
        """(config, None) with `values` set, or (None, why not)."""
        try:
            config = ExperimentConfig.model_validate(self.with_values(values))
        except ValidationError as err:  # the config's own rules, cross-field ones included (models/config.py)
            return None, describe_validation_error(err)
        return config, None

    def rewrite(self, changed: Mapping[str, Any], expected: ExperimentConfig) -> str:
        """The file's text with `changed` set; checked to parse back into exactly `expected`."""
        try:
            text = set_toml_values(self.text, changed)
            ok = ExperimentConfig.model_validate(tomllib.loads(text)) == expected
        except (ValueError, ValidationError) as err:  # TOMLDecodeError is a ValueError
            raise AgentError(f"{self.path}: cannot rewrite {', '.join(changed)}: {err}") from None
        if not ok:
            raise AgentError(f"{self.path}: rewriting {', '.join(changed)} did not give the sampled config")
        return text


# ---------------------------------------------------------------------------------- the study


@dataclass(frozen=True)
class _Point:
    """A finished run as the study sees it: where it was in the space and how it did."""

    run_id: str
    kind: str
    values: dict[str, Any]
    state: TrialState  # COMPLETE (judged) or PRUNED (crashed, timed out, rejected)
    mse: float | None


def _param_name(kind: str, key: str) -> str:
    return f"{kind}:{key}"  # kinds never share a param: a dit's best lr says little about a gpt's


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    """Can `value` be a trial's value of this param? (What create_trial checks; it is how we skip values
    that fall outside a space edited mid-night rather than refuse the whole run.)"""
    if isinstance(distribution, CategoricalDistribution):
        return any(type(value) is type(c) and value == c for c in distribution.choices)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return distribution._contains(distribution.to_internal_repr(value))


def _history_points(
    history: list[RunRecord], space: SearchSpace, experiments: dict[str, _Experiment], default_kind: str
) -> list[_Point]:
    """The night's finished runs that the study can use: the baseline and this agent's own proposals.

    Runs that crashed, timed out or were rejected become PRUNED trials, not FAIL ones: optuna's TPE drops
    FAIL trials from its model entirely but counts PRUNED ones (without intermediate values) as worse than
    every judged run, so a learning rate that diverged is not proposed again.
    """

    def kind_of(record: RunRecord) -> str:
        kind = record.agent_meta.get("kind") or record.model_kind
        if kind is None and record.experiment:
            kind = next((k for k, e in experiments.items() if e.path == record.experiment), None)
        return kind or default_kind

    mine = [r for r in history if r.index >= 1 and isinstance(r.agent_meta.get("params"), dict)]
    points = []
    for record in history:
        kind = kind_of(record)
        if kind not in experiments:
            continue
        if record.index == 0:
            values = _baseline_values(
                [r for r in mine if kind_of(r) == kind],
                kept=any(r.index >= 1 and r.status == RunStatus.KEEP and kind_of(r) == kind for r in history),
                current=experiments[kind].values(space.params(kind)),
            )
        elif isinstance(record.agent_meta.get("params"), dict):
            values = dict(record.agent_meta["params"])
        else:
            continue  # another agent's edit: not a point in this space
        if values is None:
            continue
        params = {p.key: p.distribution for p in space.params(kind)}
        values = {k: v for k, v in values.items() if k in params and _contains(params[k], v)}
        mse = record.primary
        state = TrialState.COMPLETE if mse is not None else TrialState.PRUNED
        points.append(_Point(record.run_id, kind, values, state, mse))
    return points


def _baseline_values(mine: list[RunRecord], kept: bool, current: dict[str, Any]) -> dict[str, Any] | None:
    """Where the baseline sat in the space (None when unknown).

    The experiment file changes only when a run of its kind is kept. So the baseline's values are the
    starting point (`base`) of this agent's first proposal of the kind, or, while no run of the kind has
    been kept, the file as it is now.
    """
    if mine and isinstance(mine[0].agent_meta.get("base"), dict):
        return dict(mine[0].agent_meta["base"])
    return None if kept else current


def _build_study(points: list[_Point], space: SearchSpace, kinds: tuple[str, ...], seed: int) -> optuna.Study:
    """An in-memory study holding the night so far, with a TPE sampler seeded for this proposal."""
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=space.settings.n_startup_trials)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for point in points:
        params = {_param_name(point.kind, k): v for k, v in point.values.items()}
        dists = {_param_name(point.kind, p.key): p.distribution for p in space.params(point.kind)}
        dists = {name: dists[name] for name in params}
        if len(kinds) > 1:
            params["kind"], dists["kind"] = point.kind, CategoricalDistribution(kinds)
        study.add_trial(create_trial(params=params, distributions=dists, value=point.mse, state=point.state))
    return study


def proposal_seed(space_seed: int, index: int) -> int:
    """A sampler seed from (space seed, run index): same history and index, same proposal."""
    return int(np.random.SeedSequence([space_seed, index]).generate_state(1)[0])


def _suggest(trial: optuna.Trial, name: str, distribution: BaseDistribution) -> Any:
    d = distribution
    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(name, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(name, d.low, d.high, step=d.step, log=d.log)
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(name, d.low, d.high, step=d.step, log=d.log)
    raise TypeError(f"unsupported distribution {d!r}")


def _tidy(value: Any, distribution: BaseDistribution) -> Any:
    """Floats rounded to 3 significant digits (0.00213, not 0.0021347891): readable in the file and the
    ledger, and far finer than the noise between two runs."""
    if not isinstance(distribution, FloatDistribution):
        return value
    if distribution.step is not None:
        return float(f"{value:.10g}")
    return min(max(float(f"{value:.3g}"), distribution.low), distribution.high)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna logs every study it creates at INFO; the harness has its own progress output."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


@dataclass
class _Sample:
    kind: str
    params: dict[str, Any]
    config: ExperimentConfig
    random: bool  # still in the random startup phase


@dataclass
class _ProposalInputs:
    """What one proposal works from: the space, each kind's experiment file, and the runs so far."""

    space: SearchSpace
    experiments: dict[str, _Experiment]  # per kind the night may train, in the night's order
    points: list[_Point]
    in_flight: list[tuple[str, str, dict[str, Any]]]  # (run id, kind, params) of runs not judged yet

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(self.experiments)

    @classmethod
    def read(cls, context: AgentContext) -> _ProposalInputs:
        space = load_space(context.workspace / SPACE_FILE)
        default = _Experiment.read(context.workspace, context.experiment)
        experiments = {default.kind: default}
        kinds = tuple(dict.fromkeys(context.model_kinds))
        if len(kinds) > 1:  # the night's own file for its kind, experiments/<kind>.toml for the others
            experiments = {}
            for kind in kinds:
                path = f"experiments/{kind}.toml"
                exp = default if default.kind == kind else _Experiment.read(context.workspace, path)
                if exp.kind != kind:
                    raise AgentError(f"{context.workspace / exp.path} trains a {exp.kind}, expected a {kind}")
                experiments[kind] = exp
        for exp in experiments.values():
            _check_bounds(space, exp)
        in_flight = [
            (run.run_id, str(run.meta.get("kind", default.kind)), run.meta["params"])
            for run in context.in_flight
            if isinstance(run.meta.get("params"), dict)
        ]
        points = _history_points(context.history, space, experiments, default.kind)
        earlier = [r for r in context.earlier if not r.is_baseline]  # the nights it continues: tried too
        points += _history_points(earlier, space, experiments, default.kind)
        return cls(space, experiments, points, in_flight)


# ---------------------------------------------------------------------------------------- the agent


class LocalAgent(Agent):
    """Proposes hyperparameter changes by TPE over the space file; offline, stateless, deterministic."""

    name = "local"
    concurrent = True  # no state between proposals: a parallel night asks several at once
    typical_s = 1.0

    def propose(self, context: AgentContext) -> Proposal:
        night = _ProposalInputs.read(context)
        with _quiet_optuna():
            seed = proposal_seed(night.space.settings.seed, context.index)
            sample = self._sample(self._study(night, context), night, seed)
        experiment = night.experiments[sample.kind]
        base = experiment.values(night.space.params(sample.kind))
        changed = {k: v for k, v in sample.params.items() if v != base[k]}
        text = experiment.rewrite(changed, sample.config)
        return Proposal(
            hypothesis=self._hypothesis(context, sample, base, changed, night),
            rationale=self._rationale(night, sample, changed),
            edits=[FileEdit(path=experiment.path, content=text)],
            experiment=experiment.path,
            meta={
                "params": sample.params,
                "kind": sample.kind,
                "trial": context.index,
                "base": base,  # where this run started: the baseline's place in the space, for later studies
                "sampler": "random" if sample.random else "tpe",
            },
        )

    def study(self, context: AgentContext) -> optuna.Study:
        """The study `propose` would sample from: the night's finished runs as trials (for inspection)."""
        with _quiet_optuna():
            return self._study(_ProposalInputs.read(context), context)

    def _study(self, night: _ProposalInputs, context: AgentContext) -> optuna.Study:
        seed = proposal_seed(night.space.settings.seed, context.index)
        return _build_study(night.points, night.space, night.kinds, seed)

    def _sample(self, study: optuna.Study, night: _ProposalInputs, seed: int = 0) -> _Sample:
        """Ask until a sample builds a valid config that is neither the current one nor one already run."""
        space, kinds = night.space, night.kinds
        random = len(night.points) < space.settings.n_startup_trials  # TPE counts judged + pruned trials
        rng = np.random.default_rng(seed)
        problems: list[str] = []
        for _ in range(space.settings.max_resamples):
            trial = study.ask()
            kind = trial.suggest_categorical("kind", kinds) if len(kinds) > 1 else kinds[0]
            experiment = night.experiments[kind]
            params = {
                p.key: _tidy(_suggest(trial, _param_name(kind, p.key), p.distribution), p.distribution)
                for p in space.params(kind)
            }
            params = _focused(params, experiment.values(space.params(kind)), space.settings.max_changes, rng)
            config, problem = experiment.build(params)
            if problem is None and params == experiment.values(space.params(kind)):
                problem = "same as the current config"
            tried = [(p.run_id, p.kind, p.values) for p in night.points] + night.in_flight
            same = next((run for run, k, values in tried if k == kind and values == params), None)
            if problem is None and same is not None:
                problem = f"same as {same}"
            if config is not None and problem is None:
                return _Sample(kind, params, config, random)
            study.tell(trial, state=TrialState.FAIL)  # never trained: nothing for TPE to learn from
            problems.append(problem or "invalid")
        n = space.settings.max_resamples
        if all(p.startswith("same as") for p in problems):
            raise AgentExhausted(f"{space.path}: {n} samples in a row were configs already run; nothing new")
        raise AgentError(
            f"{space.path}: no valid config in {n} samples (last: {problems[-1]}); fix or widen the space"
        )

    def _hypothesis(
        self,
        context: AgentContext,
        sample: _Sample,
        base: dict[str, Any],
        changed: dict[str, Any],
        night: _ProposalInputs,
    ) -> str:
        moves = ", ".join(
            f"{k} {format_toml_value(base[k])} -> {format_toml_value(v)}" for k, v in changed.items()
        )
        judged = sum(r.primary is not None for r in context.history)
        runs = "judged run" if judged == 1 else "judged runs"
        how = "random startup sample" if sample.random else "TPE"
        path = night.experiments[sample.kind].path
        what = f"Train {sample.kind} ({path}): tune" if len(night.kinds) > 1 else "Tune"
        return f"{what} {moves} ({how}, trial {context.index} of the night, from {judged} {runs})"

    def _rationale(self, night: _ProposalInputs, sample: _Sample, changed: dict[str, Any]) -> str:
        """The best run so far, and which changed keys stay near its values (exploit) or leave them
        (explore)."""
        judged = [p for p in night.points if p.kind == sample.kind and p.mse is not None]
        best = min(judged, key=lambda p: (p.mse, p.run_id)) if judged else None
        parts = [f"Best {sample.kind} so far: {best.run_id}, val mse {best.mse:.5g}." if best else ""]
        if sample.random:
            parts.append(
                f"Random sampling until {night.space.settings.n_startup_trials} runs have finished "
                f"({len(night.points)} so far); then TPE models which values gave a low mse."
            )
        elif best is not None:
            dists = {p.key: p.distribution for p in night.space.params(sample.kind)}
            near = [k for k in changed if k in best.values and _near(dists[k], changed[k], best.values[k])]
            far = [k for k in changed if k not in near]
            if near:
                parts.append(f"Exploiting: {', '.join(near)} near the best run's values.")
            if far:
                parts.append(f"Exploring: {', '.join(far)} away from them.")
        return " ".join(p for p in parts if p)


def _focused(
    params: dict[str, Any], current: dict[str, Any], max_changes: int, rng: np.random.Generator
) -> dict[str, Any]:
    """`params` with at most `max_changes` of its differences from `current` kept (0: all), chosen at random.

    The study then records what really ran, so TPE learns from the configs that were trained.
    """
    differ = [k for k in params if params[k] != current.get(k)]
    if max_changes == 0 or len(differ) <= max_changes:
        return params
    keep = set(rng.choice(differ, size=max_changes, replace=False).tolist())
    return {k: (v if k in keep else current[k]) for k, v in params.items()}


def _near(distribution: BaseDistribution, a: Any, b: Any) -> bool:
    if isinstance(distribution, CategoricalDistribution):
        return a == b
    d: Any = distribution
    scale = math.log if d.log else float
    low, high = float(d.low), float(d.high)
    return abs(scale(a) - scale(b)) <= NEAR * (scale(high) - scale(low))


def _check_bounds(space: SearchSpace, experiment: _Experiment) -> None:
    """Each choice and range end must be a valid value on its own: a typo is named here, not discovered as
    `max_resamples` failed samples."""
    for param in space.params(experiment.kind):
        d: Any = param.distribution
        values = d.choices if isinstance(d, CategoricalDistribution) else (d.low, d.high)
        for value in values:
            try:
                ExperimentConfig.model_validate(experiment.with_values({param.key: value}))
            except ValidationError as err:
                name = param.key.rsplit(".", 1)[-1]
                if not any(e["loc"] and e["loc"][-1] == name for e in err.errors()):
                    continue  # a rule across fields (heads vs width): a sample may still pair it well
                raise AgentError(
                    f'{space.path}: [{experiment.kind}] "{param.key}": {value!r} is not a valid value '
                    f"({describe_validation_error(err)})"
                ) from None
