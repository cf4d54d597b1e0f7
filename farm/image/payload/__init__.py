"""What makes the assembled root tree a bootable, self-checking MANGOS system.

The image pipeline (``farm.image.assemble``) installs :data:`PACKAGES` from the pinned archive next to the farm's own
.debs, then calls :func:`customize` on the unpacked tree before it is frozen into erofs. The files copied in live in
``farm/image/payload/root/`` as plain files (units, a self-test script, repart and dracut configuration) so that they
can be read and reviewed as what they are. :func:`cmdline` is the kernel command line the signed UKI carries: it
is the one place the root hash enters the boot chain, which is why it must be inside a Secure Boot signed binary.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from farm.errors import E, FarmError

PAYLOAD = Path(__file__).with_name("root")

# Archive packages the bootable root needs, beyond the Essential set. Kept minimal: the image boots under TCG in CI.
# systemd 252 ships systemd-veritysetup (+ generator), systemd-repart and systemd-bless-boot; dracut builds the
# initrd inside the root (its kernel modules must match); the tss2 libraries let systemd-repart seal to the TPM;
# openssl (signature checks) and fdisk (sfdisk: the GPT of the inactive slot) are what mangos-update needs.
PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "dracut",
    "dracut-core",
    "libtss2-esys-3.0.2-0",
    "libtss2-rc0",
    "libtss2-mu0",
    "libtss2-tcti-device0",
    "openssl",
    "fdisk",
)

# The file the initrd's mangos-verity-sig writes the signature partition's PKCS#7 to (farm.image.kernel).
SIGNATURE_FILE = "/run/mangos/root.p7s"
# Debian's kernel packages: left out when the image carries the farm's kernel (farm.image.kernel).
DEBIAN_KERNEL = frozenset({"linux-image-amd64", "linux-signed-amd64"})


def packages(*, farm_kernel: bool = False) -> tuple[str, ...]:
    """:data:`PACKAGES`, without Debian's kernel when the image carries the farm's own."""
    return tuple(p for p in PACKAGES if not (farm_kernel and p in DEBIAN_KERNEL))


# unit -> the target whose .wants/ enables it (what `systemctl enable` would do; no systemctl run in the tree).
ENABLED_UNITS: tuple[tuple[str, str], ...] = (
    ("mangos-require-secureboot.service", "sysinit.target"),
    ("mangos-selftest.service", "multi-user.target"),
    ("mangos-bless-boot.service", "multi-user.target"),  # systemd-bless-boot's part (no systemd-boot package)
    ("mangos-update.timer", "timers.target"),  # the updater (it brings up the network it needs)
)

# systemd generators the image has no input for, masked (a /dev/null link in /etc/systemd/system-generators): each
# would otherwise be started on every boot and every daemon-reload, for nothing (under TCG each start costs ~0.1-0.3 s
# of a boot's critical path). No /etc/crypttab, /etc/integritytab, /etc/rc.local, SysV scripts of its own (hwclock.sh
# and kmod have native units), hibernation or offline updates; the command line is signed, so systemd.run= and the
# debug options cannot be passed. Kept: fstab, gpt-auto (swap, /var, /var/tmp and their unlocking), veritysetup
# (the root), getty (the serial console).
MASKED_GENERATORS: tuple[str, ...] = (
    "systemd-cryptsetup-generator",
    "systemd-debug-generator",
    "systemd-hibernate-resume-generator",
    "systemd-integritysetup-generator",
    "systemd-rc-local-generator",
    "systemd-run-generator",
    "systemd-system-update-generator",
    "systemd-sysv-generator",
)

# Unpartitioned space left after the GPT's last slot for first-boot systemd-repart (repart.d: swap 64M + /var at
# least 128M + /var/tmp 64M, each with a 16M LUKS2 header, 1M-aligned). Sparse in the .raw, so it costs no disk.
FIRST_BOOT_SPACE = 512 * 1024 * 1024

# The root's /var moves here at assembly so that /var is an empty mount point systemd-gpt-auto-generator will mount
# the first-boot /var partition on (it skips a non-empty one); systemd-tmpfiles copies it back (FACTORY_TMPFILES).
FACTORY_VAR = "usr/share/factory/var"
FACTORY_TMPFILES = "usr/lib/tmpfiles.d/mangos-factory-var.conf"
# Not copied: /var/tmp is a first-boot partition of its own (and systemd's tmp.conf sets it up).
_VAR_SKIP = frozenset({"tmp"})
_TMPFILES_UNSAFE = re.compile(r"[\s%\\\"']")

SELFTEST_OK = "MANGOS-BOOT-OK root=verity sb=on"
REFUSE_MARKER = "MANGOS-REFUSE"
HOSTNAME = "mangos"

_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
_ROOT_HASH = re.compile(r"^[0-9a-f]{64}$")


def machine_id(name: str) -> str:
    """The machine-id baked into every release of the image ``name`` (mangos, mangos-installer). It must not
    change with the packages or the version: the /var partition's UUID derives from it, and a release with another
    machine-id would boot without the /var that first boot made (an update would lose it)."""
    return hashlib.sha256(b"mangos-machine-id\0" + name.encode()).hexdigest()[:32]


def customize(root: Path, *, machine_id: str, sde: int) -> None:
    """Copy the payload into ``root``, bake the machine-id, enable the units; every mtime is ``sde``.

    A read-only root would otherwise get a fresh transient machine-id each boot, and the /var partition (whose UUID
    systemd-repart derives from the machine-id) would not be found again on the second boot.
    """
    if not _MACHINE_ID.match(machine_id):
        raise FarmError(
            E.IMAGE_INPUT,
            f"machine-id {machine_id!r} is not 32 lowercase hex digits",
            hint="derive it from the image inputs, e.g. the first 32 hex digits of a sha256",
        )
    if not (root / "usr").is_dir():
        raise FarmError(E.IMAGE_INPUT, f"{root} is not an unpacked root tree (no usr/)", file=str(root))
    touched: list[Path] = []
    for src in sorted(PAYLOAD.rglob("*")):
        dest = root / src.relative_to(PAYLOAD)
        if src.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink():
                dest.unlink()
            shutil.copyfile(src, dest)
            os.chmod(dest, 0o755 if os.access(src, os.X_OK) else 0o644)
        touched.append(dest)
    for name, text in (("etc/machine-id", machine_id + "\n"), ("etc/hostname", HOSTNAME + "\n")):
        path = root / name
        if path.is_symlink():
            path.unlink()
        path.write_text(text)
        os.chmod(path, 0o444 if name == "etc/machine-id" else 0o644)
        touched.append(path)
    touched += enable_units(root, ENABLED_UNITS)
    touched += mask_generators(root, MASKED_GENERATORS)
    touched += move_var_to_factory(root)
    for path in touched:
        os.utime(path, (sde, sde), follow_symlinks=False)


def mask_generators(root: Path, names: Iterable[str]) -> list[Path]:
    """Mask each generator ``name`` as ``systemctl mask`` masks a unit: ``etc/systemd/system-generators/NAME`` ->
    /dev/null (systemd skips a generator whose name resolves to /dev/null in a higher-priority directory)."""
    folder = root / "etc/systemd/system-generators"
    folder.mkdir(parents=True, exist_ok=True)
    made = [folder]
    for name in names:
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
        made.append(link)
    return made


def move_var_to_factory(root: Path) -> list[Path]:
    """Move ``root/var``'s content to :data:`FACTORY_VAR` and write the tmpfiles.d lines that recreate it.

    systemd-gpt-auto-generator mounts the /var partition only on an empty directory, and the read-only root's /var
    would otherwise hold dpkg's state and friends. At boot systemd-tmpfiles recreates each top-level directory
    (``d``, with its mode), copies each entry below it (``C``: only when missing, so a later boot's /var is kept),
    and re-links symlinks (``L``). Returns the paths created, for the caller to pin their mtimes.
    """
    var, factory = root / "var", root / FACTORY_VAR
    var.mkdir(mode=0o755, exist_ok=True)
    factory.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Generated at image assembly (farm.image.payload.move_var_to_factory): the image's /var is an empty mount",
        "# point for the first-boot /var partition; these recreate what the packages put there.",
    ]
    for entry in sorted(var.iterdir()):
        dest = factory / entry.name
        if dest.exists() or dest.is_symlink():
            raise FarmError(E.IMAGE_BUILD, f"{dest} exists already: customize ran twice on {root}?", file=str(dest))
        os.rename(entry, dest)
    for entry in sorted(factory.iterdir()):
        if entry.name in _VAR_SKIP:
            continue
        lines += _tmpfiles_lines(entry, f"/var/{entry.name}", top=True)
    var.chmod(0o755)
    conf = root / FACTORY_TMPFILES
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("\n".join(lines) + "\n")
    return [var, factory, factory.parent, conf.parent, conf]


def _tmpfiles_lines(entry: Path, target: str, *, top: bool) -> list[str]:
    if _TMPFILES_UNSAFE.search(target):
        raise FarmError(E.IMAGE_BUILD, f"cannot express {target!r} in a tmpfiles.d line", file=str(entry))
    source = f"/{FACTORY_VAR}{target[len('/var') :]}"
    if entry.is_symlink():
        return [f"L {target} - - - - {os.readlink(entry)}"]
    if entry.is_dir() and top:
        mode = entry.stat().st_mode & 0o7777
        lines = [f"d {target} {mode:04o} - - -"]
        for child in sorted(entry.iterdir()):
            lines += _tmpfiles_lines(child, f"{target}/{child.name}", top=False)
        return lines
    return [f"C {target} - - - - {source}"]


def cmdline(roothash: str, *, kernel_checks_signature: bool = False) -> str:
    """The kernel command line sealed into the signed UKI.

    systemd-veritysetup-generator opens ``root`` from ``roothash=``; with no explicit data/hash devices it finds them
    by partition UUID, which the assembly derives from the root hash (first/last 128 bits) as systemd does.
    ``panic-on-corruption`` turns a tampered block into a panic (and ``panic=10`` into a reboot) so that boot counting
    falls back to the other slot instead of hanging on a half-readable root.

    ``kernel_checks_signature`` (the farm's kernel, with the organization's certificate built in): the signature
    partition's PKCS#7 goes to dm-verity as well (``root-hash-signature=``, the file the initrd's mangos-verity-sig
    writes), and ``dm_verity.require_signatures=1`` makes the kernel refuse a root without a valid one.
    """
    if not _ROOT_HASH.match(roothash):
        raise FarmError(E.IMAGE_INPUT, f"root hash {roothash!r} is not 64 lowercase hex digits")
    options = "panic-on-corruption"
    enforce: tuple[str, ...] = ()
    if kernel_checks_signature:
        options += f",root-hash-signature={SIGNATURE_FILE}"
        enforce = ("dm_verity.require_signatures=1",)
    return " ".join(
        (
            f"roothash={roothash}",
            f"systemd.verity_root_options={options}",
            *enforce,
            "root=/dev/mapper/root",
            "rootfstype=erofs",
            "ro",
            "console=ttyS0,115200",
            "panic=10",
            "loglevel=4",
        )
    )


def enable_units(root: Path, units: Iterable[tuple[str, str]]) -> list[Path]:
    """Enable each (unit, target) in ``root`` as ``systemctl enable`` would for a WantedBy= target: a
    ``TARGET.wants/UNIT`` link to the unit in /usr/lib/systemd/system, replacing what was there. Returns the
    directories and links written (for their mtimes)."""
    touched: list[Path] = []
    for unit, target in units:
        wants = root / "etc/systemd/system" / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        link = wants / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"/usr/lib/systemd/system/{unit}")
        touched += [wants, link]
    return touched
