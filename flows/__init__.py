"""Prefect flows (orchestration only) and the `riskflow` command line."""
