"""Backfill: score a range of dates with bounded concurrency, skipping dates already scored."""

from __future__ import annotations

from datetime import date, timedelta

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.nightly_scoring import nightly_scoring
from flows.params import BackfillParams, ScoreParams
from flows.runners import quiet_worker_thread_timeouts
from riskmodel import registry
from riskmodel.clock import not_after_today
from riskmodel.schema import require_current_schema
from riskmodel.served import scored_dates
from tasks.context import settings_and_spec
from tasks.data import extract_task


@task(name="score-date", cache_policy=NO_CACHE)
def score_date_task(score_date: date) -> dict:
    """One date's nightly scoring as a subflow (the lake is already current)."""
    return nightly_scoring(ScoreParams(score_date=score_date, extract=False, shadow=False))


@flow(name="backfill", log_prints=False)
def backfill(params: BackfillParams) -> dict:
    """Score every date in [start, end]; dates the champion already scored are skipped unless forced."""
    quiet_worker_thread_timeouts()
    logger = get_run_logger()
    settings, _ = settings_and_spec()
    not_after_today("end", params.end, settings.tz)
    require_current_schema(settings)
    champion = registry.champion_version(settings)
    if champion is None:
        raise registry.RegistryError("no champion model is registered: train one first")
    days = [params.start + timedelta(days=i) for i in range((params.end - params.start).days + 1)]
    done = set() if params.force else set(scored_dates(settings, champion, params.start, params.end))
    todo = [d for d in days if d not in done]
    logger.info("backfill %s..%s: %d to score, %d already scored by %s",
                params.start, params.end, len(todo), len(days) - len(todo), champion)
    if todo:
        extract_task(params.end)
    results: list[dict] = []
    for i in range(0, len(todo), params.max_parallel):
        futures = [score_date_task.submit(d) for d in todo[i:i + params.max_parallel]]
        results += [f.result() for f in futures]
    return {"champion": champion, "scored": [r["score_date"] for r in results],
            "skipped": sorted(d.isoformat() for d in done & set(days)),
            "rows": sum(r["accounts_scored"] for r in results)}
