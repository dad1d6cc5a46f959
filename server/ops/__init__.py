"""The process: app wiring, CLI, dashboard, health check."""
