"""One typed place for configuration: `RISKFLOW_*` environment variables over an optional TOML file.

The file is `riskflow.toml` in the working directory, or the path in `RISKFLOW_CONFIG`.
Environment variables always win over the file.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from riskmodel.errors import ConfigError

DEMO_SPEC = Path(__file__).parent / "data" / "demo_spec.toml"
log = logging.getLogger("riskflow.settings")


# Schema and role names: quoted wherever they are used, and also kept free of what could end an SQL
# comment or a dollar-quoted block in sql/*.sql whatever the quoting (a line break, "$", "*", "/",
# "\"); at most 63 bytes, Postgres' limit. "role@corp.example" and non-ASCII letters are fine.
IDENTIFIER = re.compile(r"[^\x00-\x1f\x7f$*/\\]+")
IDENTIFIER_BYTES = 63
# A cron schedule's shape: five fields (six with seconds) or a nickname such as "@daily"; Prefect
# checks the values when `riskflow serve` builds its deployments.
CRON_FIELDS = (5, 6)
CRON_FIELD = re.compile(r"[0-9A-Za-z*,/?#-]+")
SCHEMA_VARIABLE = "RISKFLOW_SCHEMA"
SCHEMA_KEY = "schema"


def config_file() -> Path:
    """The TOML settings file riskflow reads (it need not exist)."""
    return Path(os.environ.get("RISKFLOW_CONFIG", "riskflow.toml"))


def _schema_from_environment(values: dict[str, Any]) -> dict[str, Any]:
    variables = {name.upper(): value for name, value in os.environ.items()}
    if SCHEMA_VARIABLE in variables:
        values["db_schema"] = variables[SCHEMA_VARIABLE]
    return values


def _schema_from_file(values: dict[str, Any]) -> dict[str, Any]:
    if SCHEMA_KEY in values:
        values["db_schema"] = values.pop(SCHEMA_KEY)
    return values


class SchemaNamedSource(PydanticBaseSettingsSource):
    """A settings source that files the schema's documented name (`RISKFLOW_SCHEMA`, TOML key
    `schema`) under the field's own, `db_schema`. The field has no aliases: pydantic-settings reads
    every alias as a bare environment variable too, so an unrelated `SCHEMA` or `DB_SCHEMA` would
    move riskflow's tables."""

    def __init__(self, settings_cls: type[BaseSettings], inner: PydanticBaseSettingsSource,
                 rename: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        super().__init__(settings_cls)
        self.inner, self.rename = inner, rename

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Field lookups go to the wrapped source."""
        return self.inner.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        """The wrapped source's values with the schema under `db_schema`."""
        return self.rename(self.inner())


class Settings(BaseSettings):
    """Every knob riskflow has. Field `x` is read from `RISKFLOW_X` or key `x` in the TOML file."""

    model_config = SettingsConfigDict(
        env_prefix="RISKFLOW_", extra="ignore", populate_by_name=True, frozen=True
    )

    database_url: SecretStr | None = Field(
        None, description="Postgres URL; unset starts an embedded Postgres under home/pg."
    )
    home: Path = Field(Path(".riskflow"), description="riskflow's own files.")
    lake_url: str | None = Field(None, description="Parquet lake folder or fsspec URL.")
    lake_storage_options: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="fsspec options for an object-store lake (JSON in the env), e.g. endpoint_url, "
        "key, secret, region; values are secret: never shown in logs or errors.",
    )
    model_dir: Path | None = Field(None, description="Model artifacts folder.")
    report_dir: Path | None = Field(
        None, description="Images the reports point to: each retrain's ROC, precision-recall and "
        "calibration curves, each night's score distribution.")
    db_schema: str = Field(
        "riskflow", description="Schema of the tables riskflow owns (RISKFLOW_SCHEMA, TOML key schema).")
    spec: Path = Field(DEMO_SPEC, description="Feature spec TOML file.")
    timezone: str = Field("UTC", description="Business time zone for score and lake dates.")

    reader_role: str = Field("riskflow_reader", description="Role with SELECT on sources.")
    writer_role: str = Field("riskflow_writer", description="Role owning riskflow's schema.")
    analyst_role: str = Field(
        "riskflow_analyst", description="Role that reads the analyst views and functions only.")
    run_as_writer: bool = Field(
        True, description="Pipeline connections `SET ROLE` to the writer role."
    )

    late_days: int = Field(3, ge=0, le=60, description="Days re-extracted to catch late posts.")
    max_bad_fraction: float = Field(
        0.01, ge=0.0, le=1.0, description="Quarantined share of a batch that fails the run."
    )
    n_shards: int = Field(4, ge=1, le=4096, description="Account-hash shards for sequences.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Inference device.")
    torch_threads: int = Field(0, ge=0, description="CPU threads for torch; 0 = torch default.")
    score_batch_size: int | None = Field(
        None, ge=1, description="Accounts per inference batch; unset: 1024 on the CPU, 4096 on CUDA."
    )
    score_precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="Inference precision: auto = bf16 on CUDA, fp32 on CPU; bf16 = bf16 on a "
        "CPU with native bf16 (AMX or AVX512-BF16) too; fp32 = never bf16. bf16 is checked against fp32 "
        "on a sample.")
    lock_timeout_ms: int = Field(2000, ge=1, description="Bound on lock waits at swap time.")
    write_split_rows: int = Field(
        50_000, ge=0, description="Nights of at least this many scores load as two account-range halves "
        "over two connections at once; 0 = one connection.")
    writer_idle_seconds: float = Field(
        60.0, ge=0.0, description="How long a score write's connections stay open for the next write in "
        "the same process (a backfill, a shadow night); 0 = closed after each write.")
    retention_days: int = Field(400, ge=1, description="Score partitions older are dropped.")
    nightly_cron: str = Field("0 2 * * *", description="When `riskflow serve` runs nightly scoring.")
    retrain_cron: str = Field("0 4 * * 0", description="When `riskflow serve` runs the weekly retrain.")
    realised_ap_floor: float = Field(
        0.05, ge=0.0, le=1.0, description="Alert when the realised average precision of matured scores "
        "falls below this."
    )
    realised_auc_floor: float = Field(
        0.55, ge=0.0, le=1.0,
        description="Alert when the realised ROC-AUC of matured scores falls below this.",
    )
    realised_min_positives: int = Field(
        30, ge=1, le=10**9,
        description="Matured positives a served night needs before its realised performance may alert; "
        "with fewer, a value below the floor is only noted.",
    )
    reason_min_band: Literal["low", "medium", "high"] = Field(
        "medium", description="Reason codes for accounts in this band or above."
    )
    task_runner: Literal["thread", "dask"] = Field(
        "thread", description="Where flow fan-out runs: threads in the flow process, or a Dask cluster."
    )
    dask_address: str | None = Field(
        None, description="Scheduler of an existing Dask cluster; unset with `dask` starts a local one."
    )
    dask_workers: int = Field(2, ge=1, le=256, description="Worker processes of a local Dask cluster.")
    dask_gpus_per_task: float = Field(
        0.0, ge=0.0, le=64.0, description="Dask `GPU` resource each scoring task claims (0 = none)."
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"RISKFLOW_TIMEZONE: unknown time zone {value!r}") from exc
        return value

    @field_validator("db_schema", "reader_role", "writer_role", "analyst_role")
    @classmethod
    def _plain_identifier(cls, value: str) -> str:
        if not IDENTIFIER.fullmatch(value) or len(value.encode()) > IDENTIFIER_BYTES:
            raise ValueError(f"identifier {value!r} must be 1..{IDENTIFIER_BYTES} bytes without line "
                             "breaks or other control characters, '$', '*', '/' or '\\'")
        return value

    @field_validator("nightly_cron", "retrain_cron")
    @classmethod
    def _five_cron_fields(cls, value: str) -> str:
        fields = value.split()
        nickname = len(fields) == 1 and value.startswith("@")
        shaped = len(fields) in CRON_FIELDS and all(CRON_FIELD.fullmatch(f) for f in fields)
        if not (nickname or shaped):
            raise ValueError(f"cron {value!r} must be five fields (minute hour day month weekday) "
                             "like '0 2 * * *', or a nickname like '@daily'")
        return value

    @model_validator(mode="after")
    def _distinct_roles(self) -> Settings:
        roles = {"reader_role": self.reader_role, "writer_role": self.writer_role,
                 "analyst_role": self.analyst_role}
        if len(set(roles.values())) < len(roles):
            raise ValueError(f"the reader, writer and analyst roles must differ (each holds different "
                             f"rights): {roles}")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = TomlConfigSettingsSource(settings_cls, toml_file=config_file())
        return (init_settings, SchemaNamedSource(settings_cls, env_settings, _schema_from_environment),
                SchemaNamedSource(settings_cls, toml, _schema_from_file))

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Settings:
        """A copy with `update` applied; derived values (`lake`, `models`, `tz`) are recomputed for it,
        not carried over from this instance's cache (a copied cache kept the old lake after an update)."""
        copy = super().model_copy(update=update, deep=deep)
        for name, member in vars(Settings).items():
            if isinstance(member, cached_property):
                copy.__dict__.pop(name, None)
        return copy

    @cached_property
    def lake(self) -> str:
        """The lake root as a string path or URL."""
        return self.lake_url or str(self.home / "lake")

    @cached_property
    def models(self) -> Path:
        """Folder holding one sub-folder per model version."""
        return self.model_dir or self.home / "models"

    @cached_property
    def reports(self) -> Path:
        """Folder of report images: `<model version>/` per retrain, `night-<date>/` per scored night."""
        return self.report_dir or self.home / "reports"

    @cached_property
    def tz(self) -> ZoneInfo:
        """The business time zone."""
        return ZoneInfo(self.timezone)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment and TOML file; keyword overrides win over both. A
    `RISKFLOW_CONFIG` naming no file is refused; unknown `RISKFLOW_*` variables and TOML keys are
    warned about once (a misspelt setting would otherwise be ignored in silence)."""
    named = os.environ.get("RISKFLOW_CONFIG")
    if named and not Path(named).is_file():
        raise ConfigError(f"RISKFLOW_CONFIG={named}: no such file")
    variables = tuple(sorted(n for n in os.environ if n.upper().startswith("RISKFLOW_")))
    _warn_unknown(variables, str(config_file()))
    return Settings(**overrides)


# Variables riskflow reads besides the settings' own (tooling, tests, fault injection).
OTHER_VARIABLES = frozenset({"RISKFLOW_CONFIG", SCHEMA_VARIABLE, "RISKFLOW_CHECKOUT",
                             "RISKFLOW_TEST_DATABASE_URL"})
OTHER_PREFIXES = ("RISKFLOW_FAULT_",)


def unknown_settings() -> list[str]:
    """A line for each `RISKFLOW_*` variable and `riskflow.toml` key that names no setting, with the
    closest setting when one is close."""
    fields = {name.upper() for name in Settings.model_fields}
    problems = []
    for name in sorted(os.environ):
        upper = name.upper()
        if not upper.startswith("RISKFLOW_") or upper in OTHER_VARIABLES or upper.startswith(OTHER_PREFIXES):
            continue
        if upper.removeprefix("RISKFLOW_") not in fields:
            problems.append(_unknown(name, upper.removeprefix("RISKFLOW_"), fields, "RISKFLOW_"))
    path = config_file()
    if path.is_file():
        try:
            keys = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError:
            keys = {}
        for key in sorted(keys):
            if key.upper() not in fields and key != SCHEMA_KEY:
                problems.append(_unknown(f"{path}: {key}", key.upper(), fields, ""))
    return problems


def _unknown(where: str, name: str, fields: set[str], prefix: str) -> str:
    close = difflib.get_close_matches(name, sorted(fields), n=1)
    hint = f" (did you mean {prefix}{close[0] if prefix else close[0].lower()}?)" if close else ""
    return f"unknown setting {where} is ignored{hint}"


@functools.cache
def _warn_unknown(variables: tuple[str, ...], config: str) -> None:
    """Log `unknown_settings()` once per set of `RISKFLOW_*` variable names and config file: every
    task loads the settings, and the file need not be parsed again for each."""
    del variables, config  # the cache key only
    for problem in unknown_settings():
        log.warning("%s", problem)
