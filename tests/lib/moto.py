"""A moto S3 server on a free port of 127.0.0.1, and a client of it that ignores the environment.

The server runs ``tests/store/moto_launcher.py`` (moto with its writes serialized, so conditional writes are
atomic as on AWS S3). The credentials are fake: the server accepts any.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from tests.lib.tools import free_port, stop

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

LAUNCHER = Path(__file__).resolve().parents[1] / "store" / "moto_launcher.py"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
REGION = "us-east-1"
SERVER_START_TIMEOUT = 30.0


def s3_client(endpoint: str) -> S3Client:
    """A client of the server at ``endpoint`` that does not depend on the environment."""
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


def s3_env(endpoint: str) -> dict[str, str]:
    """The AWS environment of a process that should reach the server at ``endpoint`` and nothing else."""
    return FAKE_CREDENTIALS | {
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def start_moto(
    port: int, log: Path, env: Mapping[str, str] | None = None, *, serialize_writes: bool = True
) -> subprocess.Popen[bytes]:
    """``moto_server`` on ``port``; through the launcher (writes serialized) unless ``serialize_writes`` is off,
    as a throughput measurement needs."""
    program = [str(LAUNCHER)] if serialize_writes else ["-m", "moto.server"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, *program, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
        )


def wait_until_up(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = SERVER_START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the moto server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the moto server did not answer within {timeout:g} s: {exc}") from exc
            time.sleep(0.1)


@dataclass
class MotoServer:
    url: str
    process: subprocess.Popen[bytes]
    client: S3Client

    @classmethod
    def start(cls, log: Path, env: Mapping[str, str] | None = None, *, serialize_writes: bool = True) -> MotoServer:
        """Start a server (its output into ``log``) and wait until it answers."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_moto(port, log, env, serialize_writes=serialize_writes)
        try:
            wait_until_up(url, process, log)
        except BaseException:
            stop(process)
            raise
        return cls(url=url, process=process, client=s3_client(url))

    def stop(self) -> None:
        stop(self.process)
