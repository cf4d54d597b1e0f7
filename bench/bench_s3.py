"""Benchmark: S3Store upload/download throughput against plain boto3 transfers, on one moto S3 server.

Run from the repository root::

    .venv/bin/python -m bench.bench_s3 [--size-mib 256] [--repeat 5] [--json]

It starts ``moto_server`` on a free port of 127.0.0.1 (:mod:`tests.lib.moto`), writes one file of random bytes,
hashing it as it writes it (as a packer does), and then, in this one process against that one endpoint, times for
each round:

- ``S3Store.put_file(path, sha256=...)`` with the digest from the writer: one pass, the file hashed as it is sent
  straight to its final name (the figure of merit), into a fresh prefix so the blob is really uploaded;
- ``S3Store.put_file(path)`` without a digest: the file is hashed first (S3 needs the name before the first byte),
  then sent and hashed again (reported beside it);
- ``S3Store.fetch_blob`` (streamed download, sha256-verified, atomic rename);
- boto3's ``upload_file`` and ``download_file`` (s3transfer: 8 MiB parts, 10 threads) of the same file.

The store and boto3 alternate which goes first. It reports each side's best round, and the ratio store/boto3 both
as the median of the per-round ratios (the figure of merit, target >= 0.95 for the one-pass upload and the
download; the exit status is 1 below it) and as best-vs-best. Nothing here is a test: timings depend on the machine
and on moto, a Python server that shares the CPU with this process. Progress goes to stderr, the report to stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import machine_state, progress, workdir
from bench._common import parser as bench_parser
from farm.store.base import Artifact
from farm.store.s3 import S3Store
from tests.lib.moto import FAKE_CREDENTIALS, REGION, MotoServer, s3_client

TARGET_RATIO = 0.95
MiB = 1 << 20
BUCKET = "farm-bench"


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run_rounds(endpoint: str, src: Path, digest: str, tmp: Path, repeat: int) -> dict[str, list[float]]:
    """Seconds per round for each of store_up (digest given), store_up_hash_first, store_down, boto3_up and
    boto3_down."""
    size_mib = src.stat().st_size / MiB
    plain = s3_client(endpoint)
    plain.create_bucket(Bucket=BUCKET)
    names = ("store_up", "store_up_hash_first", "store_down", "boto3_up", "boto3_down")
    results: dict[str, list[float]] = {k: [] for k in names}

    def fresh(name: str) -> S3Store:
        store = S3Store(f"s3://{BUCKET}/{name}", endpoint_url=endpoint)  # a fresh prefix: a real upload
        store.has_blob("0" * 64)  # the one-time bucket check, outside the timing
        return store

    def store_round(n: int) -> None:
        store = fresh(f"round-{n}")
        artifacts: list[Artifact] = []
        results["store_up"].append(timed(lambda: artifacts.append(store.put_file(src, sha256=digest))))
        assert artifacts[0].digest == digest
        dest = tmp / f"store-{n}.bin"
        results["store_down"].append(timed(lambda: store.fetch_blob(digest, dest)))
        dest.unlink()
        plain.delete_object(Bucket=BUCKET, Key=store.blob_key(digest))
        second = fresh(f"round-{n}-hash-first")
        results["store_up_hash_first"].append(timed(lambda: second.put_file(src)))
        plain.delete_object(Bucket=BUCKET, Key=second.blob_key(digest))

    def boto3_round(n: int) -> None:
        key = f"plain/{n}"
        results["boto3_up"].append(timed(lambda: plain.upload_file(str(src), BUCKET, key)))
        dest = tmp / f"boto3-{n}.bin"
        results["boto3_down"].append(timed(lambda: plain.download_file(BUCKET, key, str(dest))))
        dest.unlink()
        plain.delete_object(Bucket=BUCKET, Key=key)

    for n in range(repeat):
        for fn in (store_round, boto3_round) if n % 2 == 0 else (boto3_round, store_round):
            fn(n)
        progress(
            f"round {n + 1}/{repeat}: " + ", ".join(f"{k} {size_mib / v[-1]:.0f} MiB/s" for k, v in results.items())
        )
    return results


def summarize(results: dict[str, list[float]], size_mib: int) -> dict[str, Any]:
    best = {k: size_mib / min(v) for k, v in results.items()}
    hash_first = best.pop("store_up_hash_first")

    # Each round times both sides back to back, so a per-round ratio cancels most of moto's drift between rounds.
    def paired(store: str, boto3: str) -> float:
        return statistics.median(b / s for s, b in zip(results[store], results[boto3], strict=True))

    return {
        "size_mib": size_mib,
        "rounds": len(results["store_up"]),
        "endpoint": "moto_server on 127.0.0.1",
        "best_mib_per_s": {k: round(v, 1) for k, v in best.items()},
        "best_mib_per_s_hash_first": round(hash_first, 1),
        "seconds": {k: [round(x, 3) for x in v] for k, v in results.items()},
        "ratio_upload_best": round(best["store_up"] / best["boto3_up"], 3),
        "ratio_download_best": round(best["store_down"] / best["boto3_down"], 3),
        "ratio_upload": round(paired("store_up", "boto3_up"), 3),
        "ratio_upload_hash_first": round(paired("store_up_hash_first", "boto3_up"), 3),
        "ratio_download": round(paired("store_down", "boto3_down"), 3),
        "target_ratio": TARGET_RATIO,
    }


def print_report(r: dict[str, Any]) -> None:
    best = r["best_mib_per_s"]
    print(f"S3 throughput, {r['size_mib']} MiB file, {r['rounds']} rounds, {r['endpoint']} (best round)")
    print(f"  upload:   S3Store.put_file, digest given   {best['store_up']:7.1f} MiB/s")
    print(f"            S3Store.put_file, hash first     {r['best_mib_per_s_hash_first']:7.1f} MiB/s")
    print(f"            boto3 upload_file                {best['boto3_up']:7.1f} MiB/s")
    print(f"  download: S3Store.fetch_blob               {best['store_down']:7.1f} MiB/s")
    print(f"            boto3 download_file              {best['boto3_down']:7.1f} MiB/s")
    print("  ratio S3Store/boto3          median of per-round ratios   best vs best")
    print(f"    upload (digest given)      {r['ratio_upload']:10.2f}                 {r['ratio_upload_best']:6.2f}")
    print(f"    upload (hash first)        {r['ratio_upload_hash_first']:10.2f}")
    print(f"    download                   {r['ratio_download']:10.2f}                 {r['ratio_download_best']:6.2f}")
    print(f"  target: median ratio >= {TARGET_RATIO} (upload with the digest given, download)")


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("bench_s3", __doc__)
    parser.add_argument("--size-mib", type=int, default=256, help="size of the test file (default 256)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds per side (default 5)")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.repeat < 1:
        parser.error("--size-mib and --repeat must be at least 1")

    # Fake credentials for the local moto server only; this process talks to nothing else.
    os.environ.update(FAKE_CREDENTIALS, AWS_DEFAULT_REGION=REGION)
    os.environ.update(dict.fromkeys(("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"), os.devnull))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        os.environ.pop(name, None)

    machine = machine_state()
    with workdir("farm-bench-s3-", args.keep) as tmp:
        src = tmp / "payload.bin"
        writer_hash = hashlib.sha256()  # what a packer computes while it writes its output
        with src.open("wb") as fh:
            for _ in range(args.size_mib):
                chunk = os.urandom(MiB)
                writer_hash.update(chunk)
                fh.write(chunk)
        progress("starting moto_server")
        # Objects in memory, not in /tmp; moto as it is (no write serialization), so uploads run in parallel.
        env = os.environ | {"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(4 << 30)}
        server = MotoServer.start(tmp / "moto.log", env, serialize_writes=False)
        try:
            results = run_rounds(server.url, src, writer_hash.hexdigest(), tmp, args.repeat)
        finally:
            server.stop()

    report = summarize(results, args.size_mib) | {"machine": machine}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    return 0 if min(report["ratio_upload"], report["ratio_download"]) >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
