"""The onboarding catalog: steps, the static core flow, guardrails, rule triggers, rewards,
experiments, segment thresholds and bandit settings, read from the catalog sections of the one
TOML config file and validated so that every error names the key at fault.

The catalog is explained in ``docs/catalog.md``; every key is listed in ``docs/config-reference.md``.
:func:`load_catalog` reads a whole catalog file (or the shipped demo catalog); :func:`parse_catalog` validates
an already-parsed whole catalog; :func:`catalog_from_config` lays the catalog sections of a config file (the
``Config.raw`` of ``server/base/config.py``) over the demo catalog key by key and validates the result.

>>> cat = load_catalog(None)
>>> cat.core_order
('welcome', 'profile_setup', 'first_project')
>>> cat.step("re_engagement").channel
'email'
"""
from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

from server.base.clock import DAY_MS
from server.base.toml_merge import has_key, merge_tables, set_keys

CHANNELS = ("in_app", "email", "push")
STEP_KINDS = ("core", "personalized")
RULE_KINDS = ("feature_explored", "screens_skipped", "returned_after_inactive")
PROPOSE, FORCE = "propose", "force"
RULE_MODES = (PROPOSE, FORCE)
ARM_KINDS = ("tailored", "generic", "holdout")
ALGORITHMS = ("linucb", "lints", "ridge")
EXPLORATIONS = ("epsilon_greedy", "squarecb")

CATALOG_SECTIONS = ("steps", "core", "guardrails", "rules", "rewards", "experiments", "segments", "bandit")
TABLE_ARRAY_SECTIONS = ("steps", "rules", "experiments")  # [[steps]] etc.: a config's list replaces the demo's
# Top-level sections that belong to server/base/config.py; parse_catalog skips them.
CONFIG_SECTIONS = ("server", "privacy", "ingest")

ID_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
EVENT_NAME_RE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
FEATURE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
STEP_COMPLETED = "step_completed"
FEATURE_USED = "feature_used"
SHARE_TOLERANCE = 1e-6


class CatalogError(ValueError):
    """An invalid catalog: ``key`` is the path of the offending key (e.g. ``steps[3].channel``)."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


# ---------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class Step:
    """One onboarding step: what to show, where, how often, and what counts as its success.

    ``success_event`` is the event name that rewards a decision that chose this step: for
    ``step_completed`` the event's ``step_id`` must equal the step id, for ``feature_used`` the
    event's feature must equal the step's ``feature`` (when the step has one).
    """

    id: str
    title: str
    channel: str
    kind: str
    feature: str | None = None
    prerequisites: tuple[str, ...] = ()
    cooldown_hours: float = 24.0
    max_per_day: int = 1
    success_event: str = STEP_COMPLETED
    reward_window_hours: float = 24.0
    default_reward: float = 0.0

    @property
    def is_core(self) -> bool:
        """True for a static core step (shown in ``core.order``, never chosen by the bandit)."""
        return self.kind == "core"

    def is_success(self, event_name: str, step_id: str = "", feature: str = "") -> bool:
        """Whether an event (name, step_id, feature) counts as this step's success."""
        if event_name != self.success_event:
            return False
        if event_name == STEP_COMPLETED:
            return step_id == self.id
        if event_name == FEATURE_USED and self.feature:
            return feature == self.feature
        return True


@dataclass(frozen=True, slots=True)
class Guardrails:
    """Limits that keep onboarding calm: caps, gaps, no repeats, bounded exploration, and the
    "consistent behavior" threshold before any personalization."""

    max_per_day_per_channel: dict[str, int] = field(default_factory=lambda: {"in_app": 3, "email": 1, "push": 1})
    max_per_day_total: int = 4
    min_gap_minutes: float = 30.0
    never_repeat_completed: bool = True
    max_exploration: float = 0.2
    min_sessions_for_personalization: int = 3
    min_distinct_days_for_personalization: int = 2

    def cap_for(self, channel: str) -> int:
        """Steps that may be shown on ``channel`` per 24 h (the total cap when the channel has none)."""
        return self.max_per_day_per_channel.get(channel, self.max_per_day_total)


@dataclass(frozen=True, slots=True)
class Rule:
    """A behavioral trigger from the seed's table: when its condition holds it proposes its step to the bandit
    (``mode = "propose"``: the step's probability is boosted by ``boost``, the rule is measured and demoted when
    significantly worse than the bandit after ``min_outcomes_to_demote`` outcomes, 0 = never) or forces it
    (``mode = "force"``: propensity 1, never measured).

    ``threshold`` means: uses of one feature (``feature_explored``), screens skipped
    (``screens_skipped``) or hours inactive before the latest event (``returned_after_inactive``).
    ``step`` is the target step (``feature_explored`` uses ``feature_steps`` instead).
    """

    name: str
    kind: str
    priority: int = 0
    threshold: float = 0.0
    step: str | None = None
    step_template: str | None = None
    feature_steps: dict[str, str] = field(default_factory=dict)
    enabled: bool = True
    mode: str = PROPOSE
    boost: float = 0.5
    min_outcomes_to_demote: int = 200

    @property
    def proposes(self) -> bool:
        """True when the rule boosts its step inside the bandit's distribution (``mode = "propose"``)."""
        return self.mode == PROPOSE

    def step_for(self, feature: str) -> str | None:
        """The advanced-tip step for ``feature`` (``feature_explored`` rules), or None if it has none."""
        return self.feature_steps.get(feature)


@dataclass(frozen=True, slots=True)
class Rewards:
    """Reward joining defaults: how long to wait for success and what a silent decision earns; and how
    often, and how long after a window's end, the sweep gives the default reward (``sweep_interval_seconds``,
    ``grace_seconds``: timing, not part of :func:`catalog_version`)."""

    window_hours: float = 24.0
    default_reward: float = 0.0
    success_reward: float = 1.0
    sweep_interval_seconds: float = 5.0
    grace_seconds: float = 60.0


# Keys that only time the reward sweep: they change when a default outcome is written, not what any decision
# is or which rewards exist, so a changed value keeps the catalog version (and the learner's state saved with it).
UNVERSIONED_KEYS = {"rewards": ("sweep_interval_seconds", "grace_seconds")}
MAX_SWEEP_INTERVAL_SECONDS = 3600.0
MAX_GRACE_SECONDS = 86_400.0


@dataclass(frozen=True, slots=True)
class Arm:
    """One arm of an experiment: ``kind`` says how its users are served (tailored = bandit and
    rules, generic = the fixed generic flow, holdout = no personalized steps at all)."""

    name: str
    kind: str
    share: float


@dataclass(frozen=True, slots=True)
class Experiment:
    """An A/B test (e.g. tailored vs generic flows); users are assigned by a salted hash."""

    name: str
    arms: tuple[Arm, ...]
    salt: str = ""
    enabled: bool = True

    def assign(self, subject: str) -> Arm:
        """The arm of ``subject``: deterministic, uniform over [0, 1) by SHA-256(salt:name:subject)."""
        digest = hashlib.sha256(f"{self.salt}:{self.name}:{subject}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        acc = 0.0
        for arm in self.arms:
            acc += arm.share
            if u < acc:
                return arm
        return self.arms[-1]


@dataclass(frozen=True, slots=True)
class SegmentsConfig:
    """Thresholds of the rule segments, the online clustering and the activation model."""

    engaged_min_features: int = 3
    engaged_window_hours: float = 48.0
    power_user_window_hours: float = 168.0
    advanced_features: tuple[str, ...] = ()
    n_clusters: int = 4
    cluster_seed: int = 42
    cluster_halflife: float = 0.3
    learn_every_events: int = 10
    activation_event: str = STEP_COMPLETED
    activation_step: str | None = None  # parse_catalog defaults it to the last core step
    activation_feature: str | None = None
    activation_window_hours: float = 168.0


@dataclass(frozen=True, slots=True)
class BanditConfig:
    """The contextual bandit: scoring algorithm, its parameters and the exploration scheme.

    Defaults: LinUCB with its bonus on the predictive sd (``noise_sd``) plus an epsilon-greedy floor, and per-step
    change detection (a step is relearned from scratch when its residuals say its reward moved; no time-based
    forgetting). Every probability is exact (a function of the learned state and the context) and every eligible
    step keeps at least ``epsilon / n_eligible``; chosen by ``python -m bench learning --sweep`` across the simulator's
    scenarios, weighing reward against the effective sample size offline evaluation gets (docs/benchmarks.md)."""

    algorithm: str = "linucb"
    alpha: float = 1.0
    l2: float = 1.0
    exploration: str = "epsilon_greedy"
    epsilon: float = 0.03
    gamma: float = 50.0
    half_life_days: float = 0.0
    noise_sd: float = 1.0
    change_z: float = 5.0
    change_window: float = 500.0
    seed: int = 0

    @property
    def half_life_ms(self) -> float:
        """How fast the bandit forgets, in the unit of decision timestamps (0: never)."""
        return self.half_life_days * DAY_MS

    def policy_params(self) -> dict[str, float | int]:
        """The keyword arguments of ``bandits.policies.build_policy`` for this configuration (every caller
        builds the policy the same way: the learner, offline replay, the benchmarks)."""
        return {"alpha": self.alpha, "l2": self.l2, "seed": self.seed, "half_life": self.half_life_ms,
                "noise_sd": self.noise_sd, "change_z": self.change_z, "change_window": self.change_window}


@dataclass(frozen=True, slots=True)
class Catalog:
    """The validated catalog. ``version`` is a short stable hash of its normalised content."""

    steps: tuple[Step, ...]
    core_order: tuple[str, ...]
    guardrails: Guardrails
    rules: tuple[Rule, ...]
    rewards: Rewards
    experiments: tuple[Experiment, ...]
    segments: SegmentsConfig
    bandit: BanditConfig
    version: str = ""

    def step(self, step_id: str) -> Step:
        """The step with id ``step_id`` (KeyError if there is none)."""
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def has_step(self, step_id: str) -> bool:
        return any(s.id == step_id for s in self.steps)

    @property
    def step_ids(self) -> tuple[str, ...]:
        return tuple(s.id for s in self.steps)

    @property
    def core_steps(self) -> tuple[Step, ...]:
        """Core steps in their static order."""
        return tuple(self.step(i) for i in self.core_order)

    @property
    def personalized_steps(self) -> tuple[Step, ...]:
        """Steps the rules and the bandit may choose, in catalog order."""
        return tuple(s for s in self.steps if not s.is_core)

    @property
    def active_experiment(self) -> Experiment | None:
        """The enabled experiment, if any (at most one may be enabled)."""
        for e in self.experiments:
            if e.enabled:
                return e
        return None

    def rules_by_priority(self) -> tuple[Rule, ...]:
        """Enabled rules, highest priority first (ties keep catalog order)."""
        enabled = [r for r in self.rules if r.enabled]
        return tuple(sorted(enabled, key=lambda r: -r.priority))

    def to_dict(self) -> dict[str, Any]:
        """The normalised catalog (every default filled in) as plain JSON-able values."""
        out = _plain(self)
        out.pop("version", None)
        return out


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def catalog_version(catalog: Catalog) -> str:
    """Short stable hash (12 hex chars) of the normalised catalog: equal catalogs, equal versions (the sweep
    timing keys of :data:`UNVERSIONED_KEYS` left out)."""
    d = catalog.to_dict()
    for section, keys in UNVERSIONED_KEYS.items():
        d[section] = {k: v for k, v in d[section].items() if k not in keys}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Reading


_REQUIRED = object()


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


class _Table:
    """A TOML table being read: typed getters that name the key path, and unknown-key checks."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise CatalogError(path, f"must be a table (got {_type_name(data)})")
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self.data

    def raw(self, name: str, default: Any = _REQUIRED) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if default is _REQUIRED:
                raise CatalogError(self.key(name), "is required")
            return default
        return self.data[name]

    def string(self, name: str, default: Any = _REQUIRED, *, pattern: re.Pattern[str] | None = None,
               choices: Iterable[str] | None = None, allow_empty: bool = False) -> Any:
        v = self.raw(name, default)
        if v is default and name not in self.data:
            return v
        if not isinstance(v, str):
            raise CatalogError(self.key(name), f"must be a string (got {_type_name(v)})")
        if choices is not None:
            choices = tuple(choices)
            if v not in choices:
                raise CatalogError(self.key(name), f"must be one of {', '.join(choices)} (got {v!r})")
        if not v and not allow_empty:
            raise CatalogError(self.key(name), "must not be empty")
        if pattern is not None and v and not pattern.match(v):
            raise CatalogError(self.key(name), f"must match {pattern.pattern} (got {v!r})")
        return v

    def integer(self, name: str, default: Any = _REQUIRED, *, min: int | None = None, max: int | None = None) -> Any:
        v = self.raw(name, default)
        if v is default and name not in self.data:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise CatalogError(self.key(name), f"must be an integer (got {_type_name(v)})")
        _check_range(self.key(name), v, min, max)
        return v

    def number(self, name: str, default: Any = _REQUIRED, *, min: float | None = None, max: float | None = None,
               min_exclusive: bool = False) -> Any:
        v = self.raw(name, default)
        if v is default and name not in self.data:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CatalogError(self.key(name), f"must be a number (got {_type_name(v)})")
        v = float(v)
        if not math.isfinite(v):
            raise CatalogError(self.key(name), f"must be finite (got {v})")
        if min_exclusive and min is not None and v <= min:
            raise CatalogError(self.key(name), f"must be > {min:g} (got {v:g})")
        _check_range(self.key(name), v, None if min_exclusive else min, max)
        return v

    def boolean(self, name: str, default: Any = _REQUIRED) -> Any:
        v = self.raw(name, default)
        if not isinstance(v, bool):
            raise CatalogError(self.key(name), f"must be true or false (got {_type_name(v)})")
        return v

    def array(self, name: str, default: Any = _REQUIRED) -> Any:
        v = self.raw(name, default)
        if v is default and name not in self.data:
            return v
        if not isinstance(v, list):
            raise CatalogError(self.key(name), f"must be an array (got {_type_name(v)})")
        return v

    def strings(self, name: str, default: Any = _REQUIRED, *, pattern: re.Pattern[str] | None = None) -> Any:
        v = self.array(name, default)
        if v is default and name not in self.data:
            return v
        out: list[str] = []
        for i, item in enumerate(v):
            k = f"{self.key(name)}[{i}]"
            if not isinstance(item, str):
                raise CatalogError(k, f"must be a string (got {_type_name(item)})")
            if pattern is not None and not pattern.match(item):
                raise CatalogError(k, f"must match {pattern.pattern} (got {item!r})")
            if item in out:
                raise CatalogError(k, f"duplicate {item!r}")
            out.append(item)
        return tuple(out)

    def table(self, name: str, required: bool = False) -> _Table:
        v = self.raw(name, _REQUIRED if required else {})
        return _Table(v, self.key(name))

    def done(self) -> None:
        """Raise on the first key that no getter asked for (a typo must not pass silently)."""
        for k in self.data:
            if k not in self.seen:
                allowed = sorted(self.seen)
                close = difflib.get_close_matches(k, allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise CatalogError(self.key(k), f"unknown key ({hint}allowed: {', '.join(allowed)})")


def _check_range(key: str, v: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and v < lo:
        raise CatalogError(key, f"must be >= {lo:g} (got {v:g})")
    if hi is not None and v > hi:
        raise CatalogError(key, f"must be <= {hi:g} (got {v:g})")


def _table_array(root: _Table, name: str) -> list[_Table]:
    items = root.array(name, [])
    return [_Table(item, f"{name}[{i}]") for i, item in enumerate(items)]


# ---------------------------------------------------------------------------------------------
# Sections


def _parse_rewards(t: _Table) -> Rewards:
    d = Rewards()
    r = Rewards(
        window_hours=t.number("window_hours", d.window_hours, min=0.0, min_exclusive=True),
        default_reward=t.number("default_reward", d.default_reward, min=-1000.0, max=1000.0),
        success_reward=t.number("success_reward", d.success_reward, min=-1000.0, max=1000.0),
        sweep_interval_seconds=t.number("sweep_interval_seconds", d.sweep_interval_seconds, min=0.0,
                                        max=MAX_SWEEP_INTERVAL_SECONDS, min_exclusive=True),
        grace_seconds=t.number("grace_seconds", d.grace_seconds, min=0.0, max=MAX_GRACE_SECONDS),
    )
    t.done()
    return r


def _parse_step(t: _Table, rewards: Rewards) -> Step:
    d = Step("x", "x", "in_app", "core")
    feature = t.string("feature", None, pattern=FEATURE_RE, allow_empty=True)
    step = Step(
        id=t.string("id", pattern=ID_RE),
        title=t.string("title"),
        channel=t.string("channel", choices=CHANNELS),
        kind=t.string("kind", choices=STEP_KINDS),
        feature=feature or None,
        prerequisites=t.strings("prerequisites", ()),
        cooldown_hours=t.number("cooldown_hours", d.cooldown_hours, min=0.0),
        max_per_day=t.integer("max_per_day", d.max_per_day, min=1),
        success_event=t.string("success_event", d.success_event, pattern=EVENT_NAME_RE),
        reward_window_hours=t.number("reward_window_hours", rewards.window_hours, min=0.0, min_exclusive=True),
        default_reward=t.number("default_reward", rewards.default_reward, min=-1000.0, max=1000.0),
    )
    t.done()
    return step


def _check_prerequisites(steps: list[Step]) -> None:
    index = {s.id: i for i, s in enumerate(steps)}
    for i, s in enumerate(steps):
        for j, p in enumerate(s.prerequisites):
            key = f"steps[{i}].prerequisites[{j}]"
            if p == s.id:
                raise CatalogError(key, f"step {s.id!r} cannot be its own prerequisite")
            if p not in index:
                raise CatalogError(key, f"unknown step {p!r}")
    # Cycles: depth-first search with colours.
    state: dict[str, int] = {}

    def visit(sid: str, trail: list[str]) -> None:
        state[sid] = 1
        for j, p in enumerate(steps[index[sid]].prerequisites):
            if state.get(p) == 1:
                cycle = " -> ".join(trail[trail.index(p):] + [p])
                raise CatalogError(f"steps[{index[sid]}].prerequisites[{j}]",
                                   f"prerequisites form a cycle: {cycle} (each step requires the next)")
            if p not in state:
                visit(p, trail + [p])
        state[sid] = 2

    for s in steps:
        if s.id not in state:
            visit(s.id, [s.id])


def _parse_core(t: _Table, steps: dict[str, Step]) -> tuple[str, ...]:
    order = t.strings("order", ())
    t.done()
    for i, sid in enumerate(order):
        key = f"core.order[{i}]"
        if sid not in steps:
            raise CatalogError(key, f"unknown step {sid!r}")
        if not steps[sid].is_core:
            raise CatalogError(key, f'step {sid!r} is {steps[sid].kind}, core steps must have kind = "core"')
    return order


def _parse_guardrails(t: _Table) -> Guardrails:
    d = Guardrails()
    caps: dict[str, int] = dict(d.max_per_day_per_channel)
    if t.has("max_per_day_per_channel"):
        ct = t.table("max_per_day_per_channel")
        caps = {}
        for ch in ct.data:
            if ch not in CHANNELS:
                raise CatalogError(ct.key(ch), f"must be one of {', '.join(CHANNELS)} (got {ch!r})")
            caps[ch] = ct.integer(ch, min=0)
        ct.done()
    else:
        t.seen.add("max_per_day_per_channel")
    g = Guardrails(
        max_per_day_per_channel=caps,
        max_per_day_total=t.integer("max_per_day_total", d.max_per_day_total, min=0),
        min_gap_minutes=t.number("min_gap_minutes", d.min_gap_minutes, min=0.0),
        never_repeat_completed=t.boolean("never_repeat_completed", d.never_repeat_completed),
        max_exploration=t.number("max_exploration", d.max_exploration, min=0.0, max=1.0),
        min_sessions_for_personalization=t.integer(
            "min_sessions_for_personalization", d.min_sessions_for_personalization, min=0),
        min_distinct_days_for_personalization=t.integer(
            "min_distinct_days_for_personalization", d.min_distinct_days_for_personalization, min=0),
    )
    t.done()
    return g


_RULE_DEFAULTS: dict[str, dict[str, Any]] = {
    "feature_explored": {"threshold": 5},
    "screens_skipped": {"threshold": 2, "step": "core_benefits"},
    "returned_after_inactive": {"threshold": 24.0, "step": "re_engagement"},
}


def _parse_rule(t: _Table, steps: dict[str, Step]) -> Rule:
    name = t.string("name", pattern=ID_RE)
    kind = t.string("kind", choices=RULE_KINDS)
    priority = t.integer("priority", 0)
    enabled = t.boolean("enabled", True)
    d = Rule("", kind)
    mode = t.string("mode", d.mode, choices=RULE_MODES)
    boost = t.number("boost", d.boost, min=0.0, min_exclusive=True)
    if boost >= 1.0:
        raise CatalogError(t.key("boost"), f'must be < 1 (got {boost:g}); mode = "force" always shows the step')
    min_outcomes = t.integer("min_outcomes_to_demote", d.min_outcomes_to_demote, min=0)
    if mode == FORCE:
        for key in ("boost", "min_outcomes_to_demote"):
            if t.has(key):
                raise CatalogError(t.key(key), 'only applies when mode = "propose"')
    defaults = _RULE_DEFAULTS[kind]
    step: str | None = None
    template: str | None = None
    feature_steps: dict[str, str] = {}

    def target(key: str, sid: str) -> str:
        if sid not in steps:
            raise CatalogError(key, f"unknown step {sid!r}")
        if steps[sid].is_core:
            raise CatalogError(key, f"step {sid!r} is a core step; rules may only trigger personalized steps")
        return sid

    if kind == "feature_explored":
        threshold = float(t.integer("threshold", defaults["threshold"], min=1))
        if t.has("steps") and t.has("step_template"):
            raise CatalogError(t.key("steps"), "give either steps or step_template, not both")
        if t.has("steps"):
            st = t.table("steps")
            for feat in st.data:
                if not FEATURE_RE.match(feat):
                    raise CatalogError(st.key(feat), f"feature name must match {FEATURE_RE.pattern}")
                feature_steps[feat] = target(st.key(feat), st.string(feat, pattern=ID_RE))
            st.done()
            if not feature_steps:
                raise CatalogError(t.key("steps"), "must map at least one feature to a step")
        else:
            template = t.string("step_template", "advanced_tip_{feature}")
            rest = template.replace("{feature}", "", 1)
            if "{feature}" not in template or "{" in rest or "}" in rest:
                raise CatalogError(t.key("step_template"), f"must contain {{feature}} exactly once and no other braces (got {template!r})")
            for s in steps.values():
                if s.feature and not s.is_core and template.replace("{feature}", s.feature) == s.id:
                    feature_steps[s.feature] = s.id
            if not feature_steps:
                raise CatalogError(t.key("step_template"),
                                   f"no personalized step matches {template!r} (a step with feature = F and id = "
                                   f"{template.replace('{feature}', 'F')!r})")
    elif kind == "screens_skipped":
        threshold = float(t.integer("threshold", defaults["threshold"], min=1))
        step = target(t.key("step"), t.string("step", defaults["step"], pattern=ID_RE))
    else:
        threshold = t.number("threshold", defaults["threshold"], min=0.0, min_exclusive=True)
        step = target(t.key("step"), t.string("step", defaults["step"], pattern=ID_RE))
    t.done()
    return Rule(name=name, kind=kind, priority=priority, threshold=threshold, step=step,
                step_template=template, feature_steps=feature_steps, enabled=enabled, mode=mode, boost=boost,
                min_outcomes_to_demote=min_outcomes)


def _parse_experiment(t: _Table) -> Experiment:
    name = t.string("name", pattern=ID_RE)
    salt = t.string("salt", "", allow_empty=True)
    enabled = t.boolean("enabled", True)
    arms_raw = t.array("arms")
    t.done()
    if not arms_raw:
        raise CatalogError(t.key("arms"), "must have at least one arm")
    arms: list[Arm] = []
    for j, a in enumerate(arms_raw):
        at = _Table(a, f"{t.key('arms')}[{j}]")
        arm_name = at.string("name", pattern=ID_RE)
        kind_default = arm_name if arm_name in ARM_KINDS else _REQUIRED
        arm = Arm(name=arm_name, kind=at.string("kind", kind_default, choices=ARM_KINDS),
                  share=at.number("share", min=0.0, max=1.0))
        at.done()
        if any(x.name == arm.name for x in arms):
            raise CatalogError(at.key("name"), f"duplicate arm {arm.name!r}")
        arms.append(arm)
    total = sum(a.share for a in arms)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        raise CatalogError(t.key("arms"), f"shares must sum to 1 (got {total:g})")
    return Experiment(name=name, arms=tuple(arms), salt=salt, enabled=enabled)


def _parse_segments(t: _Table, steps: dict[str, Step], core_order: tuple[str, ...]) -> SegmentsConfig:
    d = SegmentsConfig()
    activation_event = t.string("activation_event", d.activation_event, pattern=EVENT_NAME_RE)
    step_default = core_order[-1] if activation_event == STEP_COMPLETED and core_order else None
    activation_step = t.string("activation_step", step_default, pattern=ID_RE, allow_empty=True) or None
    activation_feature = t.string("activation_feature", None, pattern=FEATURE_RE, allow_empty=True) or None
    if activation_event == STEP_COMPLETED:
        if activation_step is None:
            raise CatalogError(t.key("activation_step"), 'is required when activation_event = "step_completed" and core.order is empty')
        if activation_step not in steps:
            raise CatalogError(t.key("activation_step"), f"unknown step {activation_step!r}")
    elif activation_step is not None:
        raise CatalogError(t.key("activation_step"), 'only applies when activation_event = "step_completed"')
    if activation_feature is not None and activation_event != FEATURE_USED:
        raise CatalogError(t.key("activation_feature"), 'only applies when activation_event = "feature_used"')
    s = SegmentsConfig(
        engaged_min_features=t.integer("engaged_min_features", d.engaged_min_features, min=1),
        engaged_window_hours=t.number("engaged_window_hours", d.engaged_window_hours, min=0.0, min_exclusive=True),
        power_user_window_hours=t.number("power_user_window_hours", d.power_user_window_hours, min=0.0,
                                         min_exclusive=True),
        advanced_features=t.strings("advanced_features", d.advanced_features, pattern=FEATURE_RE),
        n_clusters=t.integer("n_clusters", d.n_clusters, min=1, max=32),
        cluster_seed=t.integer("cluster_seed", d.cluster_seed, min=0),
        cluster_halflife=t.number("cluster_halflife", d.cluster_halflife, min=0.0, max=1.0, min_exclusive=True),
        learn_every_events=t.integer("learn_every_events", d.learn_every_events, min=1),
        activation_event=activation_event,
        activation_step=activation_step,
        activation_feature=activation_feature,
        activation_window_hours=t.number("activation_window_hours", d.activation_window_hours, min=0.0,
                                         min_exclusive=True),
    )
    t.done()
    return s


def _parse_bandit(t: _Table, guardrails: Guardrails) -> BanditConfig:
    d = BanditConfig()
    b = BanditConfig(
        algorithm=t.string("algorithm", d.algorithm, choices=ALGORITHMS),
        alpha=t.number("alpha", d.alpha, min=0.0),
        l2=t.number("l2", d.l2, min=0.0, min_exclusive=True),
        exploration=t.string("exploration", d.exploration, choices=EXPLORATIONS),
        epsilon=t.number("epsilon", d.epsilon, min=0.0, max=1.0),
        gamma=t.number("gamma", d.gamma, min=0.0, min_exclusive=True),
        half_life_days=t.number("half_life_days", d.half_life_days, min=0.0),
        noise_sd=t.number("noise_sd", d.noise_sd, min=0.0),
        change_z=t.number("change_z", d.change_z, min=0.0),
        change_window=t.number("change_window", d.change_window, min=1.0),
        seed=t.integer("seed", d.seed, min=0),
    )
    t.done()
    if b.exploration == "epsilon_greedy" and b.epsilon > guardrails.max_exploration:
        raise CatalogError("bandit.epsilon", f"must be <= guardrails.max_exploration = {guardrails.max_exploration:g} "
                                             f"(got {b.epsilon:g})")
    return b


def parse_catalog(raw: Mapping[str, Any]) -> Catalog:
    """Validate the catalog sections of a parsed TOML document and return the :class:`Catalog`.

    Sections owned by ``server/base/config.py`` ([server], [privacy], [ingest]) are skipped; any other
    unknown top-level key is an error. Raises :class:`CatalogError` naming the key path.
    """
    root = _Table(dict(raw), "")
    for name in CONFIG_SECTIONS:
        root.seen.add(name)

    rewards = _parse_rewards(root.table("rewards"))

    step_tables = _table_array(root, "steps")
    if not step_tables:
        raise CatalogError("steps", "at least one [[steps]] entry is required")
    steps: list[Step] = []
    by_id: dict[str, Step] = {}
    for i, st in enumerate(step_tables):
        s = _parse_step(st, rewards)
        if s.id in by_id:
            raise CatalogError(f"steps[{i}].id", f"duplicate step id {s.id!r}")
        steps.append(s)
        by_id[s.id] = s
    _check_prerequisites(steps)

    core_order = _parse_core(root.table("core"), by_id)
    for i, s in enumerate(steps):
        if s.is_core and s.id not in core_order:
            raise CatalogError(f"steps[{i}].kind", f"core step {s.id!r} is not listed in core.order")

    guardrails = _parse_guardrails(root.table("guardrails"))

    rules: list[Rule] = []
    for i, rt in enumerate(_table_array(root, "rules")):
        rule = _parse_rule(rt, by_id)
        if any(r.name == rule.name for r in rules):
            raise CatalogError(f"rules[{i}].name", f"duplicate rule name {rule.name!r}")
        rules.append(rule)

    experiments: list[Experiment] = []
    for i, et in enumerate(_table_array(root, "experiments")):
        exp = _parse_experiment(et)
        if any(e.name == exp.name for e in experiments):
            raise CatalogError(f"experiments[{i}].name", f"duplicate experiment name {exp.name!r}")
        if exp.enabled and any(e.enabled for e in experiments):
            raise CatalogError(f"experiments[{i}].enabled", "at most one experiment may be enabled at a time")
        experiments.append(exp)

    segments = _parse_segments(root.table("segments"), by_id, core_order)
    bandit = _parse_bandit(root.table("bandit"), guardrails)
    root.done()

    cat = Catalog(steps=tuple(steps), core_order=core_order, guardrails=guardrails, rules=tuple(rules),
                  rewards=rewards, experiments=tuple(experiments), segments=segments, bandit=bandit)
    return _with_version(cat)


def _with_version(cat: Catalog) -> Catalog:
    object.__setattr__(cat, "version", catalog_version(cat))
    return cat


def demo_catalog_text() -> str:
    """The TOML text of the shipped demo catalog (``server/catalog/demo.toml``)."""
    return resources.files("server").joinpath("catalog", "demo.toml").read_text(encoding="utf-8")


def demo_catalog_raw() -> dict[str, Any]:
    """The shipped demo catalog as a parsed TOML document."""
    return tomllib.loads(demo_catalog_text())


def load_catalog(path: str | Path | None = None) -> Catalog:
    """Read and validate a whole catalog TOML file (nothing taken from the demo); None loads the shipped
    demo catalog.

    Raises :class:`CatalogError` (a bad key, or ``<file>: invalid TOML ...``) and ``OSError`` when
    the file cannot be read.
    """
    if path is None:
        text, where = demo_catalog_text(), "demo.toml"
    else:
        text, where = Path(path).read_text(encoding="utf-8"), str(path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(where, f"invalid TOML: {exc}") from None
    return parse_catalog(raw)


def catalog_overrides(raw: Mapping[str, Any]) -> list[str]:
    """The catalog keys a parsed config file sets (``guardrails.max_per_day_total``; an array such as
    ``steps`` counts as one key): what :func:`catalog_from_config` takes from it rather than from the demo."""
    return set_keys({k: v for k, v in raw.items() if k in CATALOG_SECTIONS})


def catalog_from_config(raw: Mapping[str, Any]) -> Catalog:
    """The catalog of a parsed config file: its catalog sections laid over the shipped demo catalog key by key.

    Tables merge recursively, so ``[guardrails] max_per_day_total = 2`` alone changes that one key. Any other
    value replaces the demo's whole: arrays, and so also arrays of tables (``[[steps]]``, ``[[rules]]``,
    ``[[experiments]]``: a config's steps replace every demo step; ``rules = []`` means no rules). A config
    without catalog sections runs the demo as it is.

    Raises :class:`CatalogError` naming the key; when the key at fault is the demo's, not the config's, the
    message says so and how to replace it (e.g. the demo's rules target demo steps a config replaced).
    """
    own = {k: v for k, v in raw.items() if k in CATALOG_SECTIONS}
    try:
        return parse_catalog(merge_tables(demo_catalog_raw(), own))
    except CatalogError as exc:
        note = _demo_note(exc.key, own)
        if note is None:
            raise
        raise CatalogError(exc.key, f"{exc.problem} ({note})") from None


def _demo_note(key: str, own: Mapping[str, Any]) -> str | None:
    """None when the setting at ``key`` is the config's own; else where it came from and how to replace it.
    The setting is the key up to its first array index: an array comes whole from one document."""
    setting = key.split("[", 1)[0]
    if has_key(own, setting):
        return None
    if setting in TABLE_ARRAY_SECTIONS:
        return (f"this is the demo catalog's [[{setting}]], used because the config has none: define your own "
                f"[[{setting}]], or set {setting} = [] for none")
    return f"this is the demo catalog's {setting}: set {setting} in the config to replace it"
