"""Pure decision logic for Onramp: policies, exploration with exact probabilities, guardrails and
off-policy estimators. Depends on numpy only; never on gRPC or SQL."""
