"""Shared words: event records, config and catalog parsing, metrics, logging."""
