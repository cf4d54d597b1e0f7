#!/opt/moto/bin/python
"""A stand-in for MinIO's `mc`, enough for compose.yaml's `minio` healthcheck and `minio-setup` script.

    mc alias set NAME URL ACCESS_KEY SECRET_KEY     remember an endpoint (in $HOME/.mc-standin.json)
    mc ready ALIAS                                   exit 0 once the S3 endpoint answers (`local`: 127.0.0.1:9000)
    mc mb [--ignore-existing] ALIAS/BUCKET           create a bucket

Anything else exits 2: the test override must not pretend to run mc commands it does not implement.
"""

import json
import os
import sys
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

STATE = Path(os.environ.get("HOME", "/tmp")) / ".mc-standin.json"
LOCAL = {"url": "http://127.0.0.1:9000", "access": "local", "secret": "local"}


def aliases() -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = json.loads(STATE.read_text()) if STATE.exists() else {}
    return found


def client(alias: str) -> Any:
    a = {"local": LOCAL, **aliases()}[alias]
    return boto3.client(
        "s3",
        endpoint_url=a["url"],
        aws_access_key_id=a["access"],
        aws_secret_access_key=a["secret"],
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def main(argv: list[str]) -> int:
    if argv[:2] == ["alias", "set"] and len(argv) == 6:
        STATE.write_text(
            json.dumps({**aliases(), argv[2]: dict(zip(("url", "access", "secret"), argv[3:], strict=True))})
        )
        return 0
    if argv[:1] == ["ready"] and len(argv) == 2:
        try:
            client(argv[1]).list_buckets()
        except Exception as exc:  # not ready yet
            sys.stderr.write(f"mc ready: {exc}\n")
            return 1
        return 0
    if argv[:1] == ["mb"]:
        ignore = "--ignore-existing" in argv
        (target,) = [a for a in argv[1:] if not a.startswith("--")]
        alias, bucket = target.split("/", 1)
        s3 = client(alias)
        if ignore and bucket in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            return 0
        s3.create_bucket(Bucket=bucket)
        return 0
    sys.stderr.write(f"mc stand-in: unsupported: {' '.join(argv)}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
