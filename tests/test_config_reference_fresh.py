"""docs/config-reference.md is generated from the config dataclasses (server/ops/config_reference.py): the
committed file must match, every section the config accepts must be in it, and every key it lists must be
accepted by the real validators with the default it shows. Fix: `make config-docs`."""
from __future__ import annotations

import pathlib
from typing import Any

import pytest

from server.api.serving import OpsConfig
from server.base.catalog import catalog_from_config, load_catalog
from server.base.config import parse_config
from server.ops.config_keys import BUILT_IN, SECTIONS, Key, Section
from server.ops.config_reference import REQUIRED, default_value, problems, render, top_level

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "config-reference.md"
DEMO = load_catalog(None)


def test_the_committed_reference_is_fresh() -> None:
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/config-reference.md is stale: run `make config-docs` and commit the result")


def test_every_section_and_field_is_described() -> None:
    assert problems() == []


def _toml(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_toml(v) for v in value]
    if isinstance(value, dict):
        return {k: _toml(v) for k, v in value.items()}
    return value


def _shown_defaults(section: Section) -> dict[str, Any]:
    """The keys of a table section with the default the reference shows (those it shows as a value)."""
    out = {}
    for key in section.keys:
        value = default_value(section, key, DEMO)
        if not key.default and value is not REQUIRED and value is not None:
            out[key.name] = _toml(value)
    return out


TABLES = [s for s in SECTIONS if " " not in s.title and not s.title.startswith("[[")]


@pytest.mark.parametrize("section", TABLES, ids=[s.title for s in TABLES])
def test_the_validators_accept_every_key_with_the_default_shown(section: Section) -> None:
    values = _shown_defaults(section)
    assert values, section.title
    document = {top_level(section): values}
    config = parse_config(document)
    catalog = catalog_from_config(config.raw)
    ops = OpsConfig.from_mapping(config.raw)
    if section.defaults != BUILT_IN:
        assert catalog == DEMO  # the demo's own values change nothing
        return
    name = top_level(section)
    parsed = getattr(config, name) if name in ("server", "privacy", "ingest") else getattr(ops, name)
    for key in section.keys:
        if key.name in values:
            assert _toml(getattr(parsed, key.field or key.name)) == values[key.name], key.name


def test_a_key_added_to_a_dataclass_without_a_meaning_is_reported() -> None:
    first = SECTIONS[0]
    fewer = Section(first.title, first.cls, first.defaults, first.intro, first.keys[1:])
    extra = Section(first.title, first.cls, first.defaults, first.intro, (*first.keys, Key("nope", "string", "x")))
    assert problems((fewer, *SECTIONS[1:])) == [
        f"[server] {first.keys[0].name}: a field of ServerConfig without a meaning in server/ops/config_keys.py"]
    assert problems((extra, *SECTIONS[1:])) == [
        "[server] nope: described in server/ops/config_keys.py, but ServerConfig has no such field"]
    assert problems(SECTIONS[1:])[0] == ("[server]: a top-level section the config accepts, without a section in "
                                         "server/ops/config_keys.py")
