"""Prefect tasks: retries, timeouts and artifacts around `riskmodel` calls."""
