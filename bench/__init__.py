"""Onramp benchmarks: serving (GetNextStep vs a bare server), ingest, learning quality, bandit speed and
server memory/restart. Run ``python -m bench [serving|ingest|learning|speed|memory|all] [--quick]``."""
