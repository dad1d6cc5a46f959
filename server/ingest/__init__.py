"""Ingestion and per-user data: identity, consent gate, profiles, erasure and export."""
