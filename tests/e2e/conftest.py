from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.conftest import RedisServer, require
from tests.store.conftest import FAKE_CREDENTIALS, REGION, MotoServer

if TYPE_CHECKING:
    from tests.e2e.fleet import Fleet  # imports this module: imported lazily at run time

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "mangos-farm")


def run_cli(
    args: Sequence[str], *, cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``mangos-farm ARGS`` as a user would; a failure (when checked) or any traceback fails the test."""
    proc = subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"mangos-farm {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@dataclass
class Farm:
    """A farm in a temporary directory, driven only through the CLI, as a user would."""

    root: Path
    home: Path
    env: dict[str, str]

    def run(
        self, *args: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli(args, cwd=self.root, env=self.env | (env or {}), check=check)

    def json(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> Any:
        return json.loads(self.run(*args, "--json", env=env, check=check).stdout)


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
    home = root / ".mangos"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_")}
    env |= {"MANGOS_FARM_HOME": str(home), "MANGOS_FARM_WORKERS": "2"}
    farm = Farm(root, home, env)
    farm.run("keys", "generate")
    return farm


# The moto S3 server of the store suite, shared by the fleet tests (one per session).
from tests.store.conftest import moto_server  # noqa: E402, F401


@pytest.fixture
def fleet(tmp_path: Path, redis_server: RedisServer, moto_server: MotoServer) -> Iterator[Fleet]:  # noqa: F811
    """A real fleet (tests/e2e/fleet.py) on a clean Redis and a fresh S3 bucket, its coordinator running."""
    from tests.e2e.fleet import Fleet

    bucket = f"farm-{uuid.uuid4().hex[:12]}"
    moto_server.client.create_bucket(Bucket=bucket)
    aws = FAKE_CREDENTIALS | {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": moto_server.url,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    redis_server.restart()  # a clean broker per test (AOF keeps data across restarts, so flush it)
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    fleet = Fleet(tmp_path, redis_server, f"s3://{bucket}/farm", aws)
    fleet.start_coordinator()
    yield fleet
    fleet.close()


# One MANGOS image per session for the image, boot and cross-validation tests. Registered here, not imported into
# each test module: a fixture imported into several modules is a separate fixture in each, built once per module.
from tests.e2e.image_fixtures import built_image  # noqa: E402, F401
