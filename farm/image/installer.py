"""``image installer``: ``mangos-installer_V.raw``, the image that installs a release of a channel onto a disk.

Made by the image's own pipeline (:func:`farm.image.assemble.build`: erofs + verity + signature partition, a signed UKI,
the same release keys, kernel and systemd choice) from the image's payload plus, as ``Request.extra_files`` (written
into the root with the manifest, so they are part of the root's cache key; the image's payload, packages and bytes do
not change):

- python3 (:data:`PACKAGES`: ``python3-minimal`` lacks http.client and json, ``libpython3-stdlib`` has them) and
  ca-certificates (an ``https://`` channel verifies against them, plus the setting ``install-ca``);
- the in-image installer :mod:`farm.image.installer_guest` and the farm modules it imports (:data:`VENDORED`), copied
  verbatim under :data:`GUEST`;
- ``payload/installer/``: its entry script, its unit (on the console, settings from systemd credentials) and the
  drop-in that starts it at boot;
- with ``--channel``: the channel it installs from when no credential names one (``GUEST/channel``).
"""

from __future__ import annotations

import re
from pathlib import Path

import farm
from farm.errors import E, FarmError
from farm.image import assemble
from farm.settings import Settings

NAME = "mangos-installer"  # mangos-installer_V.raw
PACKAGES = ("python3-minimal", "libpython3-stdlib", "ca-certificates")
GUEST = "usr/lib/mangos/installer"
VENDORED = (
    "farm/__init__.py",
    "farm/errors.py",
    "farm/tools.py",
    "farm/run.py",
    "farm/image/__init__.py",
    "farm/image/bmap.py",
    "farm/image/channelfiles.py",
    "farm/image/stream.py",
    "farm/image/installer_net.py",
    "farm/image/installer_guest.py",
)
PAYLOAD = Path(__file__).with_name("payload") / "installer"
_SOURCE = Path(farm.__file__).parent.parent
_CHANNEL = re.compile(r"(https?://|file:///|/)[^\s]+")


def check_channel(url: str) -> str:
    """A channel URL the installer can read: http(s)://, file:/// or an absolute path, without whitespace."""
    if not _CHANNEL.fullmatch(url):
        raise FarmError(E.IMAGE_INPUT, f"{url!r} is not a channel URL", field="--channel",
                        hint="http://HOST/PATH, https://..., file:///DIR or /DIR")  # fmt: skip
    return url.rstrip("/")


def guest_files(channel: str = "") -> dict[str, bytes]:
    """Every file the installer adds to the image's root, by path in the root."""
    files = {str(p.relative_to(PAYLOAD)): p.read_bytes() for p in sorted(PAYLOAD.rglob("*")) if p.is_file()}
    for rel in VENDORED:
        files[f"{GUEST}/{rel}"] = (_SOURCE / rel).read_bytes()
    if channel:
        files[f"{GUEST}/channel"] = (check_channel(channel) + "\n").encode()
    return files


def request(base: assemble.Request, channel: str = "") -> assemble.Request:
    """``base`` (what ``image build`` would make) as the installer image."""
    from dataclasses import replace

    files = tuple(sorted(guest_files(channel).items()))
    return replace(base, name=NAME, extra_packages=(*base.extra_packages, *PACKAGES), extra_files=files)


def build(
    base: assemble.Request, settings: Settings, channel: str = "", watcher: assemble.StageWatcher | None = None
) -> assemble.Artifacts:
    return assemble.build(request(base, channel), settings, watcher)
