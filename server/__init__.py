"""Onramp server: the gRPC service and everything stateful (event log, consent, identity,
profiles, decision log, reward joining, config, CLI)."""
