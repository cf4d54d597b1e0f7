"""One source of truth for the farm's settings.

Each field of :class:`Settings` declares its environment variable and help text; the CLI's ``config`` command,
the worker processes and the README table are all derived from these declarations.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError

ENV_PREFIX = "MANGOS_FARM_"


DEFAULT_HOME = Path(".mangos")


@dataclass(frozen=True)
class Settings:
    home: Path = field(
        default=DEFAULT_HOME, metadata={"help": "state directory: store, keys, source cache, embedded broker"}
    )
    store: str = field(
        default="", metadata={"help": "artifact store: a directory (default HOME/store) or an s3://BUCKET/PREFIX URL"}
    )
    broker: str = field(
        default="", metadata={"help": "Celery broker URL (default: an embedded SQLite broker under HOME)"}
    )
    workers: int = field(default=2, metadata={"help": "build processes the embedded farm starts for a rebuild"})
    builder_id: str = field(
        default="", metadata={"help": "builder identity written into provenance (default: mangos-farm@HOSTNAME)"}
    )
    state: str = field(
        default="",
        metadata={"help": "coordinator state: a redis:// URL (default: the Redis broker) or HOME/state.sqlite"},
    )
    arch: str = field(default="", metadata={"help": "architecture this machine builds for (default: the host's)"})
    lane: str = field(default="rebuild", metadata={"help": "default priority lane: security, interactive, rebuild"})
    lease_timeout: int = field(
        default=30, metadata={"help": "seconds without a heartbeat after which a build is re-dispatched"}
    )
    requeue_after: int = field(
        default=600, metadata={"help": "seconds a dispatched build may wait unstarted on an idle fleet before resend"}
    )
    max_attempts: int = field(default=3, metadata={"help": "attempts per build before it is marked failed"})
    aging: int = field(
        default=600, metadata={"help": "seconds of waiting that lift a rebuild build to interactive, no higher"}
    )
    build_timeout: int = field(
        default=3600, metadata={"help": "wall-clock seconds a single build may run before it is killed"}
    )
    build_memory_mb: int = field(default=4096, metadata={"help": "memory a build step may use (MiB, cgroup)"})
    build_processes: int = field(default=512, metadata={"help": "processes and threads a build step may run"})
    build_scratch_mb: int = field(
        default=8192, metadata={"help": "disk a build may fill: its directory and any single file (MiB)"}
    )
    build_output_mb: int = field(default=2048, metadata={"help": "total size of a build's packed outputs (MiB)"})
    coordinator_key_dir: str = field(
        default="",
        metadata={"help": "where the coordinator's task-signing key lives (default HOME/keys; workers need only "
                  "its coordinator.pub, in HOME/keys)"},
    )  # fmt: skip
    broker_tls_ca: str = field(
        default="", metadata={"help": "rediss:// broker: CA bundle to verify the server (default: system CAs)"}
    )
    broker_tls_cert: str = field(default="", metadata={"help": "rediss:// broker: client certificate (PEM), if any"})
    broker_tls_key: str = field(default="", metadata={"help": "rediss:// broker: client private key (PEM), if any"})

    # -- derived locations -------------------------------------------------------------------------------------
    @property
    def store_url(self) -> str:
        return self.store or str(self.home / "store")

    @property
    def broker_url(self) -> str:
        return self.broker or f"farmsql+sqlite:///{(self.home / 'broker' / 'broker.sqlite').resolve()}"

    @property
    def result_backend(self) -> str:
        if self.broker.startswith(("redis://", "rediss://")):
            return self.broker
        return f"db+sqlite:///{(self.home / 'broker' / 'results.sqlite').resolve()}"

    @property
    def embedded_broker(self) -> bool:
        return not self.broker

    @property
    def state_url(self) -> str:
        if self.state:
            return self.state
        if self.broker.startswith("rediss://"):
            return self.broker + _tls_query(self)
        if self.broker.startswith(("redis://", "rediss://")):
            return self.broker
        return f"sqlite:///{(self.home / 'state.sqlite').resolve()}"

    @property
    def build_arch(self) -> str:
        return self.arch or host_arch()

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def coordinator_keys_dir(self) -> Path:
        return Path(self.coordinator_key_dir) if self.coordinator_key_dir else self.keys_dir

    @property
    def trusted_keys_dir(self) -> Path:
        return self.home / "keys" / "trusted"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def work_dir(self) -> Path:
        return self.home / "work"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def builder(self) -> str:
        return self.builder_id or f"mangos-farm@{socket.gethostname()}"

    # -- loading -----------------------------------------------------------------------------------------------
    @staticmethod
    def env_name(name: str) -> str:
        return ENV_PREFIX + name.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(cls.env_name(f.name))
            if raw is None or raw == "":
                continue
            values[f.name] = _convert(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        if settings.workers < 1:
            raise FarmError(
                E.SETTINGS,
                f"workers must be at least 1, got {settings.workers}",
                field=cls.env_name("workers"),
                hint="set MANGOS_FARM_WORKERS to a positive number",
            )
        return settings

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process (workers)."""
        return {self.env_name(f.name): str(getattr(self, f.name)) for f in fields(self)}

    def with_home(self, home: Path) -> Settings:
        return replace(self, home=home)


def _tls_query(s: Settings) -> str:
    """The broker's TLS settings as redis-py URL parameters, for the coordinator state on a ``rediss://`` broker."""
    from urllib.parse import urlencode

    params = {"ssl_cert_reqs": "required", "ssl_ca_certs": s.broker_tls_ca, "ssl_certfile": s.broker_tls_cert,
              "ssl_keyfile": s.broker_tls_key}  # fmt: skip
    query = urlencode({k: v for k, v in params.items() if v})
    return ("&" if "?" in s.broker else "?") + query


def redact(value: str) -> str:
    """A URL's password replaced by ``***`` (``redis://farm:***@host:6379/0``): for display, never for use."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(value)
        password = parts.password
    except ValueError:
        return value
    if not password:
        return value
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def host_arch() -> str:
    """The Debian name of this machine's architecture."""
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "i686": "i386"}.get(machine, machine)


def _convert(name: str, type_: Any, raw: str) -> Any:
    type_name = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    if type_name == "int":
        try:
            return int(raw)
        except ValueError:
            raise FarmError(
                E.SETTINGS,
                f"expected a whole number, got {raw!r}",
                field=Settings.env_name(name),
                hint="set it to a number such as 4",
            ) from None
    if type_name == "Path":
        return Path(raw)
    return raw


def describe() -> list[dict[str, str]]:
    """Every setting with its variable, default and help: used by ``mangos-farm config`` and the docs."""
    rows = []
    for f in fields(Settings):
        default = f.default if f.default is not MISSING else ""
        rows.append(
            {
                "name": f.name,
                "env": Settings.env_name(f.name),
                "default": str(default),
                "help": f.metadata["help"],
            }
        )
    return rows
