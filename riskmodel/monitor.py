"""Nightly monitoring: drift (PSI) of the score and of each feature group, band counts against the
previous night, and realised performance once labels have matured.

Reference distributions are built at training time by `reference_distributions` and stored in
the model manifest: fixed bins (quantile edges for numeric values, top ids for categorical
ones) so that tonight's population is binned exactly like the reference population. The
retrain builds the reference from the model's validation and out-of-time test windows (full base
rate; the training shards have most negatives sampled away), see `tasks.training.drift_reference`.

The reference also keeps each of those windows' nights (cutoffs) binned the same way, and for the
features also the nights of the training snapshots of an out-of-time retrain
(`add_training_nights`); tonight counts as
drifted only when it is unlike the window pooled and unlike every one of those nights: features
with a payroll or weekly cycle (the largest amount of the last 7 days peaks after pay day) differ
from the pooled window on some nights of every month without the population moving, and the
training nights, every few days over months, meet each phase of that cycle.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from psycopg import sql

from riskmodel.batch import SequenceBatch
from riskmodel.db import connect
from riskmodel.errors import ConfigError
from riskmodel.metrics import average_precision, bootstrap_metrics, roc_auc
from riskmodel.reasons import GROUP_LABELS, feature_groups
from riskmodel.settings import Settings
from riskmodel.spec import FeatureSpec

PSI_ALERT = 0.25
# Bootstrap draws behind a realised metric's interval: 100 take about 2 s for 100k scored accounts.
REALISED_BOOT = 100
EPSILON = 1e-4
# A reference night needs this many rows for its bin shares to be worth comparing with, and the
# reference keeps at most this many of the latest nights (a month covers pay-day cycles).
MIN_NIGHT_ROWS = 1000
MAX_NIGHTS = 31
# Training snapshots keep a tenth of a night's negatives, so their nights are smaller; PSI's noise
# at 300 rows (about 9/300 for 10 bins) stays far below the alert level.
MIN_TRAINING_NIGHT_ROWS = 300
TRAINING_NIGHT = "{} (training)"
WINDOW = "all reference nights pooled"
# Decimals a stored night's bin shares keep: rounding moves a PSI by far less than EPSILON does, and
# the manifest, which keeps dozens of nights for each of ~80 columns, shrinks by half.
SHARE_DECIMALS = 6
CATEGORICAL_PARTS = ("cat", "static_cat")
OTHER = -1


def psi(expected: np.ndarray, actual: np.ndarray, eps: float = EPSILON) -> float:
    """Population stability index of two bin-share vectors; empty bins count as `eps`."""
    e = np.maximum(np.asarray(expected, np.float64), eps)
    a = np.maximum(np.asarray(actual, np.float64), eps)
    if e.shape != a.shape:
        raise ConfigError(f"psi: {e.shape[0]} reference bins but {a.shape[0]} current bins")
    return float(np.sum((a - e) * np.log(a / e)))


def numeric_reference(values: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Quantile bin edges of `values` and the share of values in each bin."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    edges = np.unique(np.quantile(v, np.linspace(0, 1, bins + 1))) if v.size else np.array([0.0, 1.0])
    return {"kind": "numeric", "edges": edges.tolist(), "fractions": numeric_fractions(v, edges).tolist()}


def numeric_fractions(values: np.ndarray, edges: np.ndarray | list[float]) -> np.ndarray:
    """Shares of `values` in the bins of `edges` (the outer bins are open-ended)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    inner = np.asarray(edges, np.float64)[1:-1]
    counts = np.bincount(np.searchsorted(inner, v, side="right"), minlength=inner.size + 1)
    return counts / max(v.size, 1)


def categorical_reference(ids: np.ndarray, top: int = 20) -> dict[str, Any]:
    """The `top` most frequent ids and their shares, plus one share for every other id."""
    values, counts = np.unique(np.asarray(ids, np.int64), return_counts=True)
    keep = values[np.argsort(-counts, kind="stable")[:top]]
    return {"kind": "categorical", "values": sorted(int(x) for x in keep),
            "fractions": categorical_fractions(ids, sorted(int(x) for x in keep)).tolist()}


def categorical_fractions(ids: np.ndarray, values: list[int]) -> np.ndarray:
    """Shares of each of `values` among `ids`, then the share of all other ids."""
    ids = np.asarray(ids, np.int64)
    known = np.asarray(values, np.int64)
    if known.size:
        pos = np.minimum(np.searchsorted(known, ids), known.size - 1)
        slot = np.where(known[pos] == ids, pos, known.size)
    else:
        slot = np.zeros(ids.size, np.int64)
    return np.bincount(slot, minlength=known.size + 1) / max(ids.size, 1)


def feature_values(batch: SequenceBatch) -> dict[str, np.ndarray]:
    """Per column `part:name`: one value per account (numeric: mean over real events), or every
    real event's id (event categoricals). Arrays from several shards can be concatenated."""
    real = np.arange(batch.seq_len)[None, :] < batch.lengths[:, None]
    count = np.maximum(real.sum(axis=1), 1)
    out: dict[str, np.ndarray] = {}
    for part in ("num", "time", "cat", "static_num", "static_cat", "agg"):
        array = getattr(batch, part)
        for j, name in enumerate(batch.names.get(part, [])):
            if part == "cat":
                out[f"{part}:{name}"] = array[..., j][real]
            elif part in ("num", "time"):
                out[f"{part}:{name}"] = (array[..., j] * real).sum(axis=1) / count
            else:
                out[f"{part}:{name}"] = array[:, j]
    return out


def _group_columns(names: dict[str, list[str]]) -> dict[str, list[str]]:
    return {g.key: [f"{part}:{names[part][j]}" for part, idx in g.columns.items() for j in idx]
            for g in feature_groups(names)}


def concat_values(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join `feature_values` of several shards column by column."""
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]} if parts else {}


def reference_from_values(scores: np.ndarray, values: dict[str, np.ndarray], names: dict[str, list[str]],
                          bins: int = 10) -> dict[str, Any]:
    """The drift reference from `feature_values` output, without nights (see `add_nights`)."""
    columns = {}
    for key, v in values.items():
        part = key.split(":", 1)[0]
        columns[key] = categorical_reference(v) if part in CATEGORICAL_PARTS else numeric_reference(v, bins)
    return {"score": numeric_reference(np.asarray(scores), bins), "columns": columns,
            "groups": _group_columns(names)}


def reference_distributions(scores: np.ndarray, batch: SequenceBatch, bins: int = 10) -> dict[str, Any]:
    """The drift reference for a model manifest: score bins, per-column bins and the feature groups,
    each with the shares of every night of `batch` that has `MIN_NIGHT_ROWS` rows (see `add_nights`)."""
    reference = reference_from_values(scores, feature_values(batch), batch.names, bins)
    return add_nights(reference, scores, batch)


def _fractions(ref: dict[str, Any], values: np.ndarray) -> np.ndarray:
    if ref.get("kind") == "categorical":
        return categorical_fractions(values, ref["values"])
    return numeric_fractions(values, ref["edges"])


def _night_shares(ref: dict[str, Any], values: np.ndarray) -> list[float]:
    """A night's shares in the bins of `ref`, as stored in the manifest."""
    return np.round(_fractions(ref, values), SHARE_DECIMALS).tolist()


def reference_rows(cutoffs: np.ndarray, max_rows: int) -> np.ndarray:
    """Sorted indices of an even sample of about `max_rows` rows with the cutoffs `cutoffs`, each
    night sampled evenly on its own: the latest `MAX_NIGHTS` nights get at least `MIN_NIGHT_ROWS`
    rows each (or all they have), so `add_nights` keeps them however many nights share the sample."""
    days = np.unique(cutoffs)
    quota = max_rows // max(days.size, 1)
    picks = [np.zeros(0, np.int64)]
    for i, day in enumerate(days):
        rows = np.flatnonzero(cutoffs == day)
        floor = MIN_NIGHT_ROWS if i >= days.size - MAX_NIGHTS else 0
        want = min(rows.size, max(quota, floor))
        if want:
            picks.append(rows[np.linspace(0, rows.size - 1, num=want).astype(np.int64)])
    return np.sort(np.concatenate(picks))


def _recent_nights(cutoff: np.ndarray, min_rows: int) -> list[np.datetime64]:
    """The latest `MAX_NIGHTS` cutoffs that have at least `min_rows` rows, oldest first."""
    days, counts = np.unique(cutoff, return_counts=True)
    return [d for d, c in zip(days, counts, strict=True) if c >= min_rows][-MAX_NIGHTS:]


def _add_column_shares(reference: dict[str, Any], batch: SequenceBatch, name: str) -> None:
    """Store the shares of `batch` (one night's rows) as night `name` of each reference column."""
    for key, values in feature_values(batch).items():
        column = reference["columns"].get(key)
        if column is not None:
            column.setdefault("nights", {})[name] = _night_shares(column, values)


def add_nights(reference: dict[str, Any], scores: np.ndarray, batch: SequenceBatch) -> dict[str, Any]:
    """Add to each distribution of `reference` (built from `scores` and `batch`) a "nights" map: per
    cutoff of `batch` with at least `MIN_NIGHT_ROWS` rows (the latest `MAX_NIGHTS`), its shares in the
    same bins. Nothing is added when the batch holds fewer than two such nights."""
    nights = _recent_nights(batch.cutoff, MIN_NIGHT_ROWS)
    if len(nights) < 2:
        return reference
    score_ref = reference["score"]
    score_ref["nights"] = {}
    for day in nights:
        rows = np.flatnonzero(batch.cutoff == day)
        score_ref["nights"][str(day)] = _night_shares(score_ref, np.asarray(scores)[rows])
        _add_column_shares(reference, batch.subset(rows), str(day))
    return reference


def population_rows(label: np.ndarray, negative_keep: float, seed: int = 0) -> np.ndarray:
    """Rows of a training snapshot whose class mix is the population's: every negative (the snapshot
    kept `negative_keep` of them) and, seeded, that share of the positives (it kept them all)."""
    label = np.asarray(label)
    positive = label > 0.5
    thinned = np.random.default_rng(seed).random(label.size) < negative_keep
    return np.flatnonzero(~positive | thinned)


def add_training_nights(reference: dict[str, Any], batch: SequenceBatch) -> dict[str, Any]:
    """Add each night of `batch` (training snapshots thinned by `population_rows`) with at least
    `MIN_TRAINING_NIGHT_ROWS` rows (the latest `MAX_NIGHTS`) to the columns' "nights" as
    "<date> (training)". The score gets none: the model was fitted on these rows."""
    for day in _recent_nights(batch.cutoff, MIN_TRAINING_NIGHT_ROWS):
        _add_column_shares(reference, batch.subset(np.flatnonzero(batch.cutoff == day)),
                           TRAINING_NIGHT.format(day))
    return reference


def closest_psi(ref: dict[str, Any], current: np.ndarray) -> tuple[float, str]:
    """The smallest PSI of tonight's shares `current` against the reference's whole window and each
    of its nights, and which one that was (`WINDOW` or the night's date)."""
    options = {WINDOW: ref["fractions"], **ref.get("nights", {})}
    return min((psi(shares, current), name) for name, shares in options.items())


@dataclass
class Drift:
    """Tonight's PSI of the score, and per feature group its largest column PSI; each against the
    closest of the reference's window and nights (`closest_psi`), named in "reference"."""

    score_psi: float
    score_reference: str
    groups: dict[str, dict[str, Any]]


def drift(reference: dict[str, Any], scores: np.ndarray, values: dict[str, np.ndarray]) -> Drift:
    """Tonight's `Drift` against a manifest `reference`."""
    score_ref = reference.get("score", reference)
    if "edges" not in score_ref:
        raise ConfigError("monitoring reference has no score distribution ('score': {'edges', 'fractions'})")
    score_psi, score_from = closest_psi(score_ref, numeric_fractions(scores, score_ref["edges"]))
    groups: dict[str, dict[str, Any]] = {}
    for key, cols in reference.get("groups", {}).items():
        worst: tuple[float, str, str] | None = None
        for col in cols:
            ref = reference.get("columns", {}).get(col)
            if ref is None or col not in values:
                continue
            value, closest = closest_psi(ref, _fractions(ref, values[col]))
            if worst is None or value > worst[0]:
                worst = (value, col, closest)
        if worst is not None:
            groups[key] = {"label": GROUP_LABELS.get(key, key), "psi": worst[0], "column": worst[1],
                           "reference": worst[2]}
    return Drift(score_psi, score_from, groups)


def band_changes(settings: Settings, score_date: dt.date, table: str = "risk_scores") -> list[dict[str, Any]]:
    """Accounts per band on `score_date` and on the previous scored night, with the change."""
    if table not in ("risk_scores", "risk_scores_shadow"):
        raise ConfigError(f"table must be risk_scores or risk_scores_shadow, got {table!r}")
    ident = sql.Identifier(settings.db_schema, table)
    query = sql.SQL(
        "WITH prev AS (SELECT max(score_date) AS d FROM {nights}"
        "  WHERE score_table = %(t)s AND score_date < %(d)s)"
        " SELECT b.risk_band,"
        "  count(*) FILTER (WHERE b.score_date = %(d)s),"
        "  count(*) FILTER (WHERE b.score_date = (SELECT d FROM prev)),"
        "  (SELECT d FROM prev)"
        " FROM {t} b WHERE b.score_date = %(d)s OR b.score_date = (SELECT d FROM prev)"
        " GROUP BY b.risk_band ORDER BY b.risk_band").format(
            t=ident, nights=sql.Identifier(settings.db_schema, "scored_nights"))
    with connect(settings) as conn:
        rows = conn.execute(query, {"d": score_date, "t": table}).fetchall()
    order = {"low": 0, "medium": 1, "high": 2}
    out = [{"band": band, "accounts": now, "previous": prev, "previous_date": prev_date,
            "change": now - prev} for band, now, prev, prev_date in rows]
    return sorted(out, key=lambda r: (order.get(r["band"], 9), r["band"]))


def label_window(settings: Settings, spec: FeatureSpec, score_date: dt.date) -> dict[str, Any]:
    """For monitoring night D: the served date S = D - H - lag, its label window (S, S+H] as
    timestamps in the business time zone, and the as-of time (start of D+1) for `reported_at`."""
    served = score_date - dt.timedelta(days=spec.horizon_days + spec.reporting_lag_days)

    def start_of(day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(0), tzinfo=settings.tz)

    return {"served_date": served, "start": start_of(served + dt.timedelta(days=1)),
            "end": start_of(served + dt.timedelta(days=spec.horizon_days + 1)),
            "known_by": start_of(score_date + dt.timedelta(days=1))}


def realised_performance(settings: Settings, spec: FeatureSpec, score_date: dt.date) -> dict[str, Any] | None:
    """AUC and average precision of the scores served on D - H - lag against the labels known now.

    A label is an event of a positive type in (S, S+H], reported by the end of D; that window
    has closed, so the labels are mature. Accounts already reported bad by the end of S are left
    out, as training leaves them out of its snapshots. None when nothing was served on S. Each
    metric comes with its 95% bootstrap interval ("roc_auc_interval", "average_precision_interval";
    None without positives): one night holds few matured positives, so the interval says how far the
    value can be trusted.
    """
    w = label_window(settings, spec, score_date)
    ev = spec.events
    reported = (sql.SQL("AND e.{} < %(known)s").format(sql.Identifier(ev.reported_at))
                if ev.reported_at else sql.SQL(""))
    query = sql.SQL(
        "SELECT s.risk_score, (l.account IS NOT NULL)"
        " FROM {scores} s LEFT JOIN ("
        "   SELECT DISTINCT e.{acct}::text AS account FROM {events} e"
        "    WHERE e.{ts} >= %(start)s AND e.{ts} < %(end)s AND e.{typ}::text = ANY(%(types)s) {reported}"
        " ) l ON l.account = s.account_id"
        " WHERE s.score_date = %(served)s AND NOT EXISTS ("
        "   SELECT 1 FROM {events} k WHERE k.{acct}::text = s.account_id"
        "    AND k.{typ}::text = ANY(%(types)s) AND k.{known_col} < %(start)s)").format(
        scores=sql.Identifier(settings.db_schema, "risk_scores"),
        events=sql.Identifier(ev.db_schema, ev.table), acct=sql.Identifier(ev.account_id),
        ts=sql.Identifier(ev.timestamp), typ=sql.Identifier(ev.event_type), reported=reported,
        known_col=sql.Identifier(ev.reported_at or ev.timestamp))
    params = {"start": w["start"], "end": w["end"], "known": w["known_by"],
              "types": list(ev.positive_types), "served": w["served_date"]}
    with connect(settings) as conn:
        rows = conn.execute(query, params).fetchall()
    if not rows:
        return None
    scores = np.array([r[0] for r in rows], np.float64)
    labels = np.array([r[1] for r in rows], np.float64)
    auc = roc_auc(labels, scores)
    measurable = bool(labels.sum()) and not math.isnan(auc)
    boot = bootstrap_metrics(labels, {"served": scores}, n_boot=REALISED_BOOT)["served"] if measurable else {}
    return {"served_date": w["served_date"], "label_window": [w["start"], w["end"]],
            "known_by": w["known_by"], "accounts": int(labels.size), "positives": int(labels.sum()),
            "roc_auc": None if math.isnan(auc) else auc,
            "average_precision": average_precision(labels, scores) if labels.sum() else None,
            **{f"{key}_interval": [boot[key]["lo"], boot[key]["hi"]] if boot else None
               for key in ("roc_auc", "average_precision")}}


def score_distribution_png(scores: np.ndarray, reference: dict[str, Any] | None = None,
                           title: str = "Score distribution", night: str = WINDOW) -> bytes:
    """A PNG bar chart of tonight's score shares per reference bin next to the reference's shares
    (those of its `night`, the one the PSI was measured against, else of its whole window), via Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = (reference or {}).get("score", reference or {})
    edges = np.asarray(ref.get("edges", np.linspace(0, 1, 11)), np.float64)
    current = numeric_fractions(scores, edges)
    x = np.arange(current.size)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    try:
        nights = ref.get("nights", {})
        shares = nights[night] if night in nights else ref.get("fractions")
        if shares is not None:
            label = (f"reference: night {night} of the model's validation/test windows" if night in nights
                     else "reference (model's validation and test windows)")
            ax.bar(x - 0.2, shares, width=0.4, label=label, color="#999999")
        ax.bar(x + 0.2, current, width=0.4, label="tonight", color="#c0392b")
        ax.set_xticks(x, [f"{edges[i]:.2g}–{edges[i + 1]:.2g}" for i in range(current.size)],
                      rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("share of accounts")
        ax.set_title(title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


@dataclass
class MonitorReport:
    """Tonight's monitoring results; `alerts` is non-empty when something needs a person."""

    score_date: dt.date
    drift: Drift
    bands: list[dict[str, Any]]
    realised: dict[str, Any] | None
    alerts: list[str] = field(default_factory=list)
    image_png: bytes = b""
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[dict[str, Any]]:
        """One row per metric, for a table artifact."""
        found = self.drift
        psi_value = None if math.isnan(found.score_psi) else round(found.score_psi, 4)
        out = [{"metric": "psi:score", "value": psi_value,
                "note": f"vs {found.score_reference}" if found.score_reference else ""}]
        out += [{"metric": f"psi:{k}", "value": round(v["psi"], 4),
                 "note": f"{v['column']} vs {v.get('reference', WINDOW)}"}
                for k, v in sorted(found.groups.items(), key=lambda kv: -kv[1]["psi"])]
        out += [{"metric": f"band:{b['band']}", "value": b["accounts"],
                 "note": f"previous {b['previous']} ({b['change']:+d})"} for b in self.bands]
        if self.realised:
            for key in ("roc_auc", "average_precision"):
                bounds = self.realised.get(f"{key}_interval")
                span = f"95% interval [{bounds[0]:.3f}, {bounds[1]:.3f}], " if bounds else ""
                out.append({"metric": f"realised:{key}", "value": self.realised[key],
                            "note": f"{span}served {self.realised['served_date']}, "
                                    f"{self.realised['positives']}/{self.realised['accounts']} positive"})
        out += [{"metric": "note", "value": None, "note": note} for note in self.notes]
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly content (without the image)."""
        return {"score_date": self.score_date, "score_psi": self.drift.score_psi,
                "score_reference": self.drift.score_reference, "group_psi": self.drift.groups,
                "bands": self.bands, "realised": self.realised, "alerts": self.alerts, "notes": self.notes}


def _realised_checks(settings: Settings, realised: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(alerts, notes) for realised performance: a metric alerts when its value and its whole 95%
    interval are below the settings' floor on at least `realised_min_positives` positives; a value
    below the floor without that evidence is noted with the reason."""
    alerts: list[str] = []
    notes: list[str] = []
    served, positives = realised["served_date"], realised["positives"]
    for key, name, floor in (("average_precision", "average precision", settings.realised_ap_floor),
                             ("roc_auc", "ROC-AUC", settings.realised_auc_floor)):
        value, bounds = realised[key], realised.get(f"{key}_interval")
        if value is None or value >= floor:
            continue
        finite = bounds is not None and all(math.isfinite(b) for b in bounds)
        measured = f"realised {name} {value:.3f}" + (f" [{bounds[0]:.3f}, {bounds[1]:.3f}]" if finite else "")
        if not finite:
            why = "its interval could not be measured"
        elif bounds[1] >= floor:
            why = "its interval reaches it"
        elif positives < settings.realised_min_positives:
            why = f"{positives} positives are fewer than the {settings.realised_min_positives} an alert needs"
        else:
            alerts.append(f"{measured} < floor {floor} (scores served {served})")
            continue
        notes.append(f"{measured} is below the floor {floor} but {why} ({positives} positives "
                     f"among {realised['accounts']} accounts scored {served}): not an alert")
    if not positives:
        notes.append(f"no matured positive among the {realised['accounts']} accounts scored {served}: "
                     f"realised performance not measurable")
    return alerts, notes


def monitor(settings: Settings, spec: FeatureSpec, *, score_date: dt.date, scores: np.ndarray,
            values: dict[str, np.ndarray], reference: dict[str, Any],
            psi_alert: float = PSI_ALERT) -> MonitorReport:
    """Everything above for night `score_date`: drift vs the manifest reference, band changes,
    realised performance, alerts (PSI > `psi_alert` against the closest reference night; realised AP
    or ROC-AUC below the settings' `realised_ap_floor` / `realised_auc_floor` with its whole 95%
    interval, on at least `realised_min_positives` matured positives, so a night with a handful of
    positives does not alert on noise) and the image."""
    notes: list[str] = []
    if "edges" in (reference or {}).get("score", reference or {}):
        found = drift(reference, scores, values)
    else:
        found = Drift(math.nan, "", {})
        notes.append("the model manifest has no reference distributions: drift not computed")
    bands = band_changes(settings, score_date)
    realised = realised_performance(settings, spec, score_date)
    alerts = []
    if found.score_psi > psi_alert:
        alerts.append(f"score PSI {found.score_psi:.3f} > {psi_alert} "
                      f"(closest reference: {found.score_reference})")
    alerts += [f"feature group {g['label']} PSI {g['psi']:.3f} > {psi_alert} (column {g['column']}, "
               f"closest reference: {g['reference']})"
               for g in found.groups.values() if g["psi"] > psi_alert]
    if realised:
        realised_alerts, realised_notes = _realised_checks(settings, realised)
        alerts += realised_alerts
        notes += realised_notes
    image = score_distribution_png(scores, reference or None, night=found.score_reference,
                                   title=f"Scores {score_date} (PSI {found.score_psi:.3f})")
    return MonitorReport(score_date, found, bands, realised, alerts, image, notes)
