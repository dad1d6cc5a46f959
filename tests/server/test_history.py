"""The shown history: shows kept sorted and bounded per (user, step); merging an identified visitor's shows
into the user's; forgetting a user (erasure)."""
from __future__ import annotations

from server.decide.history import ShownHistory


def test_merge_moves_the_visitors_shows_into_the_users_sorted_and_bounded() -> None:
    h = ShownHistory(keep=3)
    h.record("user", "welcome", 10)
    h.record("user", "welcome", 40)
    h.record("anon", "welcome", 20)
    h.record("anon", "welcome", 30)
    h.record("anon", "tour", 5)
    assert h.merge("anon", "user") == 3
    assert dict(h.of("user")) == {"welcome": [20, 30, 40], "tour": [5]}  # the latest 3 of welcome
    assert dict(h.of("anon")) == {} and len(h) == 1
    assert h.merge("anon", "user") == 0  # nothing left to move
    assert h.merge("user", "user") == 0 and dict(h.of("user"))["welcome"] == [20, 30, 40]


def test_merge_into_a_user_without_shows_and_forget() -> None:
    h = ShownHistory()
    h.record("anon", "welcome", 7)
    assert h.merge("anon", "user") == 1
    assert dict(h.of("user")) == {"welcome": [7]}
    assert h.forget("user") and not h.forget("user")
    assert len(h) == 0 and dict(h.of("user")) == {}
