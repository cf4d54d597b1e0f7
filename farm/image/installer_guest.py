"""The installer inside ``mangos-installer_V.raw`` (:mod:`farm.image.installer` builds it): a release of a channel,
verified, written onto a disk of this machine, then a reboot.

Each step before the next: list the disks (name, size, model); read the channel's ``channel.json`` and verify the
target release's ``SHA256SUMS.p7s`` against the release certificate the image carries (``openssl cms -verify``; a key
announced by a verified release is trusted on, and the keys before a verified release's signer are retired, as
mangos-update does); fetch the release's block map, checked against its signed digest; choose the target disk --
never the disk the installer booted from (it holds the partition whose PARTUUID the running ``roothash=`` names),
never one smaller than the image; interactively the user types the device name as confirmation, unattended the
systemd credential ``mangos.install`` (or the file ``/efi/mangos/install``) names it; then
:func:`farm.image.stream.write_image` writes it (holes skipped, each range checked before it is written, the GPT
zeroed first and written last: a cut stream leaves a disk that does not boot) with the bytes written and an ETA on
the console; then a reboot. Nothing is written before the signature verified and the target passed the rules.
Before the disks, the network (:mod:`farm.image.installer_net`): the setting ``install-network`` (DHCP by default,
or a static address), asked for on a screen of its own when the installer is interactive; and for an ``https://``
channel the image's CAs plus the setting ``install-ca``.

Runs on the image's python3 with the standard library and the farm modules :data:`farm.image.installer.VENDORED`
only (copied verbatim into the image; a test runs it from such a copy in an isolated interpreter). A target path
outside ``/dev`` is a plain file (a disk image), for tests and for writing images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from farm.errors import E, FarmError, TrustError
from farm.image import installer_net, stream
from farm.image.channelfiles import CHANNEL, NEXT_KEY, SUMS, SUMS_SIG, VERSION_RE, parse_sums
from farm.run import run

ME = "mangos-install"
CERT = Path("/usr/lib/mangos/release.crt")
DEFAULT_CHANNEL = Path("/usr/lib/mangos/installer/channel")  # image installer --channel URL
# Settings by name: the systemd credential mangos.NAME, else the file ESP_DIR/NAME on the installer's ESP (read here,
# not by LoadCredential=: a missing file would fail the unit). The ESP is not authenticated: nothing from the channel
# is written before its signature verifies, and the rules on the target hold whatever names it.
TARGET, CHANNEL_URL, REBOOT = "install", "install-channel", "install-reboot"
ESP_DIR = Path("/efi/mangos")
NOT_DISKS = re.compile(r"^(loop|ram|zram|dm-|md|sr|fd|nbd)")
PROGRESS_EVERY = 2.0  # seconds between progress lines
_ROOTHASH = re.compile(r"(?:^|\s)roothash=([0-9a-f]{64})(?=\s|$)")

Fetch = Callable[[str], bytes]
Ask = Callable[[str], str]


def credential(directory: str | None, names: Sequence[str]) -> str:
    """The first line (trimmed) of the first non-empty credential of ``names`` in ``directory``
    (``$CREDENTIALS_DIRECTORY``: the unit's ``SetCredential=`` leaves an empty one where nothing was given)."""
    for name in names if directory else ():
        try:
            text = (Path(str(directory)) / name).read_text(errors="replace").strip()
        except OSError:
            continue
        if text:
            return text.splitlines()[0].strip()
    return ""


def human(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


@dataclass(frozen=True)
class Disk:
    name: str  # vdb
    size: int  # bytes
    model: str

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except OSError:
        return ""


def list_disks(sys_block: Path = Path("/sys/block")) -> list[Disk]:
    """The machine's disks (``/sys/block`` without loop, RAM, device-mapper, RAID, optical and empty devices)."""
    disks = []
    for entry in sorted(sys_block.iterdir()) if sys_block.is_dir() else ():
        sectors = _read(entry / "size")
        if NOT_DISKS.match(entry.name) or not sectors.isdigit() or int(sectors) == 0:
            continue
        model = " ".join(p for p in (_read(entry / "device/vendor"), _read(entry / "device/model")) if p)
        if not model or model.startswith("0x"):  # virtio: a PCI vendor id, no model
            model = "virtio disk" if entry.name.startswith("vd") else model or "-"
        serial = _read(entry / "serial")
        disks.append(Disk(entry.name, int(sectors) * 512, model + (f" (serial {serial})" if serial else "")))
    return disks


def boot_disk(cmdline: str, dev: Path = Path("/dev"), sys_class_block: Path = Path("/sys/class/block")) -> str | None:
    """The disk the installer booted from: the one holding the partition whose PARTUUID is the first 128 bits of the
    running ``roothash=`` (how the root is found at boot). None when the root is not a verity root (not booted from
    an image); a verity root whose disk cannot be found is an error (a disk to refuse that cannot be told apart)."""
    found = _ROOTHASH.search(cmdline)
    if found is None:
        return None
    h = found.group(1)[:32]
    link = dev / "disk/by-partuuid" / f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    part = Path(os.path.realpath(link)).name
    parent = Path(os.path.realpath(sys_class_block / part)).parent.name
    if not link.is_symlink() or not (sys_class_block / part).exists() or not (sys_class_block / parent).exists():
        raise FarmError(
            E.IMAGE_INPUT,
            f"cannot tell which disk the installer booted from (no partition {link.name} in {link.parent})",
            hint="wait for udev (systemd-udev-settle) and run the installer again",
        )
    return parent


def refusal(disk: Disk, *, image_size: int, booted: str | None) -> str:
    """Why ``disk`` must not be the target ("" when it may be)."""
    if disk.name == booted:
        return "the installer booted from it"
    if disk.size < image_size:
        return f"smaller than the image ({human(disk.size)} < {human(image_size)})"
    return ""


def choose(disks: Sequence[Disk], wanted: str, *, image_size: int, booted: str | None) -> Disk:
    """The disk ``wanted`` names (``vdb`` or ``/dev/vdb``), if the rules (:func:`refusal`) allow it."""
    name = wanted.strip().removeprefix("/dev/")
    disk = next((d for d in disks if d.name == name), None)
    if disk is None:
        raise FarmError(E.IMAGE_INPUT, f"{wanted!r} is not a disk of this machine",
                        hint=f"one of: {', '.join(d.path for d in disks) or 'none found'}")  # fmt: skip
    why = refusal(disk, image_size=image_size, booted=booted)
    if why:
        raise FarmError(E.IMAGE_INPUT, f"refusing {disk.path}: {why}", hint="choose another disk; nothing was written")
    return disk


def cms_verify_argv(content: Path, p7s: Path, cert: Path) -> list[str]:
    """``openssl cms -verify`` of a detached DER PKCS#7 over ``content``, by exactly ``cert`` (as mangos-update)."""
    return ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(p7s), "-content", str(content),
            "-certfile", str(cert), "-nointern", "-CAfile", str(cert), "-out", os.devnull]  # fmt: skip


def signed_by(content: Path, p7s: Path, certs: Sequence[Path]) -> int | None:
    """The index in ``certs`` of the certificate that signed ``content``, or None."""
    for i, cert in enumerate(certs):
        if run(cms_verify_argv(content, p7s, cert), check=False, timeout=60).returncode == 0:
            return i
    return None


def verify_channel(fetch: Fetch, cert: Path, work: Path, version: str = "") -> tuple[str, dict[str, str]]:
    """The target release (``version``, default the newest) and its signed digests; raises E-CHANNEL-UNTRUSTED when
    its SHA256SUMS is not signed by ``cert`` or a key announced by a release verified on the way."""
    try:
        versions = [str(r["version"]) for r in json.loads(fetch(CHANNEL))["releases"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise FarmError(E.CHANNEL_INVALID, f"unreadable {CHANNEL}: {exc}", hint="check the channel URL") from None
    bad = [v for v in versions if not VERSION_RE.fullmatch(v) or ".." in v]
    if bad or not versions:
        raise FarmError(E.CHANNEL_INVALID, f"{CHANNEL} lists no releases or invalid versions {bad}", hint="republish")
    target = version or versions[-1]
    if target not in versions:
        raise FarmError(E.CHANNEL_INVALID, f"the channel has no release {target}", hint=f"it has {versions}")
    trusted = [cert]
    for v in versions:
        sums, p7s = work / f"{v}.sums", work / f"{v}.p7s"
        sums.write_bytes(fetch(f"{v}/{SUMS}"))
        p7s.write_bytes(fetch(f"{v}/{SUMS_SIG}"))
        signer = signed_by(sums, p7s, trusted)
        if signer is None:
            if v == target:
                raise TrustError(E.CHANNEL_UNTRUSTED,
                                 f"release {v}: SHA256SUMS is not signed by a key this installer trusts",
                                 hint="install from a channel signed by this image's release key; nothing was "
                                 "written")  # fmt: skip
            continue
        digests = parse_sums(sums.read_bytes())
        if any(n.startswith("mangos_") and not n.startswith(f"mangos_{v}.") for n in digests):
            raise FarmError(E.CHANNEL_INVALID, f"the signed SHA256SUMS of {v} lists another release's files",
                            hint="a release directory holds only its own files")  # fmt: skip
        del trusted[:signer]  # the keys before the signer are retired
        if NEXT_KEY in digests:
            pem = fetch(f"{v}/{NEXT_KEY}")
            if hashlib.sha256(pem).hexdigest() != digests[NEXT_KEY]:
                raise FarmError(E.CHANNEL_INVALID, f"{v}/{NEXT_KEY} does not match its signed digest", hint="republish")
            (work / f"{v}.next.crt").write_bytes(pem)
            trusted.append(work / f"{v}.next.crt")
        if v == target:
            return v, digests
    raise AssertionError("unreachable: the target is one of the versions")  # pragma: no cover


def progress_printer(say: Callable[[str], None], every: float = PROGRESS_EVERY) -> stream.Callback:
    """A progress line at most every ``every`` seconds of writing, and at the end: bytes, rate, ETA."""
    last = [-every]

    def show(p: stream.Progress) -> None:
        if p.seconds - last[0] < every and p.written < p.total:
            return
        last[0] = p.seconds
        eta = f"{p.eta:.0f} s" if p.eta is not None else "-"
        say(f"{p.written} of {p.total} bytes written ({100 * p.written // max(p.total, 1)}%), "
            f"{p.rate / 1e6:.1f} MB/s, ETA {eta}")  # fmt: skip

    return show


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=ME, description="Install a MANGOS release from a channel onto a disk.")
    p.add_argument("--channel", default="", help="the channel URL (default: the credential, else the image's)")
    p.add_argument("--target", default="", help="the disk, e.g. /dev/vdb (unattended; a path outside /dev: a file)")
    p.add_argument("--version", default="", help="the release to install (default the channel's newest)")
    p.add_argument("--cert", default=str(CERT), help="the release certificate (default the image's)")
    p.add_argument("--network", default="", help=f"'dhcp' or static: {installer_net.EXAMPLE} (the service: the "
                   f"setting {installer_net.NETWORK}; interactive: asked)")  # fmt: skip
    p.add_argument("--ca", default="", help=f"a CA (PEM) trusted for https:// too (the setting {installer_net.CA})")
    p.add_argument("--from-service", action="store_true", help="settings from the unit's credentials; reboot after")
    p.add_argument("--reboot", action="store_true", help="reboot once the release is written")
    return p


def given_path(args: argparse.Namespace, environ: Mapping[str, str], name: str, esp: Path = ESP_DIR) -> Path | None:
    """The file of the setting ``name`` (``--from-service``): the credential ``mangos.NAME``, else ``esp/NAME``
    (the first that is not empty)."""
    if not args.from_service:
        return None
    creds = environ.get("CREDENTIALS_DIRECTORY")
    for path in ((Path(creds) / f"mangos.{name}") if creds else None, esp / name):
        if path is not None and _read(path):
            return path
    return None


def settings(args: argparse.Namespace, environ: Mapping[str, str], esp: Path = ESP_DIR) -> tuple[str, str, bool]:
    """(target, channel, reboot) from the arguments, else (``--from-service``) the credentials or the ESP's files,
    else the image's channel."""

    def given(name: str) -> str:
        return setting(args, environ, name, esp)

    target = args.target or given(TARGET)
    channel = args.channel or given(CHANNEL_URL) or _read(DEFAULT_CHANNEL)
    reboot = args.reboot or (args.from_service and given(REBOOT).lower() not in ("no", "false", "0"))
    return target, channel.rstrip("/"), reboot


def setting(args: argparse.Namespace, environ: Mapping[str, str], name: str, esp: Path = ESP_DIR) -> str:
    """The first line of the setting ``name`` (``--from-service`` only; see :func:`given_path`)."""
    path = given_path(args, environ, name, esp)
    return credential(str(path.parent), (path.name,)) if path else ""


def network_screen(say: Callable[[str], None], ask: Ask, host: installer_net.Host) -> installer_net.Static | None:
    """The text UI's network screen: the wired interfaces and their addresses; Enter keeps DHCP, or static
    settings typed (asked again until they parse)."""
    say("network interfaces:")
    for name, mac, state, address in host.interfaces() or [("(none)", "-", "-", "-")]:
        say(f"  {name:<14} {mac:<18} {state:<8} {address}")
    while True:
        answer = ask(f"{ME}: network: press Enter to keep DHCP, or type {installer_net.EXAMPLE}: ")
        try:
            return installer_net.parse_network(answer)
        except FarmError as exc:
            say(f"error[{exc.code}]: {exc.message} ({exc.hint})")


def console_ask(prompt: str, console: Path = Path("/dev/console")) -> str:
    """An answer typed on the console (the service's own output goes to the journal and the console)."""
    with console.open("r+") as tty:
        tty.write(prompt)
        tty.flush()
        line = tty.readline()
    if not line:
        raise EOFError
    return line


def main(argv: Sequence[str], *, out: TextIO = sys.stdout, ask: Ask | None = None,
         environ: Mapping[str, str] = os.environ, host: installer_net.Host | None = None) -> int:  # fmt: skip
    def say(text: str) -> None:
        out.write(f"{ME}: {text}\n")
        out.flush()

    args = parser().parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="mangos-install-") as work:
            answer = ask or (console_ask if args.from_service else input)
            return install(args, say, answer, environ, work=Path(work), host=host or installer_net.Host())
    except FarmError as exc:
        say(f"error[{exc.code}]: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""))
        say("installation failed")
        return 1
    except OSError as exc:  # the machine's side: a disk, a directory
        say(f"error: {exc}")
        say("installation failed")
        return 1
    except (KeyboardInterrupt, EOFError):
        say("cancelled")
        return 130


def install(args: argparse.Namespace, say: Callable[[str], None], ask: Ask, environ: Mapping[str, str], *,
            work: Path, host: installer_net.Host) -> int:  # fmt: skip
    target, channel, reboot = settings(args, environ)
    network = args.network or setting(args, environ, installer_net.NETWORK)
    if network or args.from_service or not target:  # the network of this machine: never for a plain file target
        static = installer_net.parse_network(network) if network or target else network_screen(say, ask, host)
        say(installer_net.apply(static, host))
    ca = Path(args.ca) if args.ca else given_path(args, environ, installer_net.CA)
    tls = installer_net.tls_context(ca)
    installer_net.use_tls(tls)
    booted = boot_disk(_read(Path("/proc/cmdline")))
    disks = list_disks()
    say("block devices:" if disks else "no block devices found")
    for d in disks:
        say(f"  {d.path:<14} {human(d.size):>10}  {d.model}" + ("  [booted from]" if d.name == booted else ""))
    if not channel:
        if target:
            raise FarmError(E.IMAGE_INPUT, "no channel", hint="give the credential mangos.install-channel=URL")
        channel = ask(f"{ME}: channel URL: ").strip().rstrip("/")
    installer_net.check_tls(channel, tls)
    version, digests = verify_channel(stream.fetcher(channel), Path(args.cert), work, args.version)
    say(f"release {version} of {channel}: SHA256SUMS signature verified")
    bmap_name = f"mangos_{version}.bmap.json"
    if bmap_name not in digests:
        raise FarmError(E.CHANNEL_INVALID, f"release {version} has no block map", hint="publish it with this farm")
    base = f"{channel}/{version}"
    block_map = stream.fetch_block_map(base, bmap_name, digests[bmap_name])
    size = block_map.size
    if target and "/" in target and not target.startswith("/dev/"):
        path = target  # a file: a disk image
    elif target:
        path = choose(disks, target, image_size=size, booted=booted).path
    else:
        for d in disks:
            why = refusal(d, image_size=size, booted=booted)
            say(f"  {d.name}: {'refused: ' + why if why else 'can be installed to'}")
        disk = choose(disks, ask(f"{ME}: install to which disk (e.g. vdb)? "), image_size=size, booted=booted)
        if ask(f"{ME}: everything on {disk.path} will be erased; type {disk.name} again to go on: ").strip() not in (
            disk.name,
            disk.path,
        ):
            raise FarmError(E.IMAGE_INPUT, f"{disk.path} was not confirmed", hint="nothing was written")
        path = disk.path
    say(f"writing release {version} to {path}: {block_map.allocated} bytes of a {size}-byte image (holes skipped, "
        "every range checked before it is written, the partition table last)")  # fmt: skip
    start = time.monotonic()
    done = stream.write_image(base, block_map, Path(path), progress=progress_printer(say))
    say(f"wrote {done.bytes} bytes to {path} in {time.monotonic() - start:.1f} s (release {version})")
    if reboot:
        say("rebooting into the installed disk")
        os.sync()
        run(["systemctl", "--no-block", "reboot"], timeout=60)
    return 0
