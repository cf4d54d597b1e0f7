"""Fixtures of the end-to-end tests: the demo farm, a fleet on a clean Redis and a fresh S3 bucket, one image."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.fleet import Fleet
from tests.lib.cli import CLI, REPO, Farm, run_cli
from tests.lib.moto import MotoServer, s3_env
from tests.lib.redis_server import RedisServer
from tests.lib.tools import require

__all__ = ["CLI", "REPO", "Farm", "run_cli"]


@pytest.fixture(scope="session")
def demo_farm(tmp_path_factory: pytest.TempPathFactory) -> Farm:
    """The repository's own demo recipes and demo sources, laid out as in the checkout, with a fresh home."""
    require("bwrap")
    require("git")
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(REPO / "recipes", root / "recipes", ignore=shutil.ignore_patterns("debian"))  # git demo only
    shutil.copytree(REPO / "demo" / "src", root / "demo" / "src")
    shutil.copy(REPO / "demo" / "make_sources.py", root / "demo" / "make_sources.py")
    subprocess.run([sys.executable, "demo/make_sources.py", "demo/git"], cwd=root, check=True, capture_output=True)
    farm = Farm.at(root, root / ".mangos", MANGOS_FARM_WORKERS="2")
    farm.run("keys", "generate")
    return farm


# The moto S3 server of the store suite, shared by the fleet tests (one per session).
from tests.store.conftest import moto_server  # noqa: E402, F401


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer, moto_server: MotoServer) -> Iterator[Fleet]:  # noqa: F811
    """A real fleet (:mod:`tests.e2e.fleet`) on a clean Redis and a fresh S3 bucket, its coordinator running."""
    bucket = f"farm-{uuid.uuid4().hex[:12]}"
    moto_server.client.create_bucket(Bucket=bucket)
    redis_server.fresh()
    fleet = Fleet(tmp_path, redis_server, f"s3://{bucket}/farm", s3_env(moto_server.url))
    fleet.start_coordinator()
    yield fleet
    fleet.close()


# One MANGOS image per session for the image, boot and cross-validation tests. Registered here, not imported into
# each test module: a fixture imported into several modules is a separate fixture in each, built once per module.
from tests.e2e.image_fixtures import built_image  # noqa: E402, F401
