"""Benchmark: S3Store upload/download throughput against plain boto3 transfers, on one moto S3 server.

Run from the repository root::

    .venv/bin/python -m bench.bench_s3 [--size-mib 256] [--repeat 3] [--json]

It starts ``moto_server`` on a free port of 127.0.0.1, writes one file of random bytes, and then, in this one
process against that one endpoint, times for each round:

- ``S3Store.put_file`` (sha256 pass + multipart upload, re-hashed on the way) into a fresh prefix, so the blob is
  really uploaded, and ``S3Store.fetch_blob`` (streamed download, sha256-verified, atomic rename);
- boto3's ``upload_file`` and ``download_file`` (s3transfer: 8 MiB parts, 10 threads) of the same file.

The two sides alternate which goes first. Each throughput is the best round's; the ratio store/boto3 is the figure
of merit (target >= 0.9). Nothing here is a test: timings depend on the machine and on moto, which runs in Python.
Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from farm.store.s3 import S3Store

TARGET_RATIO = 0.9
MiB = 1 << 20
BUCKET = "farm-bench"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_moto(port: int, logfile: Path) -> subprocess.Popen[bytes]:
    with logfile.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"moto_server exited with {proc.returncode}:\n{logfile.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=2):
                return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("moto_server did not answer within 30 s") from None
            time.sleep(0.1)


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=256, help="size of the test file (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per side (default 3)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)

    # Fake credentials for the local moto server only; this process talks to nothing else.
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )  # fmt: skip
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull

    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="farm-bench-s3-") as tmp_name:
        tmp = Path(tmp_name)
        port = free_port()
        endpoint = f"http://127.0.0.1:{port}"
        log(f"starting moto_server on {endpoint}")
        server = start_moto(port, tmp / "moto.log")
        try:
            src = tmp / "payload.bin"
            with src.open("wb") as fh:
                for _ in range(args.size_mib):
                    fh.write(os.urandom(MiB))
            plain = boto3.session.Session().client(
                "s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"})
            )
            plain.create_bucket(Bucket=BUCKET)
            results: dict[str, list[float]] = {"store_up": [], "store_down": [], "boto3_up": [], "boto3_down": []}
            digest = ""

            def store_round(n: int) -> None:
                nonlocal digest
                store = S3Store(f"s3://{BUCKET}/round-{n}", endpoint_url=endpoint)
                store.has_blob("0" * 64)  # the one-time bucket check, outside the timing
                holder: dict[str, Any] = {}
                results["store_up"].append(timed(lambda: holder.setdefault("a", store.put_file(src))))
                digest = holder["a"].digest
                dest = tmp / f"store-{n}.bin"
                results["store_down"].append(timed(lambda: store.fetch_blob(digest, dest)))
                dest.unlink()
                plain.delete_object(Bucket=BUCKET, Key=store.blob_key(digest))

            def boto3_round(n: int) -> None:
                key = f"plain/{n}"
                results["boto3_up"].append(timed(lambda: plain.upload_file(str(src), BUCKET, key)))
                dest = tmp / f"boto3-{n}.bin"
                results["boto3_down"].append(timed(lambda: plain.download_file(BUCKET, key, str(dest))))
                dest.unlink()
                plain.delete_object(Bucket=BUCKET, Key=key)

            for n in range(args.repeat):
                order = (store_round, boto3_round) if n % 2 == 0 else (boto3_round, store_round)
                for fn in order:
                    fn(n)
                log(
                    f"round {n + 1}/{args.repeat}: "
                    + ", ".join(f"{k} {size / MiB / v[-1]:.0f} MiB/s" for k, v in results.items())
                )
        finally:
            server.terminate()
            server.wait(timeout=10)

    best = {k: size / MiB / min(v) for k, v in results.items()}
    report = {
        "size_mib": args.size_mib,
        "rounds": args.repeat,
        "endpoint": "moto_server on 127.0.0.1",
        "mib_per_s": {k: round(v, 1) for k, v in best.items()},
        "seconds": {k: [round(x, 3) for x in v] for k, v in results.items()},
        "ratio_upload": round(best["store_up"] / best["boto3_up"], 3),
        "ratio_download": round(best["store_down"] / best["boto3_down"], 3),
        "target_ratio": TARGET_RATIO,
    }
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(f"S3 throughput, {args.size_mib} MiB file, best of {args.repeat} rounds, moto_server on 127.0.0.1")
        print(f"  upload:   S3Store.put_file   {best['store_up']:7.1f} MiB/s")
        print(f"            boto3 upload_file  {best['boto3_up']:7.1f} MiB/s   ratio {report['ratio_upload']:.2f}")
        print(f"  download: S3Store.fetch_blob {best['store_down']:7.1f} MiB/s")
        print(f"            boto3 download_file{best['boto3_down']:7.1f} MiB/s   ratio {report['ratio_download']:.2f}")
        print(f"  target ratio >= {TARGET_RATIO}")
    ok = report["ratio_upload"] >= TARGET_RATIO and report["ratio_download"] >= TARGET_RATIO  # type: ignore[operator]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
