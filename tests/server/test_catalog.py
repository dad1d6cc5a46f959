"""Tests of the catalog: the demo loads, every validation rule raises a CatalogError naming the key,
defaults, the version hash, success matching and experiment assignment."""
from __future__ import annotations

import copy
import json
import re
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pytest

from server.base.catalog import (
    Catalog,
    CatalogError,
    Experiment,
    Arm,
    catalog_from_config,
    catalog_overrides,
    demo_catalog_text,
    load_catalog,
    parse_catalog,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "catalog.md"


def demo_raw() -> dict[str, Any]:
    return tomllib.loads(demo_catalog_text())


def step_index(raw: dict[str, Any], step_id: str) -> int:
    return next(i for i, s in enumerate(raw["steps"]) if s["id"] == step_id)


def minimal_raw() -> dict[str, Any]:
    return {
        "steps": [
            {"id": "welcome", "title": "Welcome", "channel": "in_app", "kind": "core"},
            {"id": "tip", "title": "A tip", "channel": "push", "kind": "personalized"},
        ],
        "core": {"order": ["welcome"]},
    }


# ---------------------------------------------------------------------------------------------
# The demo catalog


def test_demo_catalog_loads_with_expected_content() -> None:
    cat = load_catalog(None)
    assert cat.core_order == ("welcome", "profile_setup", "first_project")
    assert [s.id for s in cat.core_steps] == list(cat.core_order)
    ids = set(cat.step_ids)
    for f in ("reports", "automations", "integrations", "dashboards"):
        assert f"advanced_tip_{f}" in ids
    for sid in ("core_benefits", "re_engagement", "template_gallery", "invite_team", "integrations_tour",
                "video_intro", "checklist"):
        assert sid in ids
        assert not cat.step(sid).is_core
    assert cat.step("core_benefits").channel == "in_app"
    assert cat.step("re_engagement").channel == "email"
    g = cat.guardrails
    assert (g.cap_for("in_app"), g.cap_for("email"), g.cap_for("push"), g.max_per_day_total) == (3, 1, 1, 4)
    kinds = {r.kind: r for r in cat.rules}
    assert set(kinds) == {"feature_explored", "screens_skipped", "returned_after_inactive"}
    assert kinds["feature_explored"].step_for("reports") == "advanced_tip_reports"
    assert kinds["feature_explored"].step_for("unknown_feature") is None
    assert kinds["screens_skipped"].step == "core_benefits"
    assert kinds["returned_after_inactive"].step == "re_engagement"
    assert kinds["returned_after_inactive"].threshold == 24.0
    exp = cat.active_experiment
    assert exp is not None and exp.name == "tailored_vs_generic"
    assert [(a.name, a.kind, a.share) for a in exp.arms] == [
        ("tailored", "tailored", 0.45), ("generic", "generic", 0.45), ("holdout", "holdout", 0.10)]
    assert cat.bandit.epsilon <= cat.guardrails.max_exploration
    assert re.fullmatch(r"[0-9a-f]{12}", cat.version)


def test_load_catalog_from_path_matches_demo(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text(demo_catalog_text(), encoding="utf-8")
    assert load_catalog(p) == load_catalog(None)
    assert load_catalog(str(p)).version == load_catalog(None).version


def test_rules_by_priority_and_personalized_steps() -> None:
    cat = load_catalog(None)
    prios = [r.priority for r in cat.rules_by_priority()]
    assert prios == sorted(prios, reverse=True)
    assert all(not s.is_core for s in cat.personalized_steps)
    assert len(cat.personalized_steps) + len(cat.core_steps) == len(cat.steps)
    with pytest.raises(KeyError):
        cat.step("nope")


def test_config_sections_are_skipped_and_defaults_fill_in() -> None:
    raw = minimal_raw()
    raw["server"] = {"port": 1}
    raw["privacy"] = {"anything": True}
    raw["ingest"] = {}
    cat = parse_catalog(raw)
    assert cat.rules == () and cat.experiments == () and cat.active_experiment is None
    tip = cat.step("tip")
    assert (tip.cooldown_hours, tip.max_per_day, tip.success_event, tip.reward_window_hours, tip.default_reward) == (
        24.0, 1, "step_completed", 24.0, 0.0)
    assert cat.guardrails.min_sessions_for_personalization == 3
    assert cat.guardrails.min_distinct_days_for_personalization == 2
    assert cat.segments.engaged_min_features == 3 and cat.segments.engaged_window_hours == 48.0
    assert cat.segments.power_user_window_hours == 168.0
    assert cat.bandit.algorithm == "linucb" and cat.bandit.exploration == "epsilon_greedy"


def test_catalog_from_config_runs_the_demo_without_catalog_sections() -> None:
    assert catalog_from_config({"server": {"port": 50051}}) == load_catalog(None)
    assert catalog_from_config({"server": {}, "guardrails": {}}) == load_catalog(None)


def test_one_key_overrides_the_demo_key_and_keeps_the_rest() -> None:
    demo = load_catalog(None)
    cat = catalog_from_config({"guardrails": {"max_per_day_total": 2}})
    assert cat.guardrails.max_per_day_total == 2
    assert cat.guardrails.min_gap_minutes == demo.guardrails.min_gap_minutes
    assert cat.guardrails.max_per_day_per_channel == demo.guardrails.max_per_day_per_channel
    assert (cat.steps, cat.rules, cat.experiments, cat.bandit) == (demo.steps, demo.rules, demo.experiments,
                                                                   demo.bandit)
    assert cat.version != demo.version


def test_nested_tables_merge_key_by_key() -> None:
    cat = catalog_from_config({"guardrails": {"max_per_day_per_channel": {"push": 0}}, "bandit": {"epsilon": 0.05}})
    assert cat.guardrails.max_per_day_per_channel == {"in_app": 3, "email": 1, "push": 0}
    assert (cat.bandit.algorithm, cat.bandit.epsilon, cat.bandit.seed) == ("linucb", 0.05, 7)  # seed: the demo's


def test_arrays_of_tables_replace_the_demo_list_whole() -> None:
    raw = {**minimal_raw(), "rules": [], "experiments": [], "segments": {"activation_step": "welcome"}}
    cat = catalog_from_config(raw)
    assert cat.step_ids == ("welcome", "tip")
    assert cat.rules == () and cat.experiments == ()
    assert cat.segments.advanced_features == load_catalog(None).segments.advanced_features  # a demo key kept
    one_rule = {**raw, "rules": [{"name": "skipped", "kind": "screens_skipped", "step": "tip"}]}
    assert [r.name for r in catalog_from_config(one_rule).rules] == ["skipped"]


def test_catalog_overrides_lists_the_keys_taken_from_the_config() -> None:
    raw = {"server": {"port": 1}, "guardrails": {"max_per_day_total": 2, "max_per_day_per_channel": {"push": 0}},
           "steps": [{"id": "a"}], "rules": []}
    assert catalog_overrides(raw) == ["guardrails.max_per_day_total", "guardrails.max_per_day_per_channel.push",
                                      "steps", "rules"]
    assert catalog_overrides({"server": {}}) == []


@pytest.mark.parametrize("raw, message", [
    ({"guardrails": {"min_gap_minutes": -1}}, "guardrails.min_gap_minutes: must be >= 0 (got -1)"),
    ({"guardrails": {"max_per_day_totl": 2}},
     "guardrails.max_per_day_totl: unknown key (did you mean 'max_per_day_total'? allowed: "),
    ({"steps": []}, "steps: at least one [[steps]] entry is required"),
    (minimal_raw(), "rules[0].step_template: no personalized step matches 'advanced_tip_{feature}' (a step with "
                    "feature = F and id = 'advanced_tip_F') (this is the demo catalog's [[rules]], used because the "
                    "config has none: define your own [[rules]], or set rules = [] for none)"),
    ({**minimal_raw(), "rules": []}, "segments.activation_step: unknown step 'first_project' (this is the demo "
                                     "catalog's segments.activation_step: set segments.activation_step in the "
                                     "config to replace it)"),
    ({"guardrails": {"max_exploration": 0.01}}, "bandit.epsilon: must be <= guardrails.max_exploration = 0.01 "
                                                "(got 0.03) (this is the demo catalog's bandit.epsilon: set "
                                                "bandit.epsilon in the config to replace it)"),
])
def test_override_errors_name_the_key_and_say_when_it_is_the_demo_s(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(CatalogError) as err:
        catalog_from_config(raw)
    assert str(err.value).startswith(message), str(err.value)
    if "demo catalog" not in message:
        assert "demo catalog" not in str(err.value)


def test_ops_sections_beside_catalog_sections_are_not_catalog_errors() -> None:
    raw = {"auth": {}, "tls": {}, "limits": {}, "metrics": {}, "logging": {}, "guardrails": {"max_per_day_total": 2}}
    assert catalog_from_config(raw).guardrails.max_per_day_total == 2


def test_step_reward_defaults_come_from_rewards_section() -> None:
    raw = minimal_raw()
    raw["rewards"] = {"window_hours": 6, "default_reward": -0.5}
    raw["steps"][1]["reward_window_hours"] = 2
    cat = parse_catalog(raw)
    assert cat.step("welcome").reward_window_hours == 6.0
    assert cat.step("welcome").default_reward == -0.5
    assert cat.step("tip").reward_window_hours == 2.0


def test_per_channel_cap_defaults_to_total_when_channel_missing() -> None:
    raw = minimal_raw()
    raw["guardrails"] = {"max_per_day_total": 5, "max_per_day_per_channel": {"email": 1}}
    g = parse_catalog(raw).guardrails
    assert g.cap_for("email") == 1 and g.cap_for("push") == 5


def test_explicit_feature_step_map() -> None:
    raw = minimal_raw()
    raw["rules"] = [{"name": "explore", "kind": "feature_explored", "threshold": 3, "steps": {"reports": "tip"}}]
    rule = parse_catalog(raw).rules[0]
    assert rule.step_for("reports") == "tip" and rule.step_template is None and rule.threshold == 3


# ---------------------------------------------------------------------------------------------
# Validation: each rule names its key


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        node = raw
        for k in path[:-1]:
            node = node[k]
        node[path[-1]] = value
    return mutate


def _del(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        node = raw
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
    return mutate


def _append(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(raw: dict[str, Any]) -> None:
        node = raw
        for k in path:
            node = node[k]
        node.append(copy.deepcopy(value))
    return mutate


def _personalize_invite(raw: dict[str, Any]) -> None:
    raw["core"]["order"][1] = "invite_team"


def _core_not_in_order(raw: dict[str, Any]) -> None:
    raw["core"]["order"] = ["welcome", "profile_setup"]


def _cycle(raw: dict[str, Any]) -> None:
    raw["steps"][0]["prerequisites"] = ["first_project"]


def _two_enabled(raw: dict[str, Any]) -> None:
    e = copy.deepcopy(raw["experiments"][0])
    e["name"] = "second"
    raw["experiments"].append(e)


def _dup_experiment(raw: dict[str, Any]) -> None:
    e = copy.deepcopy(raw["experiments"][0])
    e["enabled"] = False
    raw["experiments"].append(e)


def _dup_rule(raw: dict[str, Any]) -> None:
    raw["rules"].append(copy.deepcopy(raw["rules"][0]))


def _both_map_and_template(raw: dict[str, Any]) -> None:
    raw["rules"][0]["steps"] = {"reports": "advanced_tip_reports"}


def _no_steps(raw: dict[str, Any]) -> None:
    raw["steps"] = []


def _dup_arm(raw: dict[str, Any]) -> None:
    raw["experiments"][0]["arms"][1]["name"] = "tailored"
    raw["experiments"][0]["arms"][1]["kind"] = "tailored"


def _arm_kind_required(raw: dict[str, Any]) -> None:
    arm = raw["experiments"][0]["arms"][0]
    arm["name"] = "variant_a"
    del arm["kind"]


def _activation_feature_event(raw: dict[str, Any]) -> None:
    raw["segments"]["activation_event"] = "feature_used"


def _activation_feature_wrong_event(raw: dict[str, Any]) -> None:
    raw["segments"]["activation_feature"] = "reports"


INVALID: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    # (test id, mutation, expected key, expected fragment of the problem)
    ("unknown_section", _set(["stepz"], {}), "stepz", "unknown key"),
    ("section_not_table", _set(["guardrails"], 3), "guardrails", "must be a table"),
    ("steps_missing", _del(["steps"]), "steps", "at least one"),
    ("steps_empty", _no_steps, "steps", "at least one"),
    ("steps_not_array", _set(["steps"], {"id": "x"}), "steps", "must be an array"),
    ("step_not_table", _set(["steps", 2], "welcome"), "steps[2]", "must be a table"),
    ("step_id_required", _del(["steps", 3, "id"]), "steps[3].id", "is required"),
    ("step_id_pattern", _set(["steps", 3, "id"], "Advanced Tip"), "steps[3].id", "must match"),
    ("step_id_duplicate", _set(["steps", 3, "id"], "welcome"), "steps[3].id", "duplicate step id 'welcome'"),
    ("step_title_empty", _set(["steps", 1, "title"], ""), "steps[1].title", "must not be empty"),
    ("step_title_type", _set(["steps", 1, "title"], 5), "steps[1].title", "must be a string (got integer)"),
    ("step_channel", _set(["steps", 3, "channel"], "sms"), "steps[3].channel",
     "must be one of in_app, email, push (got 'sms')"),
    ("step_kind", _set(["steps", 3, "kind"], "optional"), "steps[3].kind", "must be one of core, personalized"),
    ("step_feature_pattern", _set(["steps", 3, "feature"], "bad feature!"), "steps[3].feature", "must match"),
    ("step_prereq_unknown", _set(["steps", 4, "prerequisites"], ["nope"]), "steps[4].prerequisites[0]",
     "unknown step 'nope'"),
    ("step_prereq_self", _set(["steps", 4, "prerequisites"], ["advanced_tip_automations"]),
     "steps[4].prerequisites[0]", "own prerequisite"),
    ("step_prereq_duplicate", _set(["steps", 4, "prerequisites"], ["welcome", "welcome"]),
     "steps[4].prerequisites[1]", "duplicate"),
    ("step_prereq_not_string", _set(["steps", 4, "prerequisites"], [1]), "steps[4].prerequisites[0]",
     "must be a string"),
    ("step_prereq_cycle", _cycle, "steps[1].prerequisites[0]",
     "cycle: welcome -> first_project -> profile_setup -> welcome"),
    ("step_cooldown_negative", _set(["steps", 3, "cooldown_hours"], -1), "steps[3].cooldown_hours", "must be >= 0"),
    ("step_cooldown_bool", _set(["steps", 3, "cooldown_hours"], True), "steps[3].cooldown_hours",
     "must be a number (got boolean)"),
    ("step_cooldown_nan", _set(["steps", 3, "cooldown_hours"], float("nan")), "steps[3].cooldown_hours",
     "must be finite"),
    ("step_max_per_day_zero", _set(["steps", 3, "max_per_day"], 0), "steps[3].max_per_day", "must be >= 1"),
    ("step_max_per_day_float", _set(["steps", 3, "max_per_day"], 1.5), "steps[3].max_per_day",
     "must be an integer (got float)"),
    ("step_success_event_pattern", _set(["steps", 3, "success_event"], "Step Completed"),
     "steps[3].success_event", "must match"),
    ("step_reward_window_zero", _set(["steps", 3, "reward_window_hours"], 0), "steps[3].reward_window_hours",
     "must be > 0"),
    ("step_default_reward_range", _set(["steps", 3, "default_reward"], 5000), "steps[3].default_reward",
     "must be <= 1000"),
    ("step_unknown_key", _set(["steps", 3, "chanel"], "in_app"), "steps[3].chanel", "did you mean 'channel'"),
    ("core_order_unknown", _set(["core", "order"], ["welcome", "nope"]), "core.order[1]", "unknown step 'nope'"),
    ("core_order_personalized", _personalize_invite, "core.order[1]",
     "step 'invite_team' is personalized, core steps must have kind = \"core\""),
    ("core_order_duplicate", _set(["core", "order"], ["welcome", "welcome"]), "core.order[1]", "duplicate"),
    ("core_step_not_in_order", _core_not_in_order, "steps[2].kind", "not listed in core.order"),
    ("core_unknown_key", _set(["core", "steps"], []), "core.steps", "unknown key"),
    ("guard_channel_unknown", _set(["guardrails", "max_per_day_per_channel", "sms"], 1),
     "guardrails.max_per_day_per_channel.sms", "must be one of in_app, email, push"),
    ("guard_channel_negative", _set(["guardrails", "max_per_day_per_channel", "email"], -1),
     "guardrails.max_per_day_per_channel.email", "must be >= 0"),
    ("guard_channel_not_table", _set(["guardrails", "max_per_day_per_channel"], 3),
     "guardrails.max_per_day_per_channel", "must be a table"),
    ("guard_total_negative", _set(["guardrails", "max_per_day_total"], -2), "guardrails.max_per_day_total",
     "must be >= 0"),
    ("guard_gap_type", _set(["guardrails", "min_gap_minutes"], "30"), "guardrails.min_gap_minutes",
     "must be a number (got string)"),
    ("guard_repeat_type", _set(["guardrails", "never_repeat_completed"], 1), "guardrails.never_repeat_completed",
     "must be true or false"),
    ("guard_exploration_range", _set(["guardrails", "max_exploration"], 1.5), "guardrails.max_exploration",
     "must be <= 1"),
    ("guard_min_sessions", _set(["guardrails", "min_sessions_for_personalization"], -1),
     "guardrails.min_sessions_for_personalization", "must be >= 0"),
    ("guard_min_days", _set(["guardrails", "min_distinct_days_for_personalization"], 2.5),
     "guardrails.min_distinct_days_for_personalization", "must be an integer"),
    ("guard_unknown_key", _set(["guardrails", "max_per_day"], 3), "guardrails.max_per_day", "unknown key"),
    ("rule_name_required", _del(["rules", 1, "name"]), "rules[1].name", "is required"),
    ("rule_name_duplicate", _dup_rule, "rules[3].name", "duplicate rule name"),
    ("rule_kind", _set(["rules", 0, "kind"], "feature_loved"), "rules[0].kind",
     "must be one of feature_explored, screens_skipped, returned_after_inactive"),
    ("rule_step_unknown", _set(["rules", 1, "step"], "advanced_tip_foo"), "rules[1].step",
     "unknown step 'advanced_tip_foo'"),
    ("rule_step_core", _set(["rules", 2, "step"], "welcome"), "rules[2].step", "core step"),
    ("rule_template_no_placeholder", _set(["rules", 0, "step_template"], "advanced_tip"), "rules[0].step_template",
     "must contain {feature}"),
    ("rule_template_other_braces", _set(["rules", 0, "step_template"], "tip_{feature}_{x}"),
     "rules[0].step_template", "no other braces"),
    ("rule_template_matches_nothing", _set(["rules", 0, "step_template"], "pro_{feature}"),
     "rules[0].step_template", "no personalized step matches"),
    ("rule_map_and_template", _both_map_and_template, "rules[0].steps", "not both"),
    ("rule_map_unknown_step", _set(["rules", 0], {"name": "x", "kind": "feature_explored",
                                                  "steps": {"reports": "advanced_tip_foo"}}),
     "rules[0].steps.reports", "unknown step 'advanced_tip_foo'"),
    ("rule_map_empty", _set(["rules", 0], {"name": "x", "kind": "feature_explored", "steps": {}}),
     "rules[0].steps", "at least one"),
    ("rule_threshold_zero", _set(["rules", 0, "threshold"], 0), "rules[0].threshold", "must be >= 1"),
    ("rule_inactive_threshold", _set(["rules", 2, "threshold"], 0), "rules[2].threshold", "must be > 0"),
    ("rule_feature_explored_has_no_step", _set(["rules", 0, "step"], "core_benefits"), "rules[0].step",
     "unknown key"),
    ("rule_priority_type", _set(["rules", 0, "priority"], "high"), "rules[0].priority", "must be an integer"),
    ("rule_unknown_key", _set(["rules", 1, "treshold"], 2), "rules[1].treshold", "did you mean 'threshold'"),
    ("rewards_window", _set(["rewards", "window_hours"], 0), "rewards.window_hours", "must be > 0"),
    ("rewards_unknown_key", _set(["rewards", "window"], 3), "rewards.window", "unknown key"),
    ("rewards_sweep_zero", _set(["rewards", "sweep_interval_seconds"], 0), "rewards.sweep_interval_seconds",
     "must be > 0 (got 0)"),
    ("rewards_sweep_negative", _set(["rewards", "sweep_interval_seconds"], -1), "rewards.sweep_interval_seconds",
     "must be > 0 (got -1)"),
    ("rewards_sweep_too_long", _set(["rewards", "sweep_interval_seconds"], 7200), "rewards.sweep_interval_seconds",
     "must be <= 3600 (got 7200)"),
    ("rewards_sweep_type", _set(["rewards", "sweep_interval_seconds"], "5s"), "rewards.sweep_interval_seconds",
     "must be a number (got string)"),
    ("rewards_sweep_bool", _set(["rewards", "sweep_interval_seconds"], True), "rewards.sweep_interval_seconds",
     "must be a number (got boolean)"),
    ("rewards_grace_negative", _set(["rewards", "grace_seconds"], -5), "rewards.grace_seconds",
     "must be >= 0 (got -5)"),
    ("rewards_grace_too_long", _set(["rewards", "grace_seconds"], 100_000), "rewards.grace_seconds",
     "must be <= 86400 (got 100000)"),
    ("rewards_grace_type", _set(["rewards", "grace_seconds"], "60"), "rewards.grace_seconds",
     "must be a number (got string)"),
    ("rewards_grace_nan", _set(["rewards", "grace_seconds"], float("nan")), "rewards.grace_seconds", "must be finite"),
    ("rewards_grace_typo", _set(["rewards", "grace_second"], 5), "rewards.grace_second",
     "did you mean 'grace_seconds'"),
    ("exp_shares_sum", _set(["experiments", 0, "arms", 2, "share"], 0.2), "experiments[0].arms",
     "shares must sum to 1 (got 1.1)"),
    ("exp_arm_kind", _set(["experiments", 0, "arms", 0, "kind"], "bandit"), "experiments[0].arms[0].kind",
     "must be one of tailored, generic, holdout"),
    ("exp_arm_kind_required", _arm_kind_required, "experiments[0].arms[0].kind", "is required"),
    ("exp_arm_share_range", _set(["experiments", 0, "arms", 0, "share"], -0.1), "experiments[0].arms[0].share",
     "must be >= 0"),
    ("exp_arm_duplicate", _dup_arm, "experiments[0].arms[1].name", "duplicate arm"),
    ("exp_arms_empty", _set(["experiments", 0, "arms"], []), "experiments[0].arms", "at least one arm"),
    ("exp_arm_unknown_key", _set(["experiments", 0, "arms", 0, "weight"], 1), "experiments[0].arms[0].weight",
     "unknown key"),
    ("exp_two_enabled", _two_enabled, "experiments[1].enabled", "at most one"),
    ("exp_duplicate_name", _dup_experiment, "experiments[1].name", "duplicate experiment"),
    ("exp_salt_type", _set(["experiments", 0, "salt"], 7), "experiments[0].salt", "must be a string"),
    ("seg_n_clusters", _set(["segments", "n_clusters"], 0), "segments.n_clusters", "must be >= 1"),
    ("seg_halflife", _set(["segments", "cluster_halflife"], 0), "segments.cluster_halflife", "must be > 0"),
    ("seg_advanced_type", _set(["segments", "advanced_features"], "api"), "segments.advanced_features",
     "must be an array"),
    ("seg_advanced_item", _set(["segments", "advanced_features"], ["api", 3]), "segments.advanced_features[1]",
     "must be a string"),
    ("seg_min_features", _set(["segments", "engaged_min_features"], 0), "segments.engaged_min_features",
     "must be >= 1"),
    ("seg_activation_step_unknown", _set(["segments", "activation_step"], "nope"), "segments.activation_step",
     "unknown step 'nope'"),
    ("seg_activation_step_wrong_event", _activation_feature_event, "segments.activation_step",
     "only applies when"),
    ("seg_activation_feature_wrong_event", _activation_feature_wrong_event, "segments.activation_feature",
     "only applies when"),
    ("seg_unknown_key", _set(["segments", "clusters"], 3), "segments.clusters", "did you mean 'n_clusters'"),
    ("bandit_algorithm", _set(["bandit", "algorithm"], "thompson"), "bandit.algorithm",
     "must be one of linucb, lints, ridge"),
    ("bandit_exploration", _set(["bandit", "exploration"], "softmax"), "bandit.exploration",
     "must be one of epsilon_greedy, squarecb"),
    ("bandit_epsilon_range", _set(["bandit", "epsilon"], 1.2), "bandit.epsilon", "must be <= 1"),
    ("bandit_epsilon_above_guardrail", _set(["bandit", "epsilon"], 0.5), "bandit.epsilon",
     "guardrails.max_exploration"),
    ("bandit_gamma", _set(["bandit", "gamma"], 0), "bandit.gamma", "must be > 0"),
    ("bandit_alpha", _set(["bandit", "alpha"], -1), "bandit.alpha", "must be >= 0"),
    ("bandit_l2", _set(["bandit", "l2"], 0), "bandit.l2", "must be > 0"),
    ("bandit_seed", _set(["bandit", "seed"], -3), "bandit.seed", "must be >= 0"),
    ("bandit_unknown_key", _set(["bandit", "epsilon_decay"], 0.9), "bandit.epsilon_decay", "unknown key"),
]


@pytest.mark.parametrize(("mutate", "key", "fragment"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_catalog_names_the_key(mutate: Callable[[dict[str, Any]], None], key: str, fragment: str) -> None:
    raw = demo_raw()
    mutate(raw)
    with pytest.raises(CatalogError) as info:
        parse_catalog(raw)
    err = info.value
    assert err.key == key, str(err)
    assert fragment in err.problem, str(err)
    assert str(err).startswith(f"{key}: ")


def test_step_indexes_in_invalid_cases_point_where_expected() -> None:
    # The table above relies on the demo's step order; keep it honest.
    raw = demo_raw()
    assert step_index(raw, "advanced_tip_automations") == 4
    assert raw["steps"][2]["id"] == "first_project"
    assert [r["kind"] for r in raw["rules"]] == ["feature_explored", "screens_skipped", "returned_after_inactive"]


def test_exact_message_for_bad_channel() -> None:
    raw = demo_raw()
    raw["steps"][3]["channel"] = "sms"
    with pytest.raises(CatalogError, match=re.escape("steps[3].channel: must be one of in_app, email, push (got 'sms')")):
        parse_catalog(raw)


def test_squarecb_epsilon_not_bound_by_guardrail() -> None:
    raw = demo_raw()
    raw["bandit"].update(exploration="squarecb", epsilon=0.5)
    assert parse_catalog(raw).bandit.exploration == "squarecb"


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    p = tmp_path / "broken.toml"
    p.write_text("[[steps]\nid = 1\n", encoding="utf-8")
    with pytest.raises(CatalogError) as info:
        load_catalog(p)
    assert info.value.key == str(p) and "invalid TOML" in info.value.problem


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        load_catalog(tmp_path / "nope.toml")


# ---------------------------------------------------------------------------------------------
# Version


def test_version_is_stable_across_loads_and_key_order() -> None:
    raw = demo_raw()
    v = parse_catalog(raw).version
    assert parse_catalog(demo_raw()).version == v
    reordered = {k: raw[k] for k in reversed(list(raw))}
    reordered["steps"] = [dict(reversed(list(s.items()))) for s in raw["steps"]]
    assert parse_catalog(reordered).version == v
    explicit = demo_raw()
    explicit["steps"][0]["success_event"] = "step_completed"  # the default, spelled out
    explicit["bandit"]["algorithm"] = "linucb"
    assert parse_catalog(explicit).version == v


@pytest.mark.parametrize(
    "mutate",
    [
        _set(["steps", 0, "title"], "Hello there"),
        _set(["bandit", "epsilon"], 0.05),
        _set(["guardrails", "max_per_day_total"], 5),
        _set(["rules", 0, "threshold"], 6),
        _set(["segments", "n_clusters"], 3),
        _set(["experiments", 0, "salt"], "new-salt"),
    ],
)
def test_version_changes_when_catalog_changes(mutate: Callable[[dict[str, Any]], None]) -> None:
    raw = demo_raw()
    v = parse_catalog(raw).version
    mutate(raw)
    assert parse_catalog(raw).version != v


def test_reward_sweep_timing_defaults_and_is_not_part_of_the_version() -> None:
    raw = demo_raw()
    del raw["rewards"]["sweep_interval_seconds"], raw["rewards"]["grace_seconds"]
    cat = parse_catalog(raw)
    assert (cat.rewards.sweep_interval_seconds, cat.rewards.grace_seconds) == (5.0, 60.0)  # the former constants
    assert cat.version == load_catalog(None).version
    raw["rewards"].update(sweep_interval_seconds=0.25, grace_seconds=0)  # zero grace is allowed
    timed = parse_catalog(raw)
    assert (timed.rewards.sweep_interval_seconds, timed.rewards.grace_seconds) == (0.25, 0.0)
    assert timed.version == cat.version  # timing only: decisions, logs and checkpoints keep their version
    assert timed.to_dict()["rewards"]["grace_seconds"] == 0.0


def test_to_dict_is_json_and_excludes_version() -> None:
    cat = load_catalog(None)
    d = cat.to_dict()
    assert "version" not in d
    assert json.loads(json.dumps(d))["core_order"] == list(cat.core_order)


# ---------------------------------------------------------------------------------------------
# Behaviour of the values


def test_step_success_matching() -> None:
    cat = load_catalog(None)
    welcome = cat.step("welcome")
    assert welcome.is_success("step_completed", step_id="welcome")
    assert not welcome.is_success("step_completed", step_id="profile_setup")
    assert not welcome.is_success("feature_used", feature="reports")
    tour = cat.step("integrations_tour")
    assert tour.is_success("feature_used", feature="integrations")
    assert not tour.is_success("feature_used", feature="reports")
    reeng = cat.step("re_engagement")
    assert reeng.is_success("session_start")
    assert cat.step("template_gallery").is_success("template_applied")


def test_experiment_assignment_is_deterministic_and_follows_shares() -> None:
    exp = load_catalog(None).active_experiment
    assert exp is not None
    first = [exp.assign(f"user-{i}").name for i in range(20_000)]
    assert first == [exp.assign(f"user-{i}").name for i in range(20_000)]
    counts = Counter(first)
    assert abs(counts["tailored"] / 20_000 - 0.45) < 0.02
    assert abs(counts["generic"] / 20_000 - 0.45) < 0.02
    assert abs(counts["holdout"] / 20_000 - 0.10) < 0.01


def test_experiment_salt_reshuffles_users() -> None:
    arms = (Arm("tailored", "tailored", 0.5), Arm("generic", "generic", 0.5))
    a = Experiment("e", arms, salt="one")
    b = Experiment("e", arms, salt="two")
    same = sum(a.assign(f"u{i}") == b.assign(f"u{i}") for i in range(2000))
    assert 800 < same < 1200  # independent halves agree about half the time


def test_catalog_is_frozen() -> None:
    cat = load_catalog(None)
    with pytest.raises(AttributeError):
        cat.version = "x"  # type: ignore[misc]
    assert isinstance(cat, Catalog)


# ---------------------------------------------------------------------------------------------
# The reference stays complete


def _documented_keys() -> set[str]:
    text = DOCS.read_text(encoding="utf-8")
    spans = re.findall(r"`([^`\n]+)`", text)
    return {word for span in spans for word in re.findall(r"[a-z][a-z0-9_]*", span)}


def _toml_keys(node: Any, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            out.add(k)
            _toml_keys(v, out)
    elif isinstance(node, list):
        for v in node:
            _toml_keys(v, out)
    return out


def test_docs_describe_every_key() -> None:
    documented = _documented_keys()
    cat = load_catalog(None)
    keys = _toml_keys(demo_raw(), set())
    # Every field of every section's dataclass is a TOML key of the same name, except these.
    from dataclasses import fields
    renamed = {"core_order": "order", "feature_steps": "steps"}
    for value in (cat.steps[0], cat.guardrails, cat.rules[0], cat.rewards, cat.experiments[0], cat.experiments[0].arms[0],
                  cat.segments, cat.bandit):
        for f in fields(value):
            keys.add(renamed.get(f.name, f.name))
    for section in ("steps", "core", "guardrails", "rules", "rewards", "experiments", "segments", "bandit"):
        keys.add(section)
    missing = sorted(k for k in keys if k not in documented)
    assert not missing, f"docs/catalog.md does not describe: {missing}"
