"""The synthetic bank's normal life: countries, merchants, accounts and their everyday transactions.

Everything is drawn from one `numpy.random.Generator` in a fixed order and built with array
operations (no Python loop over accounts or transactions), so the bank is a pure function of
its arguments. Times are seconds since the window's first midnight (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "CA", "MX", "BR", "IN", "NG", "RO",
             "TH", "AE")
HOME_WEIGHTS = np.array([.50, .15, .08, .07, .05, .04, .03, .03, .05, 0, 0, 0, 0, 0, 0, 0])
TZ_HOURS = np.array([-5, 0, 1, 1, 1, 1, 1, 1, -5, -6, -3, 5, 1, 2, 7, 4], dtype=np.float64)
N_COUNTRIES = len(COUNTRIES)

CHANNELS = ("card_present", "online", "atm")
CARD_PRESENT, ONLINE, ATM, EMPLOYER = 0, 1, 2, 3
KIND_CHANNEL = np.array([0, 1, 2, 1])  # employers credit salaries through the online channel
KIND_PREFIX = ("M", "W", "A", "E")
N_KINDS = 4

# code, amount scale, weight at card-present merchants, weight at online merchants
MCCS = (
    ("5411", 1.0, .22, .04), ("5812", 1.1, .12, .02), ("5814", .35, .12, .05),
    ("5541", 1.3, .10, .00), ("5912", .8, .06, .04), ("5311", 2.0, .06, .08),
    ("5651", 1.8, .06, .08), ("5732", 4.5, .03, .10), ("5999", 1.5, .05, .12),
    ("4121", .7, .05, .12), ("7832", .6, .04, .03), ("7011", 5.0, .03, .06),
    ("4511", 9.0, .00, .06), ("5815", .3, .00, .16), ("4900", 2.5, .00, .04),
    ("6011", 3.0, .00, .00), ("payroll", 1.0, .00, .00),
)
MCC_CODES = tuple(m[0] for m in MCCS)
MCC_SCALE = np.array([m[1] for m in MCCS])
MCC_ATM, MCC_PAYROLL, MCC_AIRLINE = MCC_CODES.index("6011"), MCC_CODES.index("payroll"), \
    MCC_CODES.index("4511")

SEGMENTS = ("mass", "affluent", "student", "business")
SEGMENT_WEIGHTS = np.array([.60, .15, .15, .10])
SEGMENT_SCALE = np.array([1.0, 2.2, .5, 1.8])
SEGMENT_RATE = np.array([1.0, 1.15, 1.1, 1.35])
WEEKDAY_FACTOR = np.array([.92, .95, 1.0, 1.0, 1.15, 1.25, .73])  # Monday .. Sunday
MEAN_DAILY_TXNS = 0.52
N_FAV_CP, N_FAV_ONLINE = 8, 4
DAY = 86_400


@dataclass(frozen=True)
class World:
    """Merchants sorted by (country, kind); `pick` draws a random one of a kind in a country."""

    country: np.ndarray
    kind: np.ndarray
    mcc: np.ndarray
    pool_start: np.ndarray
    pool_count: np.ndarray
    airlines: np.ndarray

    @property
    def ids(self) -> list[str]:
        """Merchant id strings, e.g. 'M000042' (card present), 'W…' online, 'A…' ATM, 'E…' employer."""
        return [f"{KIND_PREFIX[k]}{i:06d}" for i, k in enumerate(self.kind.tolist())]

    def pick(self, rng: np.random.Generator, country: np.ndarray, kind: np.ndarray | int) -> np.ndarray:
        """One random merchant per row of the given kind(s) in the given country codes."""
        kind = np.broadcast_to(np.asarray(kind), country.shape)
        count = self.pool_count[country, kind]
        return self.pool_start[country, kind] + (rng.random(country.shape) * count).astype(np.int64)


def build_world(rng: np.random.Generator, n_accounts: int) -> World:
    """Merchants in every country: card-present shops, online shops, ATMs and employers."""
    n_merchants = int(np.clip(n_accounts // 5, 400, 30_000))
    share = HOME_WEIGHTS * 0.9 + 0.1 / N_COUNTRIES
    per_country = np.maximum(16, np.round(share * n_merchants)).astype(np.int64)
    counts = np.zeros((N_COUNTRIES, N_KINDS), np.int64)
    counts[:, ATM] = np.maximum(2, np.round(per_country * .06))
    counts[:, EMPLOYER] = np.maximum(2, np.round(per_country * .03))
    counts[:, ONLINE] = np.maximum(4, np.round(per_country * .25))
    counts[:, CARD_PRESENT] = np.maximum(8, per_country - counts[:, 1:].sum(axis=1))
    flat = counts.ravel()
    country = np.repeat(np.repeat(np.arange(N_COUNTRIES), N_KINDS), flat)
    kind = np.repeat(np.tile(np.arange(N_KINDS), N_COUNTRIES), flat)
    w_cp = np.array([m[2] for m in MCCS])
    w_on = np.array([m[3] for m in MCCS])
    mcc = np.where(kind == ONLINE, rng.choice(len(MCCS), len(kind), p=w_on / w_on.sum()),
                   rng.choice(len(MCCS), len(kind), p=w_cp / w_cp.sum()))
    mcc = np.where(kind == ATM, MCC_ATM, np.where(kind == EMPLOYER, MCC_PAYROLL, mcc))
    start = np.concatenate([[0], np.cumsum(flat)[:-1]]).reshape(N_COUNTRIES, N_KINDS)
    airlines = np.flatnonzero((kind == ONLINE) & (mcc == MCC_AIRLINE))
    if len(airlines) == 0:
        airlines = np.flatnonzero(kind == ONLINE)[:1]
        mcc[airlines] = MCC_AIRLINE
    return World(country.astype(np.int16), kind.astype(np.int8), mcc.astype(np.int16), start,
                 counts, airlines)


@dataclass(frozen=True)
class Accounts:
    """Static attributes and personal habits of every account (index i is account_id i + 1)."""

    home: np.ndarray
    segment: np.ndarray
    scale: np.ndarray
    rate: np.ndarray
    credit_cents: np.ndarray
    tenure_months: np.ndarray
    hour_mu: np.ndarray
    p_online: np.ndarray
    p_atm: np.ndarray
    fav_cp: np.ndarray
    fav_online: np.ndarray
    fav_atm: np.ndarray
    employer: np.ndarray
    salary_day: np.ndarray
    salary_cents: np.ndarray
    trip_start: np.ndarray
    trip_len: np.ndarray
    trip_dest: np.ndarray

    @property
    def n(self) -> int:
        """Number of accounts."""
        return len(self.home)


def build_accounts(rng: np.random.Generator, world: World, n: int, days: int) -> Accounts:
    """Accounts with a home country, segment, spending scale, habits, employer and maybe a trip."""
    home = rng.choice(N_COUNTRIES, n, p=HOME_WEIGHTS / HOME_WEIGHTS.sum()).astype(np.int16)
    segment = rng.choice(len(SEGMENTS), n, p=SEGMENT_WEIGHTS).astype(np.int8)
    scale = 32.0 * SEGMENT_SCALE[segment] * rng.lognormal(0, .45, n)
    rate = MEAN_DAILY_TXNS * SEGMENT_RATE[segment] * rng.gamma(2.5, 1 / 2.5, n)
    credit_units = np.maximum(500, np.round(scale * 55 * rng.lognormal(0, .3, n), -2))
    min_tenure = days // 30 + 1
    tenure = rng.integers(min_tenure, min_tenure + 240, n)
    hour_mu = np.clip(rng.normal(14.5, 2.2, n), 9, 20)
    p_online = rng.beta(2.0, 6.0, n)
    p_atm = 0.05 * rng.gamma(1.5, 1 / 1.5, n)
    fav_cp = world.pick(rng, np.repeat(home, N_FAV_CP).reshape(n, N_FAV_CP), CARD_PRESENT)
    fav_online = world.pick(rng, np.repeat(home, N_FAV_ONLINE).reshape(n, N_FAV_ONLINE), ONLINE)
    fav_atm = world.pick(rng, home, ATM)
    employer = world.pick(rng, home, EMPLOYER)
    salary_day = np.where(rng.random(n) < .75, rng.integers(25, 29, n), 0)
    salary_cents = np.round(scale * 48 * rng.lognormal(0, .1, n) * 100).astype(np.int64)
    has_trip = rng.random(n) < 1 - np.exp(-days / 365 * 1.5)
    trip_len = np.where(has_trip, rng.integers(3, 13, n), 0)
    trip_start = rng.integers(0, max(1, days - 3), n)
    trip_dest = ((home + rng.integers(1, N_COUNTRIES, n)) % N_COUNTRIES).astype(np.int16)
    return Accounts(home, segment, scale, rate, (credit_units * 100).astype(np.int64), tenure,
                    hour_mu, p_online, p_atm, fav_cp, fav_online, fav_atm, employer, salary_day,
                    salary_cents, trip_start, trip_len, trip_dest)


@dataclass(frozen=True)
class Txns:
    """Transactions as columns: account index, time (s since window start), cents, merchant index."""

    account: np.ndarray
    t: np.ndarray
    cents: np.ndarray
    merchant: np.ndarray

    def __len__(self) -> int:
        return len(self.account)

    @staticmethod
    def concat(parts: list[Txns]) -> Txns:
        """All parts, in the given order."""
        return Txns(*(np.concatenate([getattr(p, f) for p in parts])
                      for f in ("account", "t", "cents", "merchant")))

    def select(self, keep: np.ndarray) -> Txns:
        """Rows where `keep` (a mask or index) selects."""
        return Txns(self.account[keep], self.t[keep], self.cents[keep], self.merchant[keep])


def local_seconds(rng: np.random.Generator, hour_mu: np.ndarray, night_share: float = .04) -> np.ndarray:
    """Seconds after local midnight around each row's personal hour, with a few night-owl rows."""
    hours = np.clip(hour_mu + rng.normal(0, 3.0, hour_mu.shape), 6, 23.99)
    night = rng.random(hour_mu.shape) < night_share
    hours = np.where(night, rng.uniform(0, 6, hour_mu.shape), hours)
    return (hours * 3600).astype(np.int64)


def amount_cents(rng: np.random.Generator, scale: np.ndarray, mcc: np.ndarray) -> np.ndarray:
    """Purchase amounts around the account's scale and the category's; ATM cash in multiples of 20."""
    units = scale * MCC_SCALE[mcc] * rng.lognormal(0, .55, scale.shape)
    units = np.where(mcc == MCC_ATM, np.maximum(20, np.round(units / 20) * 20), units)
    return np.maximum(1, np.round(units * 100)).astype(np.int64)


def everyday(rng: np.random.Generator, world: World, acc: Accounts, days: int, weekday0: int,
             day_of_month: np.ndarray) -> Txns:
    """Daily purchases with weekly seasonality, habits, travel, salary credits and airline tickets."""
    n = acc.n
    factor = WEEKDAY_FACTOR[(weekday0 + np.arange(days)) % 7]
    counts = rng.poisson(factor[:, None] * acc.rate[None, :]).ravel()
    cell = np.repeat(np.arange(counts.size, dtype=np.int64), counts)
    day, a = np.divmod(cell, n)
    del cell
    u = rng.random(len(a))
    kind = np.where(u < acc.p_atm[a], ATM, np.where(u < acc.p_atm[a] + acc.p_online[a], ONLINE,
                                                     CARD_PRESENT)).astype(np.int8)
    favourite = rng.random(len(a)) < .8
    pick_cp = (N_FAV_CP * rng.random(len(a)) ** 1.7).astype(np.int64)
    pick_on = (N_FAV_ONLINE * rng.random(len(a)) ** 1.5).astype(np.int64)
    fav = np.where(kind == CARD_PRESENT, acc.fav_cp[a, pick_cp],
                   np.where(kind == ONLINE, acc.fav_online[a, pick_on], acc.fav_atm[a]))
    cross_border = (kind == ONLINE) & (rng.random(len(a)) < .04)
    where = np.where(cross_border, rng.integers(0, N_COUNTRIES, len(a)), acc.home[a])
    merchant = np.where(favourite, fav, world.pick(rng, where, kind))
    travelling = (day >= acc.trip_start[a]) & (day < acc.trip_start[a] + acc.trip_len[a])
    abroad = travelling & (kind != ONLINE)
    merchant[abroad] = world.pick(rng, acc.trip_dest[a[abroad]], kind[abroad])
    tz = np.where(travelling, TZ_HOURS[acc.trip_dest[a]], TZ_HOURS[acc.home[a]])
    t = day * DAY + local_seconds(rng, acc.hour_mu[a]) - (tz * 3600).astype(np.int64)
    cents = amount_cents(rng, acc.scale[a], world.mcc[merchant])
    life = Txns(a, t, cents, merchant.astype(np.int64))
    return Txns.concat([life, salaries(rng, acc, day_of_month), tickets(rng, world, acc, days)])


def salaries(rng: np.random.Generator, acc: Accounts, day_of_month: np.ndarray) -> Txns:
    """Monthly salary credits (positive amounts, mcc 'payroll') early in the morning of pay day."""
    parts = []
    for pay_day in range(25, 29):
        paid = np.flatnonzero(acc.salary_day == pay_day)
        pay_days = np.flatnonzero(day_of_month == pay_day)
        a = np.repeat(paid, len(pay_days))
        day = np.tile(pay_days, len(paid))
        t = day * DAY + rng.integers(5 * 3600, 7 * 3600, len(a)) - (TZ_HOURS[acc.home[a]] * 3600).astype(
            np.int64)
        cents = np.round(acc.salary_cents[a] * rng.lognormal(0, .03, len(a))).astype(np.int64)
        parts.append(Txns(a, t, cents, acc.employer[a]))
    return Txns.concat(parts)


def tickets(rng: np.random.Generator, world: World, acc: Accounts, days: int) -> Txns:
    """Most travellers buy an airline ticket online days to weeks before their trip."""
    lead = rng.integers(3, 40, acc.n)
    buys = (acc.trip_len > 0) & (rng.random(acc.n) < .6) & (acc.trip_start - lead >= 0)
    a = np.flatnonzero(buys)
    merchant = world.airlines[rng.integers(0, len(world.airlines), len(a))]
    day = acc.trip_start[a] - lead[a]
    t = day * DAY + local_seconds(rng, acc.hour_mu[a], 0) - (TZ_HOURS[acc.home[a]] * 3600).astype(np.int64)
    return Txns(a, t, amount_cents(rng, acc.scale[a], world.mcc[merchant]), merchant)
