"""Settings: one declaration per field, read from MANGOS_FARM_* variables, round-tripped to child processes."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.settings import ENV_PREFIX, Settings, describe

pytestmark = pytest.mark.unit

FULL_ENV = {
    "MANGOS_FARM_HOME": "/srv/farm",
    "MANGOS_FARM_STORE": "/srv/store",
    "MANGOS_FARM_BROKER": "redis://broker:6379/0",
    "MANGOS_FARM_WORKERS": "8",
    "MANGOS_FARM_BUILDER_ID": "farm@example",
    "MANGOS_FARM_BUILD_TIMEOUT": "120",
    "MANGOS_FARM_STATE": "redis://state:6379/1",
    "MANGOS_FARM_ARCH": "arm64",
    "MANGOS_FARM_LANE": "security",
    "MANGOS_FARM_LEASE_TIMEOUT": "45",
    "MANGOS_FARM_REQUEUE_AFTER": "300",
    "MANGOS_FARM_MAX_ATTEMPTS": "4",
    "MANGOS_FARM_AGING": "900",
    "MANGOS_FARM_BUILD_MEMORY_MB": "2048",
    "MANGOS_FARM_BUILD_PROCESSES": "256",
    "MANGOS_FARM_BUILD_SCRATCH_MB": "4096",
    "MANGOS_FARM_BUILD_OUTPUT_MB": "1024",
    "MANGOS_FARM_COORDINATOR_KEY_DIR": "/etc/farm/coordinator",
    "MANGOS_FARM_BROKER_TLS_CA": "/etc/farm/ca.pem",
    "MANGOS_FARM_BROKER_TLS_CERT": "/etc/farm/client.pem",
    "MANGOS_FARM_BROKER_TLS_KEY": "/etc/farm/client.key",
}


def settings_error(environ: dict[str, str], **overrides: object) -> FarmError:
    with pytest.raises(FarmError) as info:
        Settings.from_env(environ, **overrides)
    assert info.value.code == E.SETTINGS
    assert info.value.hint
    return info.value


def test_defaults_from_an_empty_environment() -> None:
    s = Settings.from_env({})
    assert s == Settings()
    assert s.home == Path(".mangos")
    assert s.workers == 2
    assert s.build_timeout == 3600
    assert s.store == s.broker == s.builder_id == ""


def test_reads_every_variable() -> None:
    s = Settings.from_env(FULL_ENV)
    assert s.home == Path("/srv/farm")
    assert isinstance(s.home, Path)
    assert s.store == "/srv/store"
    assert s.broker == "redis://broker:6379/0"
    assert s.workers == 8
    assert s.builder_id == "farm@example"
    assert s.build_timeout == 120
    assert (s.state_url, s.build_arch, s.lane) == ("redis://state:6379/1", "arm64", "security")
    assert (s.lease_timeout, s.requeue_after, s.max_attempts, s.aging) == (45, 300, 4, 900)


def test_uses_only_the_given_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MANGOS_FARM_WORKERS", "9")
    assert Settings.from_env({}).workers == 2
    assert Settings.from_env().workers == 9  # without an explicit mapping it reads os.environ


def test_ignores_unrelated_and_unprefixed_variables() -> None:
    s = Settings.from_env({"WORKERS": "7", "FARM_WORKERS": "7", "mangos_farm_workers": "7", "HOME": "/root"})
    assert s == Settings()


def test_empty_values_mean_the_default() -> None:
    assert Settings.from_env({"MANGOS_FARM_WORKERS": "", "MANGOS_FARM_HOME": ""}) == Settings()


def test_overrides_win_and_none_is_ignored() -> None:
    s = Settings.from_env(FULL_ENV, workers=3, home=None, builder_id="cli")
    assert s.workers == 3
    assert s.home == Path("/srv/farm")
    assert s.builder_id == "cli"


@pytest.mark.parametrize("variable", ["MANGOS_FARM_WORKERS", "MANGOS_FARM_BUILD_TIMEOUT"])
@pytest.mark.parametrize("raw", ["four", "1.5", "8x", "0x10"])
def test_bad_integer_names_the_variable(variable: str, raw: str) -> None:
    err = settings_error({variable: raw})
    assert err.field == variable
    assert repr(raw) in err.message
    assert variable in err.render()


@pytest.mark.parametrize("raw", ["0", "-1"])
def test_workers_below_one_is_rejected(raw: str) -> None:
    err = settings_error({"MANGOS_FARM_WORKERS": raw})
    assert err.field == "MANGOS_FARM_WORKERS"
    assert raw in err.message


def test_workers_override_below_one_is_rejected() -> None:
    assert settings_error({}, workers=0).field == "MANGOS_FARM_WORKERS"


def test_one_worker_is_fine() -> None:
    assert Settings.from_env({"MANGOS_FARM_WORKERS": "1"}).workers == 1


def test_env_name() -> None:
    assert Settings.env_name("build_timeout") == "MANGOS_FARM_BUILD_TIMEOUT"
    assert ENV_PREFIX == "MANGOS_FARM_"


def test_describe_lists_every_field() -> None:
    rows = describe()
    assert [r["name"] for r in rows] == [f.name for f in fields(Settings)]
    defaults = Settings()
    for row in rows:
        assert set(row) == {"name", "env", "default", "help"}
        assert row["env"] == "MANGOS_FARM_" + row["name"].upper()
        assert row["default"] == str(getattr(defaults, row["name"]))
        assert row["help"].strip()
    assert {r["env"] for r in rows} == set(FULL_ENV)


def test_to_env_round_trips() -> None:
    original = Settings.from_env(FULL_ENV)
    env = original.to_env()
    assert env == FULL_ENV
    assert Settings.from_env(env) == original


def test_to_env_round_trips_the_defaults() -> None:
    env = Settings().to_env()
    assert set(env) == set(FULL_ENV)
    assert all(isinstance(v, str) for v in env.values())
    assert Settings.from_env(env) == Settings()


def test_with_home() -> None:
    s = Settings.from_env(FULL_ENV).with_home(Path("/elsewhere"))
    assert s.home == Path("/elsewhere")
    assert s.workers == 8
    assert s.keys_dir == Path("/elsewhere/keys")


def test_derived_locations() -> None:
    s = Settings(home=Path("/h"))
    assert s.store_url == "/h/store"
    assert s.keys_dir == Path("/h/keys")
    assert s.trusted_keys_dir == Path("/h/keys/trusted")
    assert s.cache_dir == Path("/h/cache")
    assert s.work_dir == Path("/h/work")
    assert s.runs_dir == Path("/h/runs")
    assert s.embedded_broker
    assert s.broker_url == "farmsql+sqlite:////h/broker/broker.sqlite"
    assert s.result_backend == "db+sqlite:////h/broker/results.sqlite"
    assert s.builder.startswith("mangos-farm@")


def test_explicit_store_broker_and_builder() -> None:
    s = Settings.from_env(FULL_ENV)
    assert s.store_url == "/srv/store"
    assert not s.embedded_broker
    assert s.broker_url == "redis://broker:6379/0"
    assert s.result_backend == "redis://broker:6379/0"
    assert s.builder == "farm@example"


def test_non_redis_broker_keeps_a_sqlite_result_backend() -> None:
    s = Settings(home=Path("/h"), broker="amqp://rabbit//")
    assert s.broker_url == "amqp://rabbit//"
    assert s.result_backend == "db+sqlite:////h/broker/results.sqlite"
