"""The end-to-end tests' fleet: the shared fleet (:mod:`tests.lib.fleet`) on an S3 store, with short lease
timeouts so a killed worker's build is taken over within seconds."""

from __future__ import annotations

from pathlib import Path

from tests.lib.fleet import Fleet as _Fleet
from tests.lib.redis_server import RedisServer

E2E_ENV = {"MANGOS_FARM_LEASE_TIMEOUT": "4", "MANGOS_FARM_REQUEUE_AFTER": "60"}


class Fleet(_Fleet):
    def __init__(self, root: Path, redis: RedisServer, store_url: str, aws_env: dict[str, str]) -> None:
        super().__init__(root, redis, store_url, aws_env | E2E_ENV)
