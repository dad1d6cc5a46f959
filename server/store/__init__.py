"""Durable state: the SQLite store, the single writer, the decision log, pseudonyms, checkpoint files."""
