"""A channel's file names and its SHA256SUMS text, without a crypto library: shared by the verifier
(:mod:`farm.image.channel`) and the installer in the image (:mod:`farm.image.installer_guest`, which has python3's
standard library only and checks signatures with openssl).
"""

from __future__ import annotations

import re

from farm.errors import E, FarmError

CHANNEL = "channel.json"
SUMS = "SHA256SUMS"
SUMS_SIG = "SHA256SUMS.p7s"
NEXT_KEY = "next-release.crt"
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,254}")


def check_version(version: str) -> str:
    if not VERSION_RE.fullmatch(version) or ".." in version:
        raise FarmError(
            E.CHANNEL_INVALID,
            f"'{version}' is not a release version",
            hint="versions are letters, digits and . _ + ~ - (as image build --image-version makes them)",
        )
    return version


def format_sums(digests: dict[str, str]) -> bytes:
    return "".join(f"{digests[n]}  {n}\n" for n in sorted(digests)).encode()


def parse_sums(data: bytes) -> dict[str, str]:
    """SHA256SUMS (``DIGEST  NAME`` lines, ``*NAME`` for binary mode) -> {name: digest}; names are plain."""
    digests: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        digest, _, name = line.partition(" ")
        name = name.lstrip(" *")
        if not re.fullmatch(r"[0-9a-f]{64}", digest) or not NAME_RE.fullmatch(name) or name in digests:
            raise FarmError(E.CHANNEL_INVALID, f"malformed SHA256SUMS line: {line[:120]!r}", hint="republish it")
        digests[name] = digest
    return digests
