"""`riskflow demo`: the whole story on the embedded database, from nothing, in a few minutes.

Seeds a small synthetic bank ending yesterday, trains a champion (retrain flow), scores the
last date (nightly flow), prints the ten riskiest accounts with bands and reasons, and the SQL
to look further.
"""

from __future__ import annotations

import argparse
import time

from psycopg import sql

from flows.commands.args import show_defaults
from flows.commands.seed import reseed
from flows.ephemeral import api_started_early
from flows.output import emit, table
from riskmodel.clock import yesterday
from riskmodel.db import database_url, redact
from tasks.context import settings_and_spec

NEXT_STEPS_SQL = """\
-- the latest score of every account
SELECT * FROM {schema}.latest_scores ORDER BY risk_score DESC LIMIT 20;
-- how many accounts per band, per night
SELECT * FROM {schema}.band_counts ORDER BY score_date DESC, risk_band;
-- one account's history
SELECT * FROM {schema}.account_history({account});"""


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `demo`."""
    p = sub.add_parser("demo", parents=[common],
                       help="initialise the database, seed a small bank, train, score, report")
    p.add_argument("--accounts", type=int, default=4000, help="accounts in the synthetic bank")
    p.add_argument("--days", type=int, default=240, help="days of history")
    p.add_argument("--seed", type=int, default=7, help="random seed of the bank and the model")
    p.add_argument("--epochs", type=int, default=4, help="most LSTM epochs")
    p.add_argument("--max-train-minutes", type=float, default=1.5, help="each LSTM's training budget")
    show_defaults(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run each demo step in order and print what it did (Prefect's temporary API starts while the
    bank is seeded)."""
    with api_started_early():
        from flows.nightly_scoring import nightly_scoring
        from flows.params import RetrainParams, ScoreParams
        from flows.retrain import retrain
        from riskmodel.served import top_accounts

        settings, spec = settings_and_spec()
        started = time.perf_counter()
        end = yesterday(settings.tz)
        steps = [f"database: {redact(database_url(settings))}"]
        report, seeded, lake_line = reseed(settings, spec, accounts=args.accounts, days=args.days,
                                           end_date=end, seed=args.seed)
        steps.append(f"db init: schema {report.schema!r} ({', '.join(report.files)})")
        steps.append(f"seed: {seeded.rows['transactions']} transactions of {args.accounts} accounts over "
                     f"{args.days} days to {end}; {lake_line}")
    trained = retrain(RetrainParams(as_of=end, train_days=min(150, args.days - 60), epochs=args.epochs,
                                    max_train_minutes=args.max_train_minutes, seed=args.seed))
    aps = {k: f"{v['average_precision']:.3f}" for k, v in trained["evaluation"].items()}
    served_ap = trained["intervals"]["model"]["average_precision"]
    steps.append(f"train: model {trained['version']} is {trained['status']} ({trained['reason']}); "
                 f"test AP {aps['model']} [{served_ap['lo']:.3f}, {served_ap['hi']:.3f}] on "
                 f"{trained['test_positives']} positives (LSTM alone {aps.get('lstm', aps['model'])}, "
                 f"LightGBM alone {aps['baseline']}; LSTM weight in the blend {trained['blend_weight']}); "
                 f"ROC, precision-recall and calibration curves in {settings.reports / trained['version']}")
    scored = nightly_scoring(ScoreParams(score_date=end))
    steps.append(f"score: {scored['accounts_scored']} accounts for {end} ({scored['scoring']}), "
                 f"bands {scored['bands']}")
    top = top_accounts(settings, end, 10)
    rows = [{"account_id": r["account_id"], "risk_score": round(r["risk_score"], 4),
             "band": r["risk_band"], "reasons": "; ".join(r["reason_codes"])} for r in top]
    account = str(top[0]["account_id"]) if top else "1"
    schema = sql.Identifier(settings.db_schema).as_string(None)
    sql_hint = NEXT_STEPS_SQL.format(schema=schema,
                                     account=sql.Literal(account).as_string(None))
    seconds = time.perf_counter() - started
    text = "\n".join(steps + ["", f"The ten riskiest accounts on {end}:", table(rows), "",
                              "Look further with SQL (psql, or any client):", sql_hint, "",
                              f"demo finished in {seconds:.0f} s; "
                              f"scores for {end} are in {schema}.risk_scores"])
    emit(args.json, {"steps": steps, "top": rows, "train": trained["evaluation"],
                     "seconds": round(seconds, 1)}, text)
    return 0
