"""``image build|lock|sysext|verify|boot`` and ``trace``: the signed MANGOS image, assembled from verified farm
artifacts, checked, and traced back to source commits."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from farm.cli.common import Subparsers, add_command, add_group, json_flag, print_json, release_dir, trusted_keys
from farm.settings import Settings


def _sde(args: argparse.Namespace) -> int:
    """SOURCE_DATE_EPOCH: with ``--lock``, the lock's (the environment may only repeat it)."""
    import os

    from farm.image import lock
    from farm.image.assemble import source_date_epoch

    if getattr(args, "lock", None):
        return lock.load(Path(args.lock)).check_sde(os.environ.get("SOURCE_DATE_EPOCH", ""))
    return source_date_epoch()


def _request(args: argparse.Namespace, settings: Settings) -> Any:
    from farm.image.assemble import Request

    return Request(
        out=Path(args.output),
        release_keys=release_dir(args.release_keys, settings),
        recipes=Path(args.recipes),
        profile=args.profile or "",
        debs=tuple(Path(d) for d in args.deb or ()),
        sde=_sde(args),
        version=args.image_version or "",
        require_agreement=args.require_agreement or 0,
        trust=Path(args.trust) if args.trust else None,
        require_reproducible=args.require_reproducible,
        lock=Path(args.lock) if args.lock else None,
        allow_fallback=args.allow_archive_fallback,
    )


def cmd_image_lock(args: argparse.Namespace, settings: Settings) -> int:
    import shutil

    from farm.fsutil import atomic_write
    from farm.image import assemble, inputs, lock, payload
    from farm.store import open_store
    from farm.trust.keys import trusted_keys

    work = settings.work_dir / "image-lock"
    shutil.rmtree(work, ignore_errors=True)
    try:
        got = inputs.gather(
            store=open_store(settings.store_url),
            recipes_dir=Path(args.recipes),
            trusted=trusted_keys(settings.keys_dir, settings.trusted_keys_dir),
            work=work,
            payload=tuple(payload.PACKAGES),
            profile=args.profile or "",
            local_debs=[Path(d) for d in args.deb or ()],
            fetch=False,
            allow_fallback=args.allow_archive_fallback,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    locked = got.lock(assemble.source_date_epoch())
    out = Path(args.output)
    atomic_write(out, lock.dumps(locked).encode())
    if args.json:
        print_json({"lock": str(out), "digest": got.digest} | locked.to_json())
        return 0
    farm = len(locked.farm())
    for p in locked.packages:
        if p.reason:
            print(f"{p.name}: the archive's {p.version} is locked instead of the farm build ({p.reason})")
    print(f"{out}: {len(locked.packages)} packages locked ({farm} farm-built, {len(locked.packages) - farm} archive)"
          + (f", profile {locked.profile}: {len(locked.profile_packages)} more" if locked.profile else "")
          + f"; SOURCE_DATE_EPOCH {locked.source_date_epoch}")  # fmt: skip
    print(f"build it with: mangos-farm image build --lock {out}")
    return 0


def stage_status(stream: TextIO) -> Callable[[str, float | None], None]:
    """Live status of a long image build: each stage as it starts and ends, with the elapsed time."""
    start = time.monotonic()

    def show(stage: str, seconds: float | None) -> None:
        elapsed = time.monotonic() - start
        if seconds is None:
            stream.write(f"[{elapsed:6.1f}s] {stage} ...\n")
        else:
            stream.write(f"[{elapsed:6.1f}s] {stage} done in {seconds:.1f}s\n")
        stream.flush()

    return show


def cmd_image_build(args: argparse.Namespace, settings: Settings) -> int:
    from farm.image import assemble

    req = _request(args, settings)
    if args.check_inputs:
        got = assemble.check_inputs(req, settings)
        if args.json:
            print_json(got.to_json())
            return 0
        for p in got.packages:
            origin = f"farm {p.recipe}@{p.commit[:12]}" if p.origin == "farm" else "archive"
            origin += f" ({p.reason})" if p.reason else ""
            print(f"{p.name:40} {p.version:32} {origin}")
        farm = len(got.farm())
        print(f"{len(got.packages)} packages verified: {farm} farm-built (signed provenance), "
              f"{len(got.packages) - farm} pinned from the archive")  # fmt: skip
        if got.profile_packages:
            print(f"profile {got.profile}: {len(got.profile_packages)} more archive packages for its sysext")
        if args.lock:
            print(f"exactly as locked in {args.lock} (apt resolved nothing)")
        return 0
    result = assemble.build(req, settings, watcher=stage_status(sys.stderr))
    if args.json:
        print_json(result.to_json())
        return 0
    print(f"image {result.raw}")
    print(f"  version   {result.version}")
    print(f"  root hash {result.root_hash}")
    for path in (result.root, result.verity, result.signature, result.uki, result.sbom, result.sums, result.sums_sig):
        if path is not None:
            print(f"  {path}")
    print("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.stages.items()))
    return 0


def cmd_image_sysext(args: argparse.Namespace, settings: Settings) -> int:
    from farm.image import sysext
    from farm.image.assemble import source_date_epoch
    from farm.trust.release_keys import ReleaseKeys

    keys = ReleaseKeys(release_dir(args.release_keys, settings)).check()
    result = sysext.build(
        args.name, Path(args.dir), Path(args.output), keys=keys, kind=args.type, sde=source_date_epoch()
    )
    if args.json:
        print_json(result.to_json())
    else:
        print(f"{args.type} {result.raw}  root hash {result.root_hash}")
    return 0


def cmd_image_verify(args: argparse.Namespace, settings: Settings) -> int:
    from farm.image.verify import verify_image

    report = verify_image(Path(args.image), cert=Path(args.cert), db_cert=Path(args.db_cert) if args.db_cert else None)
    if args.json:
        print_json(report.to_json())
    else:
        print(f"{report.image}: root hash {report.root_hash}")
        for c in report.checks:
            print(f"  {'ok  ' if c.ok else 'FAIL'} {c.name:24} {c.detail.splitlines()[0] if c.detail else ''}")
        print("verified" if report.ok else "NOT verified")
    return 0 if report.ok else 1


def cmd_trace(args: argparse.Namespace, settings: Settings) -> int:
    from farm.image.trace import trace

    trusted = trusted_keys(settings, args.key)
    result = trace(Path(args.image), args.path, trusted, cert=Path(args.cert) if args.cert else None)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['path']}")
    if result.get("image_signature"):
        print(f"  image    root hash {result['image_root_hash']} signed by the release key: verified")
    print(f"  package  {result['package']} {result['version']} ({result['deb']}, sha256 {result['deb_sha256']})")
    print(f"  file matches the package's md5sums: {result['file_matches_package']}")
    if result["origin"] != "farm":
        print(f"  origin   {result['note']}")
        return 0
    print(f"  recipe   {result['recipe']} (build {result['build_key'][:16]}...)")
    print(f"  source   {result['source']} @ {result['commit']}")
    for patch in result.get("patches", []):
        print(f"  patch    {patch['name']} (sha256 {patch['sha256']})")
    print(f"  signed   by builder key {result['signed_by'][:16]}... ({result['builder']}): verified")
    return 0


def _fallback_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--allow-archive-fallback",
        action="store_true",
        help="take the archive's package instead of a farm build older than it (the SBOM and lock say so)",
    )


def add_image(sub: Subparsers) -> None:
    from farm.cli.image_boot import add_boot

    image = add_group(sub, "image", "assemble, sign and check MANGOS images", "image_cmd")
    sp = add_command(
        image, "build", cmd_image_build, "assemble the signed MANGOS disk image from verified farm artifacts"
    )
    sp.add_argument("-o", "--output", default="out", help="output directory (default out/)")
    sp.add_argument("--release-keys", metavar="DIR", help="release keys (default HOME/release)")
    sp.add_argument("--profile", choices=["docker"], help="also build this profile's sysext")
    sp.add_argument("--recipes", default="recipes", help="Debian recipes whose farm builds go in (default recipes/)")
    sp.add_argument("--deb", action="append", help="a fetched farm .deb (its .intoto.json beside it); repeatable")
    sp.add_argument("--image-version", help="version string (default DATE.INPUTDIGEST)")
    sp.add_argument("--check-inputs", action="store_true", help="only verify the inputs, list them and stop")
    sp.add_argument("--require-agreement", type=int, metavar="K", help="admit only builds K trusted peers attest")
    sp.add_argument("--trust", metavar="PEERS_TOML", help="the peers for --require-agreement")
    sp.add_argument(
        "--require-reproducible",
        action="store_true",
        help="admit only farm builds a varied rebuild reproduced (this farm's recheck or a --trust peer's)",
    )
    sp.add_argument("--lock", metavar="FILE", help="install exactly the packages of this image lock (no apt resolving)")
    _fallback_flag(sp)
    json_flag(sp)

    sp = add_command(
        image, "lock", cmd_image_lock, "resolve the image's packages once and write an image lock (like Cargo.lock)"
    )
    sp.add_argument("-o", "--output", default="image.lock", help="the lock file to write (default image.lock)")
    sp.add_argument("--profile", choices=["docker"], help="also lock this profile's sysext packages")
    sp.add_argument("--deb", action="append", help="a fetched farm .deb (its .intoto.json beside it); repeatable")
    sp.add_argument("--recipes", default="recipes", help="Debian recipes whose farm builds go in (default recipes/)")
    _fallback_flag(sp)
    json_flag(sp)

    sp = add_command(
        image, "sysext", cmd_image_sysext, "a signed system/configuration extension image from a directory"
    )
    sp.add_argument("name", help="extension name (extension-release.NAME)")
    sp.add_argument("dir", help="tree to ship (usr/... for a sysext, etc/... for a confext)")
    sp.add_argument("-o", "--output", default="out", help="output directory (default out/)")
    sp.add_argument("--type", choices=["sysext", "confext"], default="sysext", help="extension kind")
    sp.add_argument("--release-keys", metavar="DIR", help="release keys (default HOME/release)")
    json_flag(sp)

    sp = add_command(image, "verify", cmd_image_verify, "check an image: verity tree, root hash signature, UKI")
    sp.add_argument("image", help="mangos_VERSION.raw")
    sp.add_argument("--cert", required=True, help="the release verity certificate (verity.crt)")
    sp.add_argument("--db-cert", help="the Secure Boot db certificate (db.crt): also check the UKI signature")
    json_flag(sp)

    add_boot(image)


def add_trace(sub: Subparsers) -> None:
    sp = add_command(sub, "trace", cmd_trace, "trace a file in an image to the source commit it was built from")
    sp.add_argument("image", help="mangos_VERSION.raw")
    sp.add_argument("path", help="absolute path inside the image, e.g. /usr/bin/hello")
    sp.add_argument("--key", action="append", help="extra trusted builder public key (PEM); repeatable")
    sp.add_argument("--cert", help="release verity certificate: first check the image's root is the signed one")
    json_flag(sp)


COMMANDS = {"image": add_image, "trace": add_trace}
