"""The signed Unified Kernel Image: kernel + initrd + command line (with the root hash) in one Secure Boot binary.

bookworm has no ukify, so the UKI is put together the way ukify does it underneath: dracut makes the initrd inside
the image's own root tree (so the kernel modules match the kernel), ``objcopy`` adds the ``.osrel``, ``.cmdline``,
``.linux`` and ``.initrd`` sections to systemd's ``linuxx64.efi.stub``, and ``sbsign`` signs it with the release db
key. Two things would make the bytes differ from run to run and are pinned: objcopy writes the current time into the
PE header (patched to ``SOURCE_DATE_EPOCH``, with the PE checksum recomputed) and sbsign embeds the signing time
(it runs under ``faketime``).
"""

from __future__ import annotations

import array
import datetime
import logging
import os
import shlex
import struct
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from farm.errors import E, FarmError
from farm.image import rootless
from farm.log import step
from farm.run import require_tool, run

log = logging.getLogger(__name__)

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")

# Section addresses as systemd documents them for a stub of this generation (its own sections end below 0x20000);
# the kernel gets 16 MiB before the initrd.
SECTION_VMA: tuple[tuple[str, int], ...] = (
    (".osrel", 0x20000),
    (".cmdline", 0x30000),
    (".linux", 0x2000000),
    (".initrd", 0x3000000),
)

DRACUT_TIMEOUT = 900.0


def kernel_version(root: Path) -> str:
    """The one kernel installed in ``root`` (an image has exactly one; two would make the choice arbitrary)."""
    versions = sorted(
        p.name for p in (root / "lib/modules").glob("*") if (root / "boot" / f"vmlinuz-{p.name}").exists()
    )
    if len(versions) != 1:
        raise FarmError(
            E.IMAGE_BUILD,
            f"expected exactly one kernel in {root}/boot with modules, found {versions or 'none'}",
            hint="install exactly one linux-image package into the image root",
        )
    return versions[0]


def dracut_script(*, root: Path, layer: Path, out_dir: Path, kver: str, sde: int) -> str:
    """Shell run inside a fresh mount namespace: overlay the root (it stays untouched), then dracut in a chroot."""
    q = shlex.quote
    merged, upper, work = layer / "merged", layer / "upper", layer / "work"
    # DRACUT_NO_MKNOD: no device nodes in the initrd, as a build without root cannot make them (the kernel's
    # built-in initramfs has /dev/console; the initrd's systemd mounts devtmpfs): root and rootless builds agree.
    env = f"env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 TZ=UTC SOURCE_DATE_EPOCH={sde} DRACUT_NO_MKNOD=1"
    inner = f"{env} dracut --quiet --force --reproducible --no-hostonly --kver {q(kver)} /out/initrd.img {q(kver)}"
    lines = [
        "set -eu",
        "umask 022",
        "mount --make-rprivate /",
        f"mkdir -p {q(str(merged))} {q(str(upper))} {q(str(work))}",
        f"mount -t overlay overlay -o lowerdir={q(str(root))},upperdir={q(str(upper))},workdir={q(str(work))} "
        f"{q(str(merged))}",
        f"mount -t proc proc {q(str(merged / 'proc'))}",
        f"mount -t tmpfs -o mode=755 tmpfs {q(str(merged / 'dev'))}",
    ]
    for dev in ("null", "zero", "random", "urandom"):
        target = q(str(merged / "dev" / dev))
        lines += [f"touch {target}", f"mount --bind /dev/{dev} {target}"]
    lines += [
        # /var is an empty mount point in the image (its content is in /usr/share/factory/var): make /var/tmp in
        # the overlay's upper layer, never in the root.
        f"mkdir -p {q(str(merged / 'tmp'))} {q(str(merged / 'var/tmp'))}",
        f"mount -t tmpfs tmpfs {q(str(merged / 'tmp'))}",
        f"mount -t tmpfs tmpfs {q(str(merged / 'var/tmp'))}",
        f"mkdir -p {q(str(merged / 'out'))}",
        f"mount --bind {q(str(out_dir))} {q(str(merged / 'out'))}",
        f"exec chroot {q(str(merged))} /bin/sh -c {q(inner)}",
    ]
    return "\n".join(lines)


def build_initrd(root: Path, *, kver: str, sde: int, workdir: Path) -> Path:
    """Run dracut (from the image root, with the payload's dracut.conf.d) and return the initrd path."""
    require_tool("unshare")
    if not (root / "usr/bin/dracut").exists():
        raise FarmError(
            E.IMAGE_BUILD, f"dracut is not installed in {root}", hint="add dracut-core to the image packages"
        )
    out_dir = workdir / "initrd"
    out_dir.mkdir(parents=True, exist_ok=True)
    script = dracut_script(root=root, layer=workdir / "layer", out_dir=out_dir, kver=kver, sde=sde)
    try:
        run([*dracut_argv(userns=rootless.needed()), script], timeout=DRACUT_TIMEOUT)
    finally:
        rootless.remove(workdir / "layer")  # the overlay's work dir is mode 000: only root could skip this
    return out_dir / "initrd.img"


def dracut_argv(*, userns: bool) -> list[str]:
    """The namespaces dracut's script runs in; without root, in a user namespace of its own too (where the tree,
    this user's, is root's), as :mod:`farm.image.rootless` says."""
    flags = ["--mount", "--pid", "--net", "--uts", "--ipc", "--fork", "--kill-child"]
    return ["unshare", *(rootless.DRACUT_USERNS if userns else ()), *flags, "--", "/bin/sh", "-c"]


def objcopy_argv(*, stub: Path, osrel: Path, cmdline: Path, linux: Path, initrd: Path, out: Path) -> list[str]:
    files = {".osrel": osrel, ".cmdline": cmdline, ".linux": linux, ".initrd": initrd}
    argv = ["objcopy"]
    for name, vma in SECTION_VMA:
        argv += [f"--add-section={name}={files[name]}", f"--change-section-vma={name}={vma:#x}"]
    return [*argv, str(stub), str(out)]


def sbsign_argv(*, key: Path, cert: Path, sde: int, src: Path, out: Path) -> list[str]:
    """sbsign under faketime: the PKCS#7 signing time is the only varying input of an RSA PKCS#1 v1.5 signature.

    The clock is frozen at ``sde`` (an absolute ``-f`` time, read as UTC), not started there (``@sde`` keeps it
    running: hashing a 39 MB UKI on a loaded machine took over a second, and the signing time differed by one).
    """
    frozen = datetime.datetime.fromtimestamp(sde, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    return [
        "env", "TZ=UTC", "faketime", "-f", frozen,
        "sbsign", "--key", str(key), "--cert", str(cert), "--output", str(out), str(src),
    ]  # fmt: skip


def pe_offsets(data: bytes | bytearray) -> tuple[int, int]:
    """(TimeDateStamp offset, CheckSum offset) of a PE32+ image."""
    if data[:2] != b"MZ":
        raise FarmError(E.IMAGE_BUILD, "not a PE image (no MZ header)")
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    if data[pe : pe + 4] != b"PE\0\0":
        raise FarmError(E.IMAGE_BUILD, "not a PE image (no PE signature)")
    return pe + 8, pe + 24 + 64


def pe_checksum(data: bytes | bytearray, checksum_offset: int) -> int:
    """The PE image checksum (16-bit one's-complement-style sum with the checksum field as zero, plus the length)."""
    buf = bytes(data[:checksum_offset]) + b"\0\0\0\0" + bytes(data[checksum_offset + 4 :])
    if len(buf) % 2:
        buf += b"\0"
    words = array.array("H", buf)  # summed in C (a Python loop took 2-3 s for a 39 MB UKI)
    if sys.byteorder == "big":
        words.byteswap()
    total = sum(words)
    while total >> 16:  # folding the carries at the end gives what folding after every word does
        total = (total & 0xFFFF) + (total >> 16)
    return (total + len(data)) & 0xFFFFFFFF


def pin_pe_timestamp(path: Path, sde: int) -> None:
    """Set the COFF TimeDateStamp to ``sde`` and recompute the checksum, so objcopy's clock leaves no trace."""
    data = bytearray(path.read_bytes())
    ts_off, sum_off = pe_offsets(data)
    struct.pack_into("<I", data, ts_off, sde & 0xFFFFFFFF)
    struct.pack_into("<I", data, sum_off, pe_checksum(data, sum_off))
    path.write_bytes(bytes(data))


def sign_efi(src: Path, *, key: Path, cert: Path, sde: int, out: Path) -> Path:
    """Sign an EFI binary for Secure Boot with reproducible bytes."""
    require_tool("sbsign")
    require_tool("faketime")
    run(sbsign_argv(key=key, cert=cert, sde=sde, src=src, out=out))
    return out


def os_release(root: Path) -> bytes:
    for name in ("etc/os-release", "usr/lib/os-release"):
        path = root / name
        if path.is_file():
            return path.read_bytes()
        if path.is_symlink():
            target = os.readlink(path)
            resolved = root / target.lstrip("/") if target.startswith("/") else path.parent / target
            if resolved.is_file():
                return resolved.read_bytes()
    raise FarmError(E.IMAGE_BUILD, f"{root} has no os-release", hint="the image root must be a Debian tree")


def assemble_uki(
    *, root: Path, kver: str, initrd: Path, cmdline: str, workdir: Path, sde: int, stub: Path = STUB
) -> Path:
    """objcopy the sections into the stub; returns the unsigned UKI with a pinned PE timestamp."""
    require_tool("objcopy")
    if not stub.exists():
        raise FarmError(E.TOOL_MISSING, f"the EFI stub {stub} is missing", hint="apt-get install systemd-boot-efi")
    osrel, cmd = workdir / "os-release", workdir / "cmdline.txt"
    osrel.write_bytes(os_release(root))
    cmd.write_text(cmdline + "\n")
    unsigned = workdir / "uki.unsigned.efi"
    linux = root / "boot" / f"vmlinuz-{kver}"
    run(objcopy_argv(stub=stub, osrel=osrel, cmdline=cmd, linux=linux, initrd=initrd, out=unsigned))
    pin_pe_timestamp(unsigned, sde)
    return unsigned


def build_uki(
    root: Path, *, cmdline: str, db_key: Path, db_cert: Path, sde: int, out: Path, initrd: Path | None = None
) -> Path:
    """Make the signed UKI for ``root`` at ``out``: same root, cmdline, key and ``sde`` give the same bytes.

    ``initrd``: one :func:`build_initrd` made from this root already (the image build's cache); else dracut runs."""
    with step("uki", logger=log, out=str(out)), tempfile.TemporaryDirectory(prefix="mangos-uki-") as tmp:
        work = Path(tmp)
        kver = kernel_version(root)
        if initrd is None:
            with step("dracut", logger=log, kver=kver):
                initrd = build_initrd(root, kver=kver, sde=sde, workdir=work)
        unsigned = assemble_uki(root=root, kver=kver, initrd=initrd, cmdline=cmdline, workdir=work, sde=sde)
        out.parent.mkdir(parents=True, exist_ok=True)
        with step("sbsign", logger=log):
            sign_efi(unsigned, key=db_key, cert=db_cert, sde=sde, out=out)
    return out


def uki_sections(path: Path) -> Sequence[str]:
    """Names of the PE sections (for checks and tests), via objdump."""
    result = run(["objdump", "-h", str(path)])
    return [ln.split()[1] for ln in result.text.splitlines() if ln.strip()[:1].isdigit() and len(ln.split()) > 1]


def cmdline_of(path: Path) -> str:
    """The .cmdline section of a UKI (what verify compares against the root hash)."""
    with tempfile.TemporaryDirectory(prefix="mangos-uki-") as tmp:
        dest = Path(tmp) / "cmdline"
        run(["objcopy", "-O", "binary", "--only-section=.cmdline", str(path), str(dest)])
        return dest.read_bytes().rstrip(b"\0\n").decode()


def section(path: Path, name: str) -> bytes:
    """The bytes of one PE section of a UKI (``.linux``: the kernel exactly as it was added)."""
    with tempfile.TemporaryDirectory(prefix="mangos-uki-") as tmp:
        dest = Path(tmp) / "section"
        run(["objcopy", "-O", "binary", f"--only-section={name}", str(path), str(dest)])
        if not dest.is_file() or dest.stat().st_size == 0:
            raise FarmError(E.IMAGE_TRACE, f"the UKI has no {name} section", file=path, hint="is this a MANGOS UKI?")
        return dest.read_bytes()
