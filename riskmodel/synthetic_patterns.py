"""Planted risk patterns, their benign look-alikes and background events (see `riskmodel.synthetic`).

Each pattern function takes the accounts chosen for it (planted first, then look-alikes) and
returns their extra transactions, one ground-truth row per account and the planted accounts'
risk events. In the control bank (`ordered=False`) a look-alike repeats the planted order
and differs only in size, so the difference is visible to aggregates and order carries nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from riskmodel.synthetic_life import (
    ATM,
    CARD_PRESENT,
    DAY,
    N_COUNTRIES,
    ONLINE,
    TZ_HOURS,
    Accounts,
    Txns,
    World,
    amount_cents,
    local_seconds,
)

PATTERNS = ("card_testing", "account_takeover", "bust_out", "compromised_merchant", "background")
EVENT_TYPES = ("fraud", "chargeback", "default")
FRAUD, CHARGEBACK, DEFAULT = 0, 1, 2
CONTROL_SHRINK = 0.35
HOUR = 3600


@dataclass(frozen=True)
class Planted:
    """One pattern's output: transactions, ground truth (one row per account) and risk events."""

    txns: Txns
    gt_account: np.ndarray
    gt_pattern: np.ndarray
    gt_lookalike: np.ndarray
    gt_start: np.ndarray
    gt_event: np.ndarray
    ev_account: np.ndarray
    ev_time: np.ndarray
    ev_reported: np.ndarray
    ev_type: np.ndarray

    @staticmethod
    def concat(parts: list[Planted]) -> Planted:
        """All parts, in order."""
        txns = Txns.concat([p.txns for p in parts])
        cols = [np.concatenate([getattr(p, f) for p in parts]) for f in
                ("gt_account", "gt_pattern", "gt_lookalike", "gt_start", "gt_event", "ev_account",
                 "ev_time", "ev_reported", "ev_type")]
        return Planted(txns, *cols)


def ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For `counts[i]` items per owner: each item's owner index and its position within the owner."""
    owner = np.repeat(np.arange(len(counts)), counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return owner, np.arange(owner.size) - first[owner]


def group_cumsum(values: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Running sum of `values` within each owner (items grouped by owner, in order)."""
    if owner.size == 0:
        return values
    total = np.cumsum(values)
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    offset = np.repeat(total[starts] - values[starts], np.diff(np.r_[starts, owner.size]))
    return total - offset


def group_last(values: np.ndarray, owner: np.ndarray, n: int) -> np.ndarray:
    """The last value of each owner (owners 0..n-1, each with at least one item)."""
    out = np.zeros(n, values.dtype)
    out[owner] = values
    return out


def _finish(pattern: int, accounts: np.ndarray, look: np.ndarray, txns: Txns, owner: np.ndarray,
            event: np.ndarray, reported: np.ndarray, kind: np.ndarray) -> Planted:
    start = np.full(len(accounts), np.iinfo(np.int64).max)
    np.minimum.at(start, owner, txns.t)
    planted = ~look
    return Planted(txns, accounts, np.full(len(accounts), pattern), look, start,
                   np.where(planted, event, -1), accounts[planted], event[planted],
                   reported[planted], kind[planted])


def card_testing(rng: np.random.Generator, world: World, acc: Accounts, accounts: np.ndarray,
                 look: np.ndarray, start_day: np.ndarray, ordered: bool) -> Planted:
    """A burst of tiny online charges at new merchants, then large ones (look-alike: large first)."""
    m = len(accounts)
    n_tiny = np.where(look & (not ordered), rng.integers(1, 4, m), rng.integers(5, 11, m))
    n_big = rng.integers(2, 5, m)
    t0 = start_day * DAY + rng.integers(0, DAY, m)
    gap = rng.integers(DAY, 3 * DAY, m)
    tiny_owner, _ = ragged(n_tiny)
    big_owner, _ = ragged(n_big)
    tiny_dt = group_cumsum(rng.integers(20, 400, tiny_owner.size), tiny_owner)
    big_dt = group_cumsum(rng.integers(300, 2 * HOUR, big_owner.size), big_owner)
    swap = look & ordered
    tiny_t = t0[tiny_owner] + np.where(swap[tiny_owner], gap[tiny_owner], 0) + tiny_dt
    big_t = t0[big_owner] + np.where(swap[big_owner], 0, gap[big_owner]) + big_dt
    tiny_cents = rng.integers(50, 200, tiny_owner.size)
    shrink = np.where(look & (not ordered), CONTROL_SHRINK, 1.0)
    big_cents = np.round(acc.scale[accounts[big_owner]] * rng.uniform(8, 20, big_owner.size)
                         * shrink[big_owner] * 100).astype(np.int64)
    owner = np.concatenate([tiny_owner, big_owner])
    merchant = world.pick(rng, rng.integers(0, N_COUNTRIES, owner.size), ONLINE)
    txns = Txns(accounts[owner], np.concatenate([tiny_t, big_t]),
                np.concatenate([tiny_cents, big_cents]), merchant)
    last = np.zeros(m, np.int64)
    np.maximum.at(last, owner, txns.t)
    event = last + rng.integers(2 * HOUR, 30 * HOUR, m)
    reported = event + rng.integers(DAY, 10 * DAY, m)
    return _finish(0, accounts, look, txns, owner, event, reported, np.full(m, FRAUD))


def account_takeover(rng: np.random.Generator, world: World, acc: Accounts, accounts: np.ndarray,
                     look: np.ndarray, start_day: np.ndarray, ordered: bool) -> Planted:
    """Foreign, night-time charges with rising amounts (look-alike: a ticket, then a trip abroad)."""
    m = len(accounts)
    k = rng.integers(4, 8, m)
    home = acc.home[accounts].astype(np.int64)
    dest = (home + rng.integers(1, N_COUNTRIES, m)) % N_COUNTRIES
    base = acc.scale[accounts] * rng.uniform(1, 2, m)
    growth = rng.uniform(1.4, 1.9, m)
    owner, pos = ragged(k)
    day_off = np.floor(rng.uniform(0, 1, owner.size) * rng.uniform(1.5, 4.0, m)[owner]).astype(np.int64)
    night_t = ((start_day[owner] + day_off) * DAY + rng.integers(0, 5 * HOUR, owner.size)
               - (TZ_HOURS[home[owner]] * HOUR).astype(np.int64))
    trip = (look & ordered)[owner]
    trip_day = (start_day + rng.integers(2, 10, m))[owner] + day_off
    trip_t = (trip_day * DAY + local_seconds(rng, np.full(owner.size, 14.0), 0)
              - (TZ_HOURS[dest[owner]] * HOUR).astype(np.int64))
    ticket = trip & (pos == 0)
    ticket_t = (start_day[owner] * DAY + local_seconds(rng, acc.hour_mu[accounts[owner]], 0)
                - (TZ_HOURS[home[owner]] * HOUR).astype(np.int64))
    t = np.where(ticket, ticket_t, np.where(trip, trip_t, night_t))
    t = np.sort(t + owner * 1000 * DAY) - owner * 1000 * DAY
    exponent = np.where(trip, k[owner] - 1 - pos, pos)
    shrink = np.where(look & (not ordered), CONTROL_SHRINK, 1.0)[owner]
    cents = np.round(base[owner] * growth[owner] ** exponent * shrink * 100).astype(np.int64)
    channel = np.where(rng.random(owner.size) < np.where(trip, .3, .6), ONLINE, CARD_PRESENT)
    merchant = world.pick(rng, dest[owner], channel)
    merchant = np.where(ticket, world.airlines[rng.integers(0, len(world.airlines), owner.size)], merchant)
    txns = Txns(accounts[owner], t, cents, merchant)
    last = np.zeros(m, np.int64)
    np.maximum.at(last, owner, txns.t)
    event = last + rng.integers(HOUR, DAY, m)
    reported = event + rng.integers(DAY, 7 * DAY, m)
    return _finish(1, accounts, look, txns, owner, event, reported, np.full(m, FRAUD))


def bust_out(rng: np.random.Generator, world: World, acc: Accounts, accounts: np.ndarray,
             look: np.ndarray, start_day: np.ndarray, ordered: bool, weeks_max: int) -> Planted:
    """Spend and cash withdrawals ramp up to the credit limit, then default (look-alike: ramp down)."""
    m = len(accounts)
    width = rng.integers(14, max(15, weeks_max + 1), m)
    k = rng.integers(12, 26, m)
    owner, _ = ragged(k)
    tpos = np.sqrt(rng.random(owner.size))
    weight = (0.3 + 2.5 * tpos) * rng.lognormal(0, .25, owner.size)
    per_account = np.bincount(owner, weight, m)
    target = acc.credit_cents[accounts] * rng.uniform(.85, 1.25, m)
    shrink = np.where(look & (not ordered), CONTROL_SHRINK, 1.0)
    cents = weight / per_account[owner] * (target * shrink)[owner]
    atm = rng.random(owner.size) < .3
    cents = np.where(atm, np.maximum(2000, np.round(cents / 2000) * 2000), np.round(cents))
    cents = np.maximum(1, cents).astype(np.int64)
    when = np.where((look & ordered)[owner], 1 - tpos, tpos) * width[owner]
    a = accounts[owner]
    t = ((start_day[owner] + np.floor(when)).astype(np.int64) * DAY + local_seconds(rng, acc.hour_mu[a])
         - (TZ_HOURS[acc.home[a]] * HOUR).astype(np.int64))
    kind = np.where(atm, ATM, np.where(rng.random(owner.size) < .3, ONLINE, CARD_PRESENT))
    merchant = np.where(atm, acc.fav_atm[a], world.pick(rng, acc.home[a].astype(np.int64), kind))
    txns = Txns(a, t, cents, merchant)
    event = (start_day + width) * DAY + rng.integers(3 * DAY, 15 * DAY, m)
    reported = event + rng.integers(DAY, 14 * DAY, m)
    return _finish(2, accounts, look, txns, owner, event, reported, np.full(m, DEFAULT))


def compromised_merchant(rng: np.random.Generator, world: World, acc: Accounts, accounts: np.ndarray,
                         look: np.ndarray, days: int, lo: int, ordered: bool) -> Planted:
    """A visit to a breached shop during its breach, then card-not-present fraud weeks later.

    Look-alike: the same shop visited after the breach closed, the online charges before it.
    """
    m = len(accounts)
    home = acc.home[accounts].astype(np.int64)
    breached = world.pick(rng, np.arange(N_COUNTRIES), CARD_PRESENT)
    breach_day = rng.integers(lo, max(lo + 1, days - 36), N_COUNTRIES)
    merchant = breached[home]
    opens = breach_day[home] * DAY
    visit_in = opens + rng.integers(0, 10 * DAY, m)
    visit_after = opens + 10 * DAY + rng.integers(2 * DAY, 20 * DAY, m)
    delay = rng.integers(5 * DAY, 20 * DAY, m)
    swap = look & ordered
    visit = np.where(swap, visit_after, visit_in)
    first_charge = np.where(swap, visit_after - delay, visit_in + delay)
    k = rng.integers(2, 5, m)
    owner, _ = ragged(k)
    charge_t = first_charge[owner] + group_cumsum(rng.integers(HOUR // 2, 8 * HOUR, owner.size), owner)
    shrink = np.where(look & (not ordered), CONTROL_SHRINK, 1.0)
    charge_cents = np.round(acc.scale[accounts[owner]] * rng.uniform(3, 10, owner.size)
                            * shrink[owner] * 100).astype(np.int64)
    charge_merchant = world.pick(rng, rng.integers(0, N_COUNTRIES, owner.size), ONLINE)
    visit_cents = amount_cents(rng, acc.scale[accounts], world.mcc[merchant])
    all_owner = np.concatenate([np.arange(m), owner])
    txns = Txns(accounts[all_owner], np.concatenate([visit, charge_t]),
                np.concatenate([visit_cents, charge_cents]), np.concatenate([merchant, charge_merchant]))
    last = np.zeros(m, np.int64)
    np.maximum.at(last, all_owner, txns.t)
    event = last + rng.integers(DAY // 2, 3 * DAY, m)
    chargeback = rng.random(m) < .5
    lag = np.where(chargeback, rng.integers(5 * DAY, 21 * DAY, m), rng.integers(DAY, 10 * DAY, m))
    kind = np.where(chargeback, CHARGEBACK, FRAUD)
    return _finish(3, accounts, look, txns, all_owner, event, event + lag, kind)


def background(rng: np.random.Generator, accounts: np.ndarray, days: int) -> Planted:
    """Unexplained risk events (no planted transactions): the noise every real label set has."""
    m = len(accounts)
    event = rng.integers(0, days * DAY, m)
    reported = event + rng.integers(DAY, 21 * DAY, m)
    kind = rng.choice(3, m, p=[.4, .4, .2])
    empty = np.zeros(0, np.int64)
    return Planted(Txns(empty, empty, empty, empty), accounts, np.full(m, 4), np.zeros(m, bool),
                   event, event, accounts, event, reported, kind)
