"""The friendly client against the real server: 10,000 tracked events all acknowledged and stored once,
also when the same events are sent again."""
from __future__ import annotations

import sqlite3

from onramp_client import OnrampClient
from server.ops.app import ServerHandle


def test_ten_thousand_events_through_the_client(server: ServerHandle) -> None:
    with OnrampClient(server.address, batch_size=500, timeout=30) as client:
        client.set_consent("cli-user", purpose="tracking", granted=True)
        ids = [client.track("feature_used", user_id="cli-user", feature=f"f{i % 5}", channel="web",
                            properties={"i": str(i)}, block=True) for i in range(10_000)]
        first = client.flush(timeout=120)
        assert first.accepted == 10_000 and first.duplicates == 0 and not first.rejected
        for i, event_id in enumerate(ids[:3_000]):  # a producer re-sending what it already sent
            client.track("feature_used", user_id="cli-user", feature=f"f{i % 5}", event_id=event_id, block=True)
        again = client.flush(timeout=120)
        assert again.accepted == 0 and again.duplicates == 3_000
        profile = client.get_profile("cli-user")
        assert profile.event_count == 10_000
    with sqlite3.connect(f"file:{server.db_path}?mode=ro", uri=True) as conn:
        stored = [r[0] for r in conn.execute("SELECT event_id FROM events")]
    assert len(stored) == 10_000 and set(stored) == set(ids)
