"""`riskflow score`, `riskflow backfill`, `riskflow train`: run the flows from the command line."""

from __future__ import annotations

import argparse

from flows.commands.args import DATE_METAVAR, iso_date, ordered, preflight, show_defaults
from flows.ephemeral import api_started_early
from flows.output import emit, table
from flows.params import RetrainParams

_RETRAIN = {name: field.default for name, field in RetrainParams.model_fields.items()}


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Add `score`, `backfill` and `train`."""
    score = sub.add_parser("score", parents=[common], help="run the nightly scoring flow for a date")
    score.add_argument("--date", type=iso_date, metavar=DATE_METAVAR,
                       help="score date D (default: yesterday, business zone)")
    score.add_argument("--device", choices=["auto", "cpu", "cuda"],
                       help="inference device (default: RISKFLOW_DEVICE, which defaults to auto)")
    score.add_argument("--no-extract", action="store_true", help="score from the lake as it is")
    score.add_argument("--no-shadow", action="store_true", help="do not score a challenger")
    score.set_defaults(func=run_score)

    back = sub.add_parser("backfill", parents=[common], help="score a range of dates")
    back.add_argument("--start", type=iso_date, required=True, metavar=DATE_METAVAR, help="first date")
    back.add_argument("--end", type=iso_date, required=True, metavar=DATE_METAVAR, help="last date")
    back.add_argument("--force", action="store_true", help="rescore dates already scored")
    back.add_argument("--max-parallel", type=int, default=2,
                      help="dates scored at the same time")
    back.set_defaults(func=run_backfill)

    train = sub.add_parser("train", parents=[common], help="run the retrain flow")
    train.add_argument("--as-of", type=iso_date, metavar=DATE_METAVAR,
                       help="labels known up to this date (default yesterday)")
    train.add_argument("--train-days", type=int, default=_RETRAIN["train_days"],
                       help="days of training cutoffs before the validation and test windows")
    train.add_argument("--every", type=int, default=_RETRAIN["cutoff_every_days"],
                       help="days between the LSTM's training snapshots and the validation/test ones")
    train.add_argument("--epochs", type=int, default=_RETRAIN["epochs"], help="most LSTM epochs")
    train.add_argument("--hidden", type=int, default=_RETRAIN["hidden_size"], help="LSTM hidden size")
    train.add_argument("--max-embedded-cardinality", type=int, default=_RETRAIN["max_embedded_cardinality"],
                       help="event categoricals with more values (merchant ids) get no embedding")
    train.add_argument("--aggregate-dropout", type=float, default=_RETRAIN["aggregate_dropout"],
                       help="share of training rows whose aggregates the LSTM does not see")
    train.add_argument("--ema-decay", type=float, default=_RETRAIN["ema_decay"],
                       help="decay of the moving average of the LSTM's weights that is validated and kept")
    train.add_argument("--max-pos-weight", type=float, default=_RETRAIN["max_pos_weight"],
                       help="most weight of a positive training row in the LSTM's loss")
    train.add_argument("--max-train-minutes", type=float, default=_RETRAIN["max_train_minutes"],
                       help="each LSTM's training budget (the challenger and the ablation train at once)")
    train.add_argument("--seed", type=int, default=_RETRAIN["seed"], help="random seed")
    train.add_argument("--promote", choices=["if_better", "always", "never"], default="if_better",
                       help="promote the new model if it beats the champion, always, or never")
    train.add_argument("--margin", type=float, default=0.0, help="AP margin to beat the champion by")
    train.add_argument("--negative-keep", type=float, default=_RETRAIN["negative_keep"],
                       help="share of negative training rows kept (positives always kept)")
    train.add_argument("--baseline-every", type=int, default=_RETRAIN["baseline_cutoff_every_days"],
                       help="days between the LightGBM baseline's training snapshots")
    train.add_argument("--baseline-negative-keep", type=float, default=_RETRAIN["baseline_negative_keep"],
                       help="share of negative rows kept in the baseline's training snapshots")
    train.add_argument("--no-ablation", action="store_true", help="skip the order-shuffled ablation")
    train.add_argument("--no-blend", action="store_true",
                       help="serve the LSTM alone instead of its blend with the LightGBM baseline")
    train.set_defaults(func=run_train)
    for parser in (score, back, train):
        show_defaults(parser)


def run_score(args: argparse.Namespace) -> int:
    """Run `nightly_scoring` once and print its summary."""
    preflight({"--date": args.date})
    with api_started_early():
        from flows.nightly_scoring import input_line, monitoring_lines, movers_table, nightly_scoring
        from flows.params import ScoreParams

    summary = nightly_scoring(ScoreParams(score_date=args.date, device=args.device,
                                          extract=not args.no_extract, shadow=not args.no_shadow))
    rows = [{"stage": k, "seconds": round(v, 2)} for k, v in summary["timings_s"].items()]
    text = (f"scored {summary['accounts_scored']} accounts for {summary['score_date']} with "
            f"{summary['model_version']} ({summary['scoring']}); bands {summary['bands']}; alerts: "
            f"{summary['alerts'] or 'none'}\ninputs: {input_line(summary['inputs'])}\n"
            + "".join(f"{line}\n" for line in monitoring_lines(summary))
            + f"{table(rows)}\ntop movers since the previous scored night:\n"
            + movers_table(summary["movers"]))
    emit(args.json, summary, text)
    return 0


def run_backfill(args: argparse.Namespace) -> int:
    """Run the backfill flow over [start, end]."""
    ordered("--start", args.start, "--end", args.end)
    preflight({"--end": args.end})
    with api_started_early():
        from flows.backfill import backfill
        from flows.params import BackfillParams

    result = backfill(BackfillParams(start=args.start, end=args.end, force=args.force,
                                     max_parallel=args.max_parallel))
    text = (f"backfill with {result['champion']}: scored {len(result['scored'])} date(s), "
            f"skipped {len(result['skipped'])}, {result['rows']} rows")
    emit(args.json, result, text)
    return 0


def blend_line(weight: float | None) -> str:
    """The served blend's LSTM weight as a line of the train report (nothing for an LSTM-only model)."""
    if weight is None:
        return ""
    return f"LSTM weight in the served blend: {weight:.1f} (chosen on validation; 0 = LightGBM alone)\n"


def evaluation_window_line(result: dict) -> str:
    """The test window's size and the served model's AP with its interval: how far to trust the table."""
    ap = result["intervals"]["model"]["average_precision"]
    return (f"test window: {result['test_rows']} rows, {result['test_positives']} positives; served model AP "
            f"{ap['value']:.3f} [{ap['lo']:.3f}, {ap['hi']:.3f}] (95% account bootstrap)\n")


def run_train(args: argparse.Namespace) -> int:
    """Run the retrain flow and print the evaluation table."""
    preflight({"--as-of": args.as_of})
    with api_started_early():
        from flows.retrain import retrain

    result = retrain(RetrainParams(
        as_of=args.as_of, train_days=args.train_days, cutoff_every_days=args.every,
        epochs=args.epochs, hidden_size=args.hidden, max_train_minutes=args.max_train_minutes,
        max_embedded_cardinality=args.max_embedded_cardinality, aggregate_dropout=args.aggregate_dropout,
        ema_decay=args.ema_decay, max_pos_weight=args.max_pos_weight,
        seed=args.seed, promote_policy=args.promote, min_ap_margin=args.margin,
        negative_keep=args.negative_keep, baseline_cutoff_every_days=args.baseline_every,
        baseline_negative_keep=args.baseline_negative_keep,
        run_ablation=not args.no_ablation, blend_baseline=not args.no_blend))
    text = (f"model {result['version']} registered as {result['status']} ({result['reason']})\n"
            f"split: {result['split']}\nbaseline training cutoffs: {len(result['baseline_train'])} "
            f"({result['baseline_train'][0]} to {result['baseline_train'][-1]})\n"
            f"{evaluation_window_line(result)}{blend_line(result['blend_weight'])}{table(result['evaluation_rows'])}\n"
            f"curves: {', '.join(result['curves']) or 'none'}")
    emit(args.json, result, text)
    return 0
