"""GetNextStep: guardrails, core flow, rules, experiments and the bandit."""
