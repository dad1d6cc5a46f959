"""The process: app wiring, CLI, checkpoints, health check."""
