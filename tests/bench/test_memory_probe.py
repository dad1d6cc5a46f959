"""The memory probe's walk: deep sizes count each object once, stop at functions/modules/locks, and expand
Onramp's own objects into their attributes."""
from __future__ import annotations

import sys
import threading

from bench.memory_probe import breakdown, deep_size, malloc_info
from server.base.records import StoredEvent
from server.ingest.profiles import ProfileBook


def test_deep_size_counts_shared_objects_once_and_skips_functions_and_locks() -> None:
    shared = "x" * 1000
    seen: set[int] = set()
    a_bytes, a_objs = deep_size([shared, shared], seen)
    assert a_objs == 2 and a_bytes == sys.getsizeof([shared, shared]) + sys.getsizeof(shared)
    b_bytes, b_objs = deep_size({"k": shared}, seen)  # "x"*1000 already counted in the first walk
    assert b_objs == 2 and b_bytes == sys.getsizeof({"k": shared}) + sys.getsizeof("k")
    c_bytes, _ = deep_size([len, sys, threading.Lock()], set())
    assert c_bytes == sys.getsizeof([len, sys, threading.Lock()])


def test_breakdown_expands_own_objects_and_attributes_profile_growth_to_the_profile_dict() -> None:
    book = ProfileBook()
    small = breakdown([("profiles", book)])
    for i in range(200):
        book.apply(StoredEvent(f"e{i}", f"user{i}", "feature_used", 1000 + i, 1000 + i, feature="reports"))
    rows = {r["part"]: r for r in breakdown([("profiles", book)])}
    grown = [name for name, r in rows.items() if r["bytes"] > 200 * 500]
    assert grown and all(name.startswith("profiles.") for name in grown)
    assert any(r.get("len") == 200 for r in rows.values())
    assert sum(r["bytes"] for r in rows.values()) > sum(r["bytes"] for r in small) + 200 * 500


def test_malloc_info_reports_heap_in_use() -> None:
    info = malloc_info()
    if info:  # glibc only
        assert info["in_use"] > 0 and info["free_held"] >= 0
