"""Laying one parsed TOML document over another, key by key, and asking which document a key came from.

A config file overrides the shipped demo catalog this way (server/base/catalog.py, ``catalog_from_config``):
tables merge recursively; every other value replaces the base's whole, arrays included, so an array of
tables such as ``[[steps]]`` replaces the demo's list rather than being appended to or merged entry by entry.

>>> base = {"guardrails": {"max_per_day_total": 4, "min_gap_minutes": 30}, "steps": [{"id": "a"}, {"id": "b"}]}
>>> merged = merge_tables(base, {"guardrails": {"max_per_day_total": 2}, "steps": [{"id": "c"}]})
>>> merged["guardrails"], merged["steps"]
({'max_per_day_total': 2, 'min_gap_minutes': 30}, [{'id': 'c'}])
>>> has_key({"guardrails": {"max_per_day_total": 2}}, "guardrails.min_gap_minutes")
False
>>> set_keys({"guardrails": {"max_per_day_total": 2, "max_per_day_per_channel": {"push": 0}}, "steps": []})
['guardrails.max_per_day_total', 'guardrails.max_per_day_per_channel.push', 'steps']
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_PART = re.compile(r"[^.\[\]]+|\[\d+\]")


def merge_tables(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``: where both hold a table the tables merge (recursively), anywhere else
    the override's value wins whole. Neither argument is changed."""
    out: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out


def has_key(document: Mapping[str, Any], path: str) -> bool:
    """Whether ``document`` holds the key at ``path`` (``steps[3].channel``, ``guardrails.min_gap_minutes``)."""
    node: Any = document
    for part in _PART.findall(path):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(node, list) or index >= len(node):
                return False
            node = node[index]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return False
    return True


def set_keys(document: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The paths of every value ``document`` sets, tables walked into (an array counts as one value)."""
    out: list[str] = []
    for key, value in document.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.extend(set_keys(value, path))
        else:
            out.append(path)
    return out
