"""What every key of the config file means, section by section: the words of ``docs/config-reference.md``.

The keys themselves, their defaults and the sections' order come from the dataclasses the validators fill
(``server/ops/config_reference.py`` checks that every field of each dataclass is described here and every
key described here is a field); only the type, with its allowed range, and the meaning are written here.
"""
from __future__ import annotations

from dataclasses import dataclass

from server.api.auth import ApiKey, AuthConfig
from server.api.limits import LimitsConfig
from server.api.tls import TlsConfig
from server.base.catalog import Arm, BanditConfig, Experiment, Guardrails, Rewards, Rule, SegmentsConfig, Step
from server.base.config import IngestConfig, PrivacyConfig, ServerConfig
from server.base.logging_setup import LoggingConfig
from server.base.metrics import MetricsConfig

# Where a key's default comes from: the dataclass (a server setting, or a key of a [[...]] entry), or the
# parsed demo catalog (a catalog table: a key the config leaves out keeps the demo's value).
BUILT_IN = "built-in"
DEMO = "demo"


@dataclass(frozen=True, slots=True)
class Key:
    """One key: its TOML name, type (with the allowed values) and meaning. ``field`` names the dataclass field
    when it differs from the key; ``default`` replaces the shown default when the field's is not the whole
    story (it depends on another key, or on the platform)."""

    name: str
    type: str
    meaning: str
    field: str = ""
    default: str = ""


@dataclass(frozen=True, slots=True)
class Section:
    """One table of the file (``[server]``), an array of tables (``[[steps]]``) or a table inside one."""

    title: str
    cls: type | None
    defaults: str
    intro: str
    keys: tuple[Key, ...]
    demo_path: str = ""  # the Catalog attribute holding a DEMO section's values (e.g. "guardrails")


SERVER = Section("[server]", ServerConfig, BUILT_IN, "Where to listen, where the database lives, how many worker processes. "
                 "`onramp serve --host, --port, --db, --workers` override `host`, `port`, `db_path`, `workers`.", (
    Key("host", "string", "Address to listen on. A non-loopback address needs `[auth]` keys (or "
        "`--allow-insecure-no-auth`)."),
    Key("port", "integer 0-65535", "gRPC port; 0 = any free port."),
    Key("db_path", "string", "The SQLite database (WAL), created if missing."),
    Key("max_message_bytes", "integer: 0, or >= 1024", "Largest gRPC message received or sent; 0 keeps "
        "`[limits] max_message_bytes`."),
    Key("workers", "integer 0-1024", "gRPC worker processes sharing the port, run by one supervisor process "
        "(docs/operations.md, \"Worker processes\"); 0 (the default) = one per core. `onramp serve --workers` "
        "overrides it; with more than 1, a learner process runs beside them; 1 = one process that serves and learns."),
))

PRIVACY = Section("[privacy]", PrivacyConfig, BUILT_IN, "Where the key of the keyed pseudonyms comes from "
                  "(docs/security.md, \"The pseudonym key\"); the environment variable `ONRAMP_PSEUDONYM_KEY` "
                  "takes precedence over both keys.", (
    Key("pseudonym_key", "string of >= 16 characters", "The key itself. Not together with `pseudonym_key_file`."),
    Key("pseudonym_key_file", "string", "The key file; `\"\"` = `<db_path>.key`, generated (mode 0600) at the "
        "first start. Back it up with the database."),
))

INGEST = Section("[ingest]", IngestConfig, BUILT_IN, "Validation limits of events and the batching of commits.", (
    Key("max_id_chars", "integer >= 1", "Longest `user_id`, `anonymous_id`, `device_id`."),
    Key("max_event_id_chars", "integer >= 1", "Longest `event_id`."),
    Key("max_feature_chars", "integer >= 1", "Longest `feature`, `step_id`, `decision_id` of an event."),
    Key("max_properties", "integer >= 1", "Most `properties` entries per event."),
    Key("max_property_value_chars", "integer >= 1", "Longest property value (and `GetNextStep` context value)."),
    Key("max_future_skew_ms", "integer >= 0", "Events timed further ahead of the server's clock are rejected."),
    Key("max_batch_events", "integer >= 1", "Most events per `EventBatch`."),
    Key("commit_max_events", "integer >= 1", "`IngestEvents` hands events to the writer in groups of at most this "
        "many ..."),
    Key("commit_interval_ms", "integer >= 1", "... or after this long."),
    Key("writer_max_events", "integer >= 1", "Most events the writer groups into one transaction."),
    Key("max_inflight_batches", "integer >= 1", "`IngestEventBatches`: batches read ahead of their acks."),
    Key("synchronous", "`\"full\"` or `\"normal\"`", "SQLite `PRAGMA synchronous`: `full` survives power loss, "
        "`normal` may lose the last commits on power loss (not on a crash)."),
    Key("dedupe_window_hours", "integer >= 1", "Exactly once within this window of event time: an event whose "
        "`timestamp_ms` is at most this many hours before the server's clock is not stored again when its "
        "`event_id` was (a duplicate); an older one is stored without the check (a re-send of it is stored again "
        "and counted as `outside_window`). Default 7 days."),
))

LOGGING = Section("[logging]", LoggingConfig, BUILT_IN, "Logs go to stderr (docs/operations.md, \"Structured "
                  "logs\").", (
    Key("level", "`DEBUG`, `INFO`, `WARNING`, `ERROR` or `CRITICAL`", "Least severe level written (any case)."),
    Key("format", "`\"auto\"`, `\"json\"` or `\"text\"`", "`json`: one object per line; `text`: human-readable "
        "lines; `auto`: text when stderr is a terminal, else json."),
))

METRICS = Section("[metrics]", MetricsConfig, BUILT_IN, "The Prometheus endpoint (docs/operations.md, \"Metrics\").", (
    Key("enabled", "boolean", "Serve `/metrics` over HTTP; off, no extra port is opened."),
    Key("host", "string", "Address of the endpoint, which has no auth: keep it on loopback or behind a firewall."),
    Key("port", "integer 0-65535", "Port of the endpoint; 0 = any free port."),
    Key("dashboard", "boolean", "The operator's dashboard at `/dashboard` on the same port (docs/operations.md, "
        "\"The operator's dashboard\"); true without `[auth]` keys needs a loopback host.",
        default="on with [auth] keys or on a loopback host"),
))

AUTH = Section("[auth]", AuthConfig, BUILT_IN, "API keys and their roles (docs/security.md, \"API keys and "
               "roles\").", (
    Key("keys", "array of tables (below)", "The API keys: `{ name, hash, roles }` each."),
    Key("enabled", "boolean", "Enforce the keys. true needs at least one key.",
        default="true when `keys` lists any, else false"),
))

AUTH_KEY = Section("[auth] keys[i]", ApiKey, BUILT_IN, "One API key: only its hash is in the file.", (
    Key("name", "string, unique", "What logs, metrics and rate limits call the key."),
    Key("hash", "string", "`sha256:<64 hex>` (keys from `onramp hash-key --generate`), `pbkdf2_sha256:...` or "
        "`scrypt:...` (human-chosen keys): the output of `onramp hash-key`."),
    Key("roles", "non-empty array of `ingest`, `decide`, `admin`", "What the key may call."),
))

TLS = Section("[tls]", TlsConfig, BUILT_IN, "TLS and mutual TLS of the gRPC port (docs/security.md, \"TLS and "
              "mutual TLS\"). Files are read at start.", (
    Key("cert_file", "string", "PEM certificate chain (leaf first); with `key_file`, turns TLS on."),
    Key("key_file", "string", "PEM private key of the certificate."),
    Key("client_ca_file", "string", "PEM CA: clients must present a certificate it signed (mutual TLS)."),
))

LIMITS = Section("[limits]", LimitsConfig, BUILT_IN, "Rate and size limits (docs/security.md, \"Limits\"). A "
                 "caller is an API key's name, or the peer address without auth.", (
    Key("calls_per_second", "number >= 0", "Calls per caller per second; 0 = no limit."),
    Key("calls_burst", "number >= 0", "Bucket size of the calls limit; 0 = 2 x the rate."),
    Key("events_per_second", "number >= 0", "Streamed events per caller per second; 0 = no limit."),
    Key("events_burst", "number >= 0", "Bucket size of the events limit; 0 = 2 x the rate."),
    Key("auth_failures_per_second", "number >= 0", "Failed authentications per client host per second; 0 = no "
        "limit."),
    Key("auth_failures_burst", "number >= 0", "Bucket size of the failed-authentication limit."),
    Key("auth_failure_delay_ms", "integer 0-60000", "A failed authentication is answered 0.5-1.5 x this late."),
    Key("max_message_bytes", "integer >= 1024", "Largest gRPC message received or sent."),
    Key("max_tracked_callers", "integer >= 1", "Rate-limit buckets kept in memory per kind (least recently seen "
        "forgotten first)."),
))

STEPS = Section("[[steps]]", Step, BUILT_IN, "Every onboarding step, one table each, in catalog order "
                "(docs/catalog.md). A config's `[[steps]]` replace all the demo's steps.", (
    Key("id", "string `^[a-z][a-z0-9_]{0,63}$`, unique", "The step's id (`Step.id` of `GetNextStep`)."),
    Key("title", "non-empty string", "Human-readable title."),
    Key("channel", "`in_app`, `email` or `push`", "Where the step is delivered; a `GetNextStep` surface only "
        "gets steps of its channel."),
    Key("kind", "`core` or `personalized`", "`core`: static, in `core.order`, never chosen by the bandit; "
        "`personalized`: chosen by rules or the bandit."),
    Key("feature", "string (a feature name)", "The product feature the step is about (`feature_explored` rules, "
        "`success_event = \"feature_used\"`); `\"\"` = none."),
    Key("prerequisites", "array of step ids", "Steps to complete before this one may be shown (no cycles)."),
    Key("cooldown_hours", "number >= 0", "Not shown again for this long after being shown."),
    Key("max_per_day", "integer >= 1", "Shows of this step per user per day."),
    Key("success_event", "event name", "The event that rewards a decision that chose the step (a "
        "`step_completed` of this step, a `feature_used` of its feature, or any event of another name)."),
    Key("reward_window_hours", "number > 0", "How long after the decision a success counts.",
        default="`rewards.window_hours`"),
    Key("default_reward", "number in [-1000, 1000]", "Reward when the window closes without success.",
        default="`rewards.default_reward`"),
))

CORE = Section("[core]", None, DEMO, "The static core flow.", (
    Key("order", "array of step ids", "Core steps in the order everyone gets them; every step of kind `core`, and "
        "only those.", field="core_order"),
), demo_path=".")

GUARDRAILS = Section("[guardrails]", Guardrails, DEMO, "Limits that keep onboarding calm.", (
    Key("max_per_day_total", "integer >= 0", "Steps shown per user per day, all channels together."),
    Key("max_per_day_per_channel", "table channel -> integer >= 0", "Steps per user per day on each channel "
        "(`in_app`, `email`, `push`); a channel not listed is capped by `max_per_day_total` only."),
    Key("min_gap_minutes", "number >= 0", "Least time between two steps shown to a user."),
    Key("never_repeat_completed", "boolean", "A completed step is never shown again."),
    Key("max_exploration", "number in [0, 1]", "Bound on exploration: `bandit.epsilon` must not exceed it."),
    Key("min_sessions_for_personalization", "integer >= 0", "Personalise only after this many sessions ..."),
    Key("min_distinct_days_for_personalization", "integer >= 0", "... on this many distinct UTC days."),
), demo_path="guardrails")

RULES = Section("[[rules]]", Rule, BUILT_IN, "Behavioral triggers (docs/catalog.md, \"[[rules]]\"). A config's "
                "`[[rules]]` replace all the demo's; `rules = []` for none.", (
    Key("name", "string `^[a-z][a-z0-9_]{0,63}$`, unique", "Appears in the decision reason `rule:<name>`."),
    Key("kind", "`feature_explored`, `screens_skipped` or `returned_after_inactive`", "The trigger."),
    Key("priority", "integer", "Higher wins when several rules fire."),
    Key("threshold", "number", "Uses of one feature (integer >= 1), screens skipped (integer >= 1) or hours "
        "inactive (> 0), by kind.", default="5, 2 or 24 by kind"),
    Key("step", "step id", "The personalized step triggered (`screens_skipped`, `returned_after_inactive`).",
        default="`core_benefits` or `re_engagement` by kind"),
    Key("step_template", "string with `{feature}` once", "`feature_explored`: the step of feature F is the one "
        "with `feature = F` and this id with F filled in.", default="`\"advanced_tip_{feature}\"`"),
    Key("steps", "table feature -> step id", "`feature_explored`: an explicit map instead of `step_template`.",
        field="feature_steps", default="none"),
    Key("enabled", "boolean", "false keeps the rule without firing it."),
    Key("mode", "`propose` or `force`", "`propose`: the rule's step is boosted inside the bandit's distribution "
        "(reason `boosted:<name>:<step>`, exact propensity), measured against the bandit and demoted when "
        "significantly worse; `force`: the step is shown (reason `rule:<name>`, propensity 1)."),
    Key("boost", "number in (0, 1)", "`propose`: the mixture weight beta of the rule's step, "
        "p' = (1 - beta) p + beta onehot(step) (docs/decisions.md)."),
    Key("min_outcomes_to_demote", "integer >= 0", "`propose`: outcomes of the rule's decisions before the "
        "demotion test is first made (then at twice as many, ...); 0 = never demoted."),
))

REWARDS = Section("[rewards]", Rewards, DEMO, "Reward joining.", (
    Key("window_hours", "number > 0", "Default `reward_window_hours` of every step."),
    Key("default_reward", "number in [-1000, 1000]", "Default `default_reward` of every step."),
    Key("success_reward", "number in [-1000, 1000]", "Reward when a step's success event arrives in its window."),
    Key("sweep_interval_seconds", "number in (0, 3600]", "How often closed windows get the default reward."),
    Key("grace_seconds", "number in [0, 86400]", "How long after a window's end the sweep waits."),
), demo_path="rewards")

EXPERIMENTS = Section("[[experiments]]", Experiment, BUILT_IN, "A/B tests; at most one enabled. A config's "
                      "`[[experiments]]` replace all the demo's; `experiments = []` for none.", (
    Key("name", "string `^[a-z][a-z0-9_]{0,63}$`, unique", "Logged as `experiment` with every decision."),
    Key("arms", "array of tables (below)", "The arms; their shares sum to 1."),
    Key("salt", "string", "Salt of the assignment hash; changing it reshuffles everyone."),
    Key("enabled", "boolean", "Assign users and log the experiment."),
))

ARMS = Section("[[experiments]] arms[j]", Arm, BUILT_IN, "One arm of an experiment.", (
    Key("name", "string `^[a-z][a-z0-9_]{0,63}$`", "Unique within the experiment."),
    Key("kind", "`tailored`, `generic` or `holdout`", "Rules and bandit / the same generic flow for everyone / core "
        "steps only.", default="the `name`, when it is a kind; else required"),
    Key("share", "number in [0, 1]", "Fraction of users in the arm."),
))

SEGMENTS = Section("[segments]", SegmentsConfig, DEMO, "Segment thresholds, clustering and first value "
                   "(activation).", (
    Key("engaged_min_features", "integer >= 1", "Distinct features within `engaged_window_hours` for `engaged`."),
    Key("engaged_window_hours", "number > 0", "Window after the first event for `engaged`."),
    Key("power_user_window_hours", "number > 0", "Window for `power_user`."),
    Key("advanced_features", "array of feature names", "Features whose use makes a power user."),
    Key("n_clusters", "integer 1-32", "Online K-Means clusters."),
    Key("cluster_seed", "integer >= 0", "Seed of the initial cluster centres."),
    Key("cluster_halflife", "number in (0, 1]", "How far a centre moves toward each learned vector."),
    Key("learn_every_events", "integer >= 1", "A user's vector is learned at most once per session or this many "
        "events."),
    Key("activation_event", "event name", "The first-value event (activation model, `activated` segment)."),
    Key("activation_step", "step id", "With `activation_event = \"step_completed\"`: the step whose completion is "
        "first value; `\"\"` = none."),
    Key("activation_feature", "feature name", "With `activation_event = \"feature_used\"`: the feature (none = "
        "any)."),
    Key("activation_window_hours", "number > 0", "No first value this long after the first event makes a negative "
        "example."),
), demo_path="segments")

BANDIT = Section("[bandit]", BanditConfig, DEMO, "The contextual bandit.", (
    Key("algorithm", "`linucb`, `lints` or `ridge`", "Scoring of the eligible steps."),
    Key("alpha", "number >= 0", "Width of the confidence bonus (`linucb`) or posterior (`lints`)."),
    Key("l2", "number > 0", "Ridge regularisation of the per-step models."),
    Key("exploration", "`epsilon_greedy` or `squarecb`", "How the exact probabilities are formed."),
    Key("epsilon", "number in [0, 1], <= `guardrails.max_exploration`", "Exploration mass of `epsilon_greedy`."),
    Key("gamma", "number > 0", "Greediness of `squarecb`."),
    Key("half_life_days", "number >= 0",
        "A rewarded decision counts half as much this many days after it was made (0: never forget)."),
    Key("noise_sd", "number >= 0", "`linucb`: the bonus is on the predictive sd of a Bayesian linear regression with "
        "this noise sd, `alpha * (sqrt(noise_sd^2 + x'A^-1x) - noise_sd)` (0: the classic `alpha * sqrt(x'A^-1x)`)."),
    Key("change_z", "number >= 0", "Change detection: a step's statistics are reset when the weighted mean of its "
        "prediction residuals is this many standard errors from 0 (0: off); the variance is the larger of the "
        "window's and that over twice the window, so a run of failures at a rare reward is not a change."),
    Key("change_window", "number >= 1", "Observations of a step that the change test weighs (exponentially)."),
    Key("seed", "integer >= 0", "Seed of the random draws."),
), demo_path="bandit")

SECTIONS: tuple[Section, ...] = (SERVER, PRIVACY, INGEST, LOGGING, METRICS, AUTH, AUTH_KEY, TLS, LIMITS, STEPS,
                                 CORE, GUARDRAILS, RULES, REWARDS, EXPERIMENTS, ARMS, SEGMENTS, BANDIT)
