"""``image installer``: ``mangos-installer_V.raw``, built by the image's pipeline (:mod:`farm.image.installer`).

Apart from the assembly commands in ``farm.cli.image``, whose ``image`` group adds this command with
:func:`add_installer`. It takes ``image build``'s inputs (release keys, kernel, systemd) and the channel the installer
reads when no credential names one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from farm.cli.common import Subparsers, add_command, json_flag, print_json, release_dir
from farm.settings import Settings

SYSTEMD = {"bookworm": "", "backports": "backports"}  # --systemd NAME -> Request.systemd, as image build's


def _stage(stage: str, seconds: float | None) -> None:
    """The build's stages as they start and end (image build's live status, on stderr)."""
    sys.stderr.write(f"{stage} ...\n" if seconds is None else f"{stage} done in {seconds:.1f}s\n")
    sys.stderr.flush()


def cmd_image_installer(args: argparse.Namespace, settings: Settings) -> int:
    from farm.image import installer
    from farm.image.assemble import Request, source_date_epoch

    base = Request(
        out=Path(args.output),
        release_keys=release_dir(args.release_keys, settings),
        recipes=Path(args.recipes),
        sde=source_date_epoch(),
        version=args.image_version or "",
        kernel=args.kernel or "",
        systemd=SYSTEMD[args.systemd],
    )
    channel = installer.check_channel(args.channel) if args.channel else ""
    result = installer.build(base, settings, channel, watcher=_stage)
    if args.json:
        print_json(result.to_json() | {"channel": channel or None})
        return 0
    print(f"installer {result.raw}")
    print(f"  version   {result.version}")
    print(f"  root hash {result.root_hash}")
    print(f"  channel   {channel or '(none: the credential mangos.install-channel or the console gives it)'}")
    print(f"  {result.uki}")
    print(f"  {result.sums_sig}")
    print("  stages: " + ", ".join(f"{k} {v:.1f}s" for k, v in result.stages.items()))
    return 0


def add_installer(image: Subparsers) -> None:
    """Add ``installer`` to the subparsers of the ``image`` group."""
    sp = add_command(
        image, "installer", cmd_image_installer, "build mangos-installer_V.raw: boots, writes a release onto a disk"
    )
    sp.add_argument("-o", "--output", default="out", help="output directory (default out/)")
    sp.add_argument("--release-keys", metavar="DIR", help="release keys (default HOME/release)")
    sp.add_argument(
        "--kernel",
        metavar="DIR|BUILD_KEY",
        help="the farm's kernel (linux-image-mangos: 'make kernel' output or its build key) instead of Debian's",
    )
    what = "bookworm's 252 (default), or backports' 254 (as image build)"
    sp.add_argument("--systemd", choices=list(SYSTEMD), default="bookworm", help=f"the image's systemd: {what}")
    sp.add_argument(
        "--channel",
        metavar="URL",
        help="the channel to install from when no credential (mangos.install-channel) names one",
    )
    sp.add_argument("--recipes", default="recipes", help="Debian recipes whose farm builds go in (default recipes/)")
    sp.add_argument("--image-version", help="version string (default DATE.INPUTDIGEST)")
    json_flag(sp)
