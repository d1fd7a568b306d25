"""Settings precedence, the embedded-server rule, and CLI conventions (exit 2, one line)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from riskmodel.db import redact
from riskmodel.settings import Settings


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RISKFLOW_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=full_env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "riskflow.toml"
    toml.write_text('schema = "from_toml"\ntimezone = "Europe/Berlin"\nlate_days = 5\n')
    monkeypatch.setenv("RISKFLOW_CONFIG", str(toml))
    monkeypatch.setenv("RISKFLOW_SCHEMA", "from_env")
    s = Settings()
    assert s.db_schema == "from_env"
    assert s.timezone == "Europe/Berlin" and s.late_days == 5
    assert s.lake == str(Path(".riskflow") / "lake")


def test_only_the_prefixed_variable_sets_the_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RISKFLOW_SCHEMA", raising=False)
    monkeypatch.delenv("RISKFLOW_DB_SCHEMA", raising=False)
    monkeypatch.setenv("RISKFLOW_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("SCHEMA", "other_app")
    monkeypatch.setenv("DB_SCHEMA", "other_app")
    assert Settings().db_schema == "riskflow"
    toml = tmp_path / "riskflow.toml"
    toml.write_text('schema = "from_toml"\n')
    monkeypatch.setenv("RISKFLOW_CONFIG", str(toml))
    assert Settings().db_schema == "from_toml"
    monkeypatch.setenv("RISKFLOW_DB_SCHEMA", "field_name")
    assert Settings().db_schema == "field_name"
    monkeypatch.setenv("RISKFLOW_SCHEMA", "from_env")
    assert Settings().db_schema == "from_env"
    assert Settings(db_schema="keyword").db_schema == "keyword"


def test_unknown_timezone_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISKFLOW_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ValueError, match="Mars/Olympus"):
        Settings()


def test_configured_url_never_starts_embedded_server(database_url: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = Settings(database_url=database_url, home=home)
    from riskmodel.db import database_url as resolve

    assert resolve(settings) == database_url
    cwd = Path(__file__).resolve().parent.parent
    out = _cli(["db", "init", "--demo-source", "--json"],
               {"RISKFLOW_DATABASE_URL": database_url, "RISKFLOW_HOME": str(home)}, cwd)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["schema"] == "riskflow"
    assert not (home / "pg").exists()
    assert "embedded" not in out.stderr


def test_config_names_the_embedded_server_without_starting_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    out = _cli(["config", "--json"], {"RISKFLOW_HOME": str(home)}, Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["database_url"] is None and shown["embedded_postgres"] == str((home / "pg").resolve())
    assert not (home / "pg").exists()


def test_unreachable_database_is_one_line_exit_2(tmp_path: Path) -> None:
    url = "postgresql://bob:s3cret-pw@127.0.0.1:1/nowhere"
    out = _cli(["check-spec"], {"RISKFLOW_DATABASE_URL": url, "RISKFLOW_HOME": str(tmp_path)},
               Path(__file__).resolve().parent.parent)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "s3cret-pw" not in out.stderr and "cannot connect" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_bad_spec_and_bad_arguments_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("horizon_days = 'soon'\n")
    cwd = Path(__file__).resolve().parent.parent
    out = _cli(["check-spec", "--spec", str(bad)], {"RISKFLOW_HOME": str(tmp_path)}, cwd)
    assert out.returncode == 2 and "horizon_days" in out.stderr and "Traceback" not in out.stderr
    out = _cli(["db", "init", "--no-such-flag"], {}, cwd)
    assert out.returncode == 2


def test_redact_hides_passwords() -> None:
    assert redact("postgresql://u:pw@h/db") == "postgresql://u:***@h/db"
    assert "pw" not in redact("host=h password=pw dbname=x")


def test_help_and_config_load_no_heavy_library(tmp_path: Path) -> None:
    """`riskflow --help` and `riskflow config` answer at once: building the parser and printing the
    settings import neither torch, Prefect, Polars, pyarrow nor LightGBM (each command imports what
    it runs)."""
    probe = ("import sys\nfrom flows.cli import main\nmain(['config'])\n"
             "heavy = ('torch', 'prefect', 'polars', 'pyarrow', 'lightgbm')\n"
             "print('HEAVY', [m for m in heavy if m in sys.modules])\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RISKFLOW_")}
    env.update({"RISKFLOW_HOME": str(tmp_path), "PYTHONPATH": str(Path(__file__).parents[1])})
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout and "database_url" in done.stdout


def _run_without_prefect_api(probe: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run `probe` in a fresh Python with no Prefect API configured (own PREFECT_HOME); it must exit 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RISKFLOW_", "PREFECT_"))}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
                "PYTHONPATH": str(Path(__file__).parents[1])})
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_the_cli_starts_prefects_temporary_api_once_and_early(tmp_path: Path) -> None:
    """With no Prefect API configured, `api_started_early` starts the temporary server during the
    imports, and the flow run that follows uses that same server instead of starting another."""
    probe = ("from flows.ephemeral import api_started_early\n"
             "from prefect.server.api.server import SubprocessASGIServer\n"
             "with api_started_early():\n    import flows.nightly_scoring\n"
             "server = SubprocessASGIServer()\n"
             "assert server.running and server.server_process.poll() is None\n"
             "from prefect import flow\n"
             "@flow\ndef one() -> int:\n    return 1\n"
             "print('RESULT', one(), server.port)\n")
    done = _run_without_prefect_api(probe, tmp_path)
    port = done.stdout.split()[-1]
    logs = done.stdout + done.stderr
    assert "RESULT 1" in done.stdout and logs.count("Stopping temporary server") == 1
    assert f"Stopping temporary server on http://127.0.0.1:{port}" in logs


def test_an_early_server_not_handed_to_prefect_is_stopped(tmp_path: Path) -> None:
    """When the block raises, the early server is stopped; one that exits at once is not handed to
    Prefect, and the flow run then starts its own temporary server and runs."""
    probe = ("import subprocess, sys\n"
             "import flows.ephemeral as early\n"
             "spawned = []\n"
             "real_spawn = early._spawn\n"
             "early._spawn = lambda port: spawned.append(real_spawn(port)) or spawned[-1]\n"
             "try:\n    with early.api_started_early():\n        raise RuntimeError('import failed')\n"
             "except RuntimeError:\n    pass\n"
             "print('STOPPED', spawned[0].poll() is not None)\n"
             "early._spawn = lambda port: subprocess.Popen([sys.executable, '-c', 'raise SystemExit(3)'])\n"
             "with early.api_started_early():\n    pass\n"
             "from prefect.server.api.server import SubprocessASGIServer\n"
             "print('HANDED', SubprocessASGIServer().running)\n"
             "from prefect import flow\n"
             "@flow\ndef one() -> int:\n    return 1\n"
             "print('RESULT', one(), SubprocessASGIServer().running)\n")
    done = _run_without_prefect_api(probe, tmp_path)
    assert "STOPPED True" in done.stdout and "HANDED False" in done.stdout
    assert "RESULT 1 True" in done.stdout


def test_with_an_api_configured_nothing_is_started_early(prefect_harness: None) -> None:
    from flows.ephemeral import _temporary_server_needed

    assert _temporary_server_needed() is False


@pytest.mark.parametrize(("args", "env", "toml", "expected"), [
    (["score", "--date", "2099-01-01"], {}, None, "--date=2099-01-01 is after today"),
    (["train", "--as-of", "2099-01-01"], {}, None, "--as-of=2099-01-01 is after today"),
    (["backfill", "--start", "2026-06-29", "--end", "2026-06-27"], {}, None,
     "--end 2026-06-27 is before --start 2026-06-29"),
    (["score", "--spec", "/nonexistent/spec.toml"], {}, None, "/nonexistent/spec.toml: file not found"),
    (["config"], {"RISKFLOW_LAKE_STORAGE_OPTIONS": '{"key": "A", "secret": "S3CRETXYZ",}'}, None,
     'field "lake_storage_options"'),
    (["config"], {}, "n_shards = \n", "riskflow.toml: Invalid value"),
    (["config"], {"RISKFLOW_NIGHTLY_CRON": "every night"}, None,
     "nightly_cron: Value error, cron 'every night'"),
    (["serve", "--dry-run"], {"RISKFLOW_NIGHTLY_CRON": "99 2 * * *"}, None,
     'RISKFLOW_NIGHTLY_CRON: Invalid cron string: "99 2 * * *"'),
    (["extract", "--date", "yesterday"], {}, None, "not a date (YYYY-MM-DD): 'yesterday'"),
])
def test_mistakes_are_refused_in_one_line_before_any_flow_starts(
        tmp_path: Path, args: list[str], env: dict[str, str], toml: str | None, expected: str) -> None:
    """A date after today, a reversed range, a missing spec, unparsable settings or a bad cron: exit 2,
    one line naming the option or setting, no traceback, nothing run (no Prefect server started)."""
    if toml is not None:
        (tmp_path / "riskflow.toml").write_text(toml)
    env = {"RISKFLOW_HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path(__file__).parents[1]), **env}
    out = _cli(args, env, tmp_path)
    lines = out.stderr.strip().splitlines()
    one_line = len(lines) == 1 or lines[0].startswith("usage:")  # argparse prints its usage first
    assert out.returncode == 2 and one_line and expected in lines[-1], out.stderr
    assert "Traceback" not in out.stderr
    assert "S3CRETXYZ" not in out.stderr and "temporary server" not in out.stderr


def test_misspelt_settings_are_named_and_a_missing_config_file_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from riskmodel.errors import ConfigError
    from riskmodel.settings import load_settings, unknown_settings

    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.upper().startswith("RISKFLOW_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("RISKFLOW_SHARDS", "8")
    monkeypatch.setenv("RISKFLOW_FAULT_PAUSE", "x")
    (tmp_path / "riskflow.toml").write_text('nshards = 3\nschema = "kept"\n')
    problems = unknown_settings()
    assert problems == ["unknown setting RISKFLOW_SHARDS is ignored (did you mean RISKFLOW_N_SHARDS?)",
                        "unknown setting riskflow.toml: nshards is ignored (did you mean n_shards?)"]
    assert load_settings().db_schema == "kept"
    monkeypatch.setenv("RISKFLOW_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigError, match="nope.toml: no such file"):
        load_settings()


def test_a_database_without_this_versions_tables_is_refused_before_any_work(initialised: Settings) -> None:
    """A database initialised by an older riskflow (here: without scored_nights) is refused in one
    line naming the table and `riskflow db init`, and init brings it up to date."""
    from riskmodel.db import connect
    from riskmodel.schema import init_database
    from riskmodel.settings import DEMO_SPEC
    from riskmodel.spec import load_spec

    with connect(initialised) as conn:
        conn.execute("DROP TABLE riskflow.scored_nights CASCADE")
        conn.commit()
    env = {"RISKFLOW_DATABASE_URL": initialised.database_url.get_secret_value(),
           "RISKFLOW_HOME": str(initialised.home)}
    cwd = Path(__file__).resolve().parent.parent
    out = _cli(["score", "--date", "2026-06-30"], env, cwd)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "lacks scored_nights" in out.stderr and "riskflow db init" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    init_database(initialised, load_spec(DEMO_SPEC), demo_source=True)
    out = _cli(["backfill", "--start", "2026-06-29", "--end", "2026-06-30"], env, cwd)
    assert "lacks" not in out.stderr and "no champion" in out.stderr
