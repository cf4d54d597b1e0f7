"""The ESP contents: signed systemd-boot, its loader.conf, and the UKI with a boot-counting name.

systemd-boot sorts UKIs in ``EFI/Linux/`` by version and boots the newest one that still has tries left. The
``+3`` suffix gives a freshly installed slot three attempts: each boot renames it (``+2-1``, ...) before starting
it, and ``systemd-bless-boot`` drops the counter once ``boot-complete.target`` is reached (the image's self-test is
required by it). A slot whose boots keep failing (a tampered root panics on purpose) reaches ``+0`` and systemd-boot
falls back to the previous slot. The directory is turned into a vfat image by the assembly (no mount needed).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from farm.errors import E, FarmError
from farm.image.uki import sign_efi

log = logging.getLogger(__name__)

SYSTEMD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
BOOT_TRIES = 3

_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]*$")


def uki_name(version: str, tries: int = BOOT_TRIES) -> str:
    """``mangos_<version>+<tries>.efi``: the name systemd-boot's boot counting understands."""
    if not _VERSION.match(version):
        raise FarmError(
            E.IMAGE_INPUT,
            f"image version {version!r} cannot be part of a boot entry name",
            hint="use letters, digits, '.', '_', '~' and '-' only ('+' is reserved for boot counting)",
        )
    return f"mangos_{version}+{tries}.efi"


def loader_conf() -> str:
    """No menu wait, newest MANGOS entry first, no command-line editing (the cmdline is part of what is signed)."""
    return "timeout 0\ndefault mangos_*\neditor no\nauto-entries no\nauto-firmware no\nconsole-mode keep\n"


def populate_esp(esp_dir: Path, *, uki: Path, version: str, db_key: Path, db_cert: Path, sde: int) -> None:
    """Fill ``esp_dir`` (EFI/BOOT, EFI/systemd, EFI/Linux, loader/); files get mtime ``sde``."""
    if not SYSTEMD_BOOT.exists():
        raise FarmError(E.TOOL_MISSING, f"{SYSTEMD_BOOT} is missing", hint="apt-get install systemd-boot-efi")
    boot = esp_dir / "EFI/BOOT/BOOTX64.EFI"
    sdboot = esp_dir / "EFI/systemd/systemd-bootx64.efi"
    entry = esp_dir / "EFI/Linux" / uki_name(version)
    conf = esp_dir / "loader/loader.conf"
    for path in (boot, sdboot, entry, conf):
        path.parent.mkdir(parents=True, exist_ok=True)
    sign_efi(SYSTEMD_BOOT, key=db_key, cert=db_cert, sde=sde, out=sdboot)
    shutil.copyfile(sdboot, boot)
    shutil.copyfile(uki, entry)
    conf.write_text(loader_conf())
    # systemd-boot reads the random seed from here; an empty directory keeps the layout systemd expects.
    (esp_dir / "loader/entries").mkdir(exist_ok=True)
    for path in sorted(esp_dir.rglob("*")):
        os.utime(path, (sde, sde), follow_symlinks=False)
    os.utime(esp_dir, (sde, sde))
    log.debug("ESP populated in %s with %s", esp_dir, entry.name)
