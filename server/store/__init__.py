"""Durable state: the SQLite store, the writer, the decision log, per-user state, the learner's feeds and snapshots, pseudonyms."""
