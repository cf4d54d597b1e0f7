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
from farm.cli.image_installer import add_installer
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
        kernel=getattr(args, "kernel", None) or "",
        slot_size=getattr(args, "slot_size", None) or 0,
        systemd=SYSTEMD[args.systemd],
    )


SYSTEMD = {"bookworm": "", "backports": "backports"}  # --systemd NAME -> Request.systemd (farm.image.extensions)


def _systemd_flag(sp: argparse.ArgumentParser) -> None:
    what = "bookworm's 252 (default), or backports' 254: kernel-checked confext/sysext, image policies (with --kernel)"
    sp.add_argument("--systemd", choices=list(SYSTEMD), default="bookworm", help=f"the image's systemd: {what}")


def _size(text: str) -> int:
    """A size in bytes, or with a binary K, M or G suffix (``--slot-size 4G``)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    scale = units.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) == 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a size (bytes, or a number with K, M or G)")
    return int(digits) * scale


def cmd_image_lock(args: argparse.Namespace, settings: Settings) -> int:
    import shutil

    from farm.fsutil import atomic_write
    from farm.image import assemble, extensions, inputs, lock, payload
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
            payload=extensions.packages(tuple(payload.PACKAGES), SYSTEMD[args.systemd]),
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


def _coverage(packages: Any, recipes: dict[str, str], args: argparse.Namespace, settings: Settings) -> Any:
    from farm.image import coverage
    from farm.store import open_store

    store = open_store(settings.store_url)
    return coverage.measure(packages, recipes=recipes, recipes_dir=Path(args.recipes), store=store)


def cmd_image_build(args: argparse.Namespace, settings: Settings) -> int:
    from farm.image import assemble, coverage, inputs

    req = _request(args, settings)
    if args.check_inputs or args.require_farm or args.min_farm is not None:  # the coverage is checked before a build
        got = assemble.check_inputs(req, settings)
        cov, profile_cov = _coverage(got.packages, dict(got.recipes), args, settings), None
        if got.profile_packages:
            profile_cov = _coverage(got.profile_packages, dict(got.recipes), args, settings)
        coverage.check(cov, require_all=args.require_farm, min_percent=args.min_farm)
    if args.check_inputs:
        if args.json:
            print_json(got.to_json() | {"coverage": cov.to_json()}
                       | ({"profile_coverage": profile_cov.to_json()} if profile_cov else {}))  # fmt: skip
            return 0
        why = {e.package: e.reason for e in cov.archive()}
        for p in got.packages:
            origin = f"farm {p.recipe}@{p.commit[:12]}" if p.origin == "farm" else f"archive ({why[p.name]})"
            print(f"{p.name:40} {p.version:32} {origin}")
        farm = len(got.farm())
        print(f"{len(got.packages)} packages verified: {farm} farm-built (signed provenance), "
              f"{len(got.packages) - farm} pinned from the archive")  # fmt: skip
        print(cov.line())
        if profile_cov:
            print(f"profile {got.profile} (its sysext): {len(got.profile_packages)} more, {profile_cov.line()}")
        if args.lock:
            print(f"exactly as locked in {args.lock} (apt resolved nothing)")
        return 0
    result = assemble.build(req, settings, watcher=stage_status(sys.stderr))
    recipes = inputs.debian_recipes(req.recipes) if req.recipes.is_dir() else {}
    cov = _coverage(coverage.manifest_packages(result.manifest), recipes, args, settings)
    if args.json:
        print_json(result.to_json() | {"coverage": cov.to_json()})
        return 0
    print(f"image {result.raw}")
    print(f"  version   {result.version}")
    print(f"  root hash {result.root_hash}")
    for path in (result.root, result.verity, result.signature, result.uki, result.sbom, result.sums, result.sums_sig):
        if path is not None:
            print(f"  {path}")
    print("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.stages.items()))
    print(f"  {cov.line()}")
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


def cmd_image_publish(args: argparse.Namespace, settings: Settings) -> int:
    from farm.image.publish import publish
    from farm.trust.release_keys import ReleaseKeys

    keys = ReleaseKeys(release_dir(args.release_keys, settings))
    next_key = Path(args.next_key) if args.next_key else None
    done = publish(Path(args.out), args.output, keys, settings.work_dir / "image-publish", next_key)
    if args.json:
        print_json(done.to_json())
        return 0
    print(f"published {done.staged.version} to {done.url} ({len(done.channel.releases)} releases in channel.json)")
    for f in done.staged.release.files:
        print(f"  {f.size:>12}  {f.name}")
    print(f"  block map: {done.staged.allocated} bytes allocated of {done.staged.image_size}")
    if done.staged.release.next_key:
        print(f"  announces the next release key {done.staged.release.next_key}")
    return 0


def cmd_trace(args: argparse.Namespace, settings: Settings) -> int:
    from farm.image.trace import trace

    if args.all == bool(args.path):
        from farm.errors import E, FarmError

        raise FarmError(E.IMAGE_TRACE, "give either a PATH or --all", field="PATH", hint="e.g. 'trace IMAGE --all'")
    trusted = trusted_keys(settings, args.key)
    if args.all:
        return _trace_all(args, trusted)
    result = trace(Path(args.image), args.path, trusted, cert=Path(args.cert) if args.cert else None)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['path']}")
    if result.get("image_signature"):
        print(f"  image    root hash {result['image_root_hash']} signed by the release key: verified")
    if "kernel" in result:  # uki:.linux (farm.image.trace.trace_kernel)
        print(f"  kernel   the UKI's .linux, sha256 {result['linux_sha256']}")
        print(f"  recipe   {result['recipe']} {result['version']} (build {result['build_key'][:16]}...)")
        print(f"  compiled {result['compiled_by']['recipe']} (build {result['compiled_by']['build_key'][:16]}...)")
        print(f"  source   {result['source']} @ {result['commit']}")
        is_release = result.get("certificate_is_release_cert")
        cert_note = "" if is_release is None else ", the release certificate" if is_release else ", NOT the release one"
        print(f"  cert     sha256 {result['certificate_sha256']}{cert_note} (inserted into the kernel)")
        print(f"  signed   by builder key {result['signed_by'][:16]}... ({result['builder']}): verified")
        return 0
    print(f"  package  {result['package']} {result['version']} ({result['deb']}, sha256 {result['deb_sha256']})")
    print(f"  file matches the package's md5sums: {result['file_matches_package']}")
    if result["origin"] != "farm":
        print(f"  origin   {result['note']}")
        return 0
    print(f"  recipe   {result['recipe']} (build {result['build_key'][:16]}...)")
    print(f"  source   {result['source']} @ {result['commit']}")
    for patch in result.get("patches", []):
        print(f"  patch    {patch['name']} (sha256 {patch['sha256']})")
    upstream = result.get("upstream", {})
    if upstream.get("dsc"):
        dsc = upstream["dsc"]
        print(f"  dsc      {dsc.get('url') or dsc.get('name')} (sha256 {dsc.get('sha256')})")
    for orig in upstream.get("orig", []):
        print(f"  orig     {orig['name']} (sha256 {orig['sha256']})")
    for what in ("repository", "release", "vcs-git", "watch"):
        if upstream.get(what):
            print(f"  upstream {what} {upstream[what]}")
    print(f"  signed   by builder key {result['signed_by'][:16]}... ({result['builder']}): verified")
    return 0


def _trace_all(args: argparse.Namespace, trusted: Any) -> int:
    from farm.image.trace import summary_line, trace_all

    result = trace_all(Path(args.image), trusted, cert=Path(args.cert) if args.cert else None)
    if args.json:
        print_json(result)
        return 0
    trails = {p["package"]: p for p in result["packages"]}
    for f in result["files"]:
        p = trails.get(f["package"] or "", {})
        where = f"farm {p['recipe']}@{p['commit'][:12]}" if p.get("commit") else p.get("origin", "-")
        print(f"{f['path']}\t{f['package'] or '-'}\t{where}" + ("\tMODIFIED" if f.get("modified") else ""))
    for p in result["packages"]:
        if p.get("commit"):
            print(f"farm {p['package']} {p['version']}: {p['files']} files, recipe {p['recipe']}, build "
                  f"{p['build_key'][:16]}..., {p['source']} @ {p['commit']}, key {p['signed_by'][:16]}")  # fmt: skip
    if result.get("image_signature"):
        print(f"image root hash {result['image_root_hash']} signed by the release key: verified")
    print(summary_line(result["summary"]))
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
    sp.add_argument(
        "--slot-size", type=_size, metavar="SIZE", help="each root slot's size, e.g. 2G (default twice the root)"
    )
    sp.add_argument("--check-inputs", action="store_true", help="only verify the inputs, list them and stop")
    sp.add_argument("--require-agreement", type=int, metavar="K", help="admit only builds K trusted peers attest")
    sp.add_argument("--trust", metavar="PEERS_TOML", help="the peers for --require-agreement")
    sp.add_argument(
        "--require-reproducible",
        action="store_true",
        help="admit only farm builds a varied rebuild reproduced (this farm's recheck or a --trust peer's)",
    )
    sp.add_argument("--lock", metavar="FILE", help="install exactly the packages of this image lock (no apt resolving)")
    sp.add_argument(
        "--kernel",
        metavar="DIR|BUILD_KEY",
        help="the farm's kernel (linux-image-mangos: 'make kernel' output or its build key) instead of Debian's",
    )
    _systemd_flag(sp)
    farm_only = sp.add_mutually_exclusive_group()
    farm_only.add_argument(
        "--require-farm", action="store_true", help="refuse an image with any archive package (each one named, why)"
    )
    farm_only.add_argument(
        "--min-farm", type=float, metavar="PERCENT", help="refuse an image below this share of farm-built packages"
    )
    _fallback_flag(sp)
    json_flag(sp)

    sp = add_command(
        image, "lock", cmd_image_lock, "resolve the image's packages once and write an image lock (like Cargo.lock)"
    )
    sp.add_argument("-o", "--output", default="image.lock", help="the lock file to write (default image.lock)")
    sp.add_argument("--profile", choices=["docker"], help="also lock this profile's sysext packages")
    sp.add_argument("--deb", action="append", help="a fetched farm .deb (its .intoto.json beside it); repeatable")
    sp.add_argument("--recipes", default="recipes", help="Debian recipes whose farm builds go in (default recipes/)")
    _systemd_flag(sp)
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

    sp = add_command(image, "publish", cmd_image_publish, "publish a built image as a release of a channel")
    sp.add_argument("out", help="the image build's output directory (out/)")
    sp.add_argument("-o", "--output", required=True, metavar="DIR|s3://BUCKET/PREFIX", help="the channel")
    sp.add_argument("--release-keys", metavar="DIR", help="release keys (default HOME/release)")
    sp.add_argument("--next-key", metavar="CERT", help="announce the key that signs the next releases (its .crt)")
    json_flag(sp)

    add_boot(image)
    add_installer(image)


def add_trace(sub: Subparsers) -> None:
    sp = add_command(sub, "trace", cmd_trace, "trace a file in an image to the source commit it was built from")
    sp.add_argument("image", help="mangos_VERSION.raw")
    sp.add_argument(
        "path", nargs="?", help="absolute path inside the image, e.g. /usr/bin/hello; uki:.linux for the kernel"
    )
    sp.add_argument("--all", action="store_true", help="every file of the image instead, with counts")
    sp.add_argument("--key", action="append", help="extra trusted builder public key (PEM); repeatable")
    sp.add_argument("--cert", help="release verity certificate: first check the image's root is the signed one")
    json_flag(sp)


COMMANDS = {"image": add_image, "trace": add_trace}
