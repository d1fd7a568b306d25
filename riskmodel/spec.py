"""The feature spec: how a bank's own tables map onto riskflow's inputs (TOML, validated).

Names here are identifiers in the bank's database. They are only ever used quoted
(`psycopg.sql.Identifier`), never pasted into SQL text.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from riskmodel.errors import ConfigError


class SpecError(ConfigError):
    """The feature spec file is missing, unreadable or invalid; the message names the field."""


MAX_IDENTIFIER_BYTES = 63


def _identifier(value: str) -> str:
    """Postgres names: 1..63 bytes of UTF-8 without NUL (longer names are silently truncated)."""
    size = len(value.encode())
    if not value or size > MAX_IDENTIFIER_BYTES or "\x00" in value:
        raise ValueError(f"{value!r} is not a usable Postgres name: it must be 1..{MAX_IDENTIFIER_BYTES} "
                         f"bytes of UTF-8 without NUL (got {size} bytes)")
    return value


Ident = Annotated[str, AfterValidator(_identifier)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TableRef(_Strict):
    """A source table or view, `schema.table`."""

    db_schema: Ident = Field("public", alias="schema")
    table: Ident

    @property
    def qualified(self) -> str:
        """Human-readable name for messages (never used to build SQL)."""
        return f"{self.db_schema}.{self.table}"


class TransactionsSpec(TableRef):
    """The transactions table and the columns riskflow reads from it."""

    id: Ident = Field("txn_id", description="Unique transaction id")
    account_id: Ident = Field("account_id")
    timestamp: Ident = Field("ts", description="timestamptz column")
    amount: Ident = Field("amount")
    numeric: list[Ident] = Field(default_factory=list, description="Extra numeric event columns")
    categorical: list[Ident] = Field(default_factory=list, description="Categorical event columns")
    merchant: str | None = Field(None, description="Column naming the merchant (aggregates)")
    category: str | None = Field(None, description="Merchant category column (aggregates)")
    country: str | None = Field(None, description="Country column (foreign share, new countries)")
    channel: str | None = Field(None, description="Channel column (online / ATM shares)")
    online_values: list[str] = Field(default_factory=lambda: ["online"])
    atm_values: list[str] = Field(default_factory=lambda: ["atm"])
    tiny_amount: float = Field(2.0, gt=0, description="Amounts at or below count as tiny")
    max_amount: float = Field(1e7, gt=0, description="Amounts above are quarantined")
    allow_negative: bool = Field(False, description="Allow refunds as negative amounts")

    @model_validator(mode="after")
    def _roles_are_columns(self) -> TransactionsSpec:
        cats = set(self.categorical)
        for role in ("merchant", "category", "country", "channel"):
            col = getattr(self, role)
            if col is not None and col not in cats:
                raise ValueError(f"transactions.{role} = {col!r} must be one of categorical {sorted(cats)}")
        dupes = _duplicates([self.id, self.account_id, self.timestamp, self.amount,
                             *self.numeric, *self.categorical])
        if dupes:
            raise ValueError(f"transactions: column(s) {dupes} used for more than one role")
        return self

    @property
    def columns(self) -> list[str]:
        """Every column the extract reads, in a fixed order."""
        return [self.id, self.account_id, self.timestamp, self.amount, *self.numeric,
                *self.categorical]


class AccountsSpec(TableRef):
    """Optional static per-account attributes."""

    account_id: Ident = Field("account_id")
    numeric: list[Ident] = Field(default_factory=list)
    categorical: list[Ident] = Field(default_factory=list)
    home_country: str | None = Field(None, description="Column compared with txn country")

    @model_validator(mode="after")
    def _no_duplicates(self) -> AccountsSpec:
        dupes = _duplicates([self.account_id, *self.numeric, *self.categorical])
        if dupes:
            raise ValueError(f"accounts: column(s) {dupes} used for more than one role")
        if self.home_country is not None and self.home_country not in self.categorical:
            raise ValueError(f"accounts.home_country = {self.home_country!r} must be categorical")
        return self

    @property
    def columns(self) -> list[str]:
        """Every column read from the accounts table."""
        return [self.account_id, *self.numeric, *self.categorical]


class EventsSpec(TableRef):
    """Risk events (labels); they arrive late, so `reported_at` says when they became known."""

    account_id: Ident = Field("account_id")
    timestamp: Ident = Field("event_ts")
    reported_at: Ident | None = Field("reported_at")
    event_type: Ident = Field("event_type")
    positive_types: list[str] = Field(min_length=1)

    @property
    def columns(self) -> list[str]:
        """Every column read from the events table."""
        cols = [self.account_id, self.timestamp, self.event_type]
        return cols + ([self.reported_at] if self.reported_at else [])


class GroundTruthSpec(TableRef):
    """Optional table of planted patterns (synthetic data); read by evaluation only, never training."""

    account_id: Ident = Field("account_id")
    pattern: Ident = Field("pattern")
    is_lookalike: Ident = Field("is_lookalike")


class FeatureSpec(_Strict):
    """The whole spec: source tables and the time windows of the problem."""

    name: str = Field("riskflow", min_length=1, max_length=63)
    horizon_days: int = Field(30, ge=1, le=3650, description="Predict an event in (D, D+H]")
    lookback_days: int = Field(90, ge=1, le=3650, description="Accounts active within W days")
    max_seq_len: int = Field(128, ge=1, le=4096, description="Last L events per account")
    reporting_lag_days: int = Field(14, ge=0, le=3650, description="Max event->report delay")
    transactions: TransactionsSpec
    accounts: AccountsSpec | None = None
    events: EventsSpec
    ground_truth: GroundTruthSpec | None = None

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the spec; recorded with every model."""
        canonical = json.dumps(self.model_dump(mode="json", by_alias=True), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()


def _duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    return sorted({n for n in names if n in seen or seen.add(n)})


def load_spec(path: Path | str) -> FeatureSpec:
    """Read and validate a spec file; every problem is reported at once in one SpecError."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SpecError(f"feature spec {path}: file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"feature spec {path}: invalid TOML: {exc}") from exc
    try:
        return FeatureSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
        )
        raise SpecError(f"feature spec {path}: {problems}") from exc
