"""Wrote tests/server/data/event_log_v1.db with Onramp's code at main b6789c1 (the unique event_id index), kept to show how:
``git archive b6789c1 server | tar -x -C /tmp/v1 && PYTHONPATH=/tmp/v1 python tests/server/data/make_event_log_v1.py event_log_v1.db``."""
import sys
from server.base.records import StoredEvent
from server.store.sqlite import SqliteStore, ConsentRow
out = sys.argv[1]
s = SqliteStore(out)
T = 1_764_806_400_000  # 2025-12-04 00:00 UTC
evs = []
for i in range(40):
    subj = f"u{i % 4}" if i % 5 else f"anon:v{i % 3}"
    evs.append(StoredEvent(f"ev-{i:03d}", subj, "feature_used", T + i * 3_600_000, T + i * 3_600_000 + 5,
                           user_id="" if subj.startswith("anon:") else subj,
                           anonymous_id=subj[5:] if subj.startswith("anon:") else "", feature=f"f{i % 3}",
                           properties={"n": str(i)} if i % 2 else {}))
s.begin()
s.append_events(evs)
for u in ("u0", "u1", "u2", "u3"):
    s.set_consent(ConsentRow(u, "tracking", True, "fixture", T), T)
s.link_alias("anonymous_id", "v1", "u1", T)
s.commit()
s.close()
print(len(evs))
