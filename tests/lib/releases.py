"""One set of real releases for the update tests in QEMU (issue #15), built once per session, and the machine they run
on: a persistent disk, its own OVMF variables (Secure Boot, our keys), QEMU user networking with ``restrict=on``.

The set: ``1``, ``2`` and ``3`` are ``image build --image-version V`` of the same inputs (the farm's kernel from
:func:`tests.lib.kernel.kernel_home`, systemd 254 from bookworm-backports as in ``test_kernel_confext``: /efi for the
ESP automount, ``ImportCredential=``), each differing from ``1`` by one file (:data:`EXTRA_FILES`); ``3``'s file makes
its self-test fail. They are published with ``image publish`` into channels: ``2`` (releases 1, 2), ``3`` (1, 2, 3)
and ``foreign`` (1, 2 with 2's ``SHA256SUMS`` signed by another key pair).

The guest reaches the channel at :data:`GUEST_CHANNEL`: a QEMU guest forward to a relay that connects to an HTTP
server on a loopback port of this machine, so nothing outside it is touched. The channel URL reaches the updater as
a systemd credential: the file ``/mangos/update-channel`` on the ESP (mangos-update.service's ``LoadCredential=``;
the farm's kernel has no ``DMI_SYSFS``, so SMBIOS type 11 credentials cannot reach it).

The machine has a TPM: one swtpm state directory for its whole life, one swtpm process per boot (started with QEMU,
stopped with it). Its first boot's systemd-repart creates swap, /var and /var/tmp encrypted and sealed to that TPM;
every later boot unlocks and mounts /var, whichever release runs (the self-test keeps /var's boot history).
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from farm.image import assemble, boot, firmware, gpt, payload, publish
from farm.image.sums import sign_detached
from farm.settings import Settings
from farm.trust.release_keys import ReleaseKeys, generate
from tests.lib.kernel import SOURCE_DATE_EPOCH, kernel_home, make_kernel
from tests.lib.tools import require, stop_group

SDE = int(SOURCE_DATE_EPOCH)
VERSIONS = ("1", "2", "3")
BROKEN_MARKER = "MANGOS-BROKEN-RELEASE"
# What 2 and 3 add to 1 (path in the root -> text). 3's drop-in fails the self-test: boot-complete.target is never
# reached, so systemd-bless-boot never blesses the entry, and the self-test's FailureAction=reboot reboots.
EXTRA_FILES: dict[str, tuple[str, str]] = {
    "2": ("usr/lib/mangos/release-note", "MANGOS test release 2\n"),
    "3": (
        "usr/lib/systemd/system/mangos-selftest.service.d/90-broken-release.conf",
        "[Service]\nExecStartPre=/bin/sh -c 'echo "
        f"{BROKEN_MARKER}: this release fails its self-test on purpose >/dev/console; exit 1'\n",
    ),
}
GUEST_HOST = "10.0.2.100"  # the guest-forward address in QEMU's user network
GUEST_CHANNEL = f"http://{GUEST_HOST}/"
ESP_CHANNEL_FILE = "mangos/update-channel"  # /efi/mangos/update-channel in the guest (mangos-update.service)
ESP_REBOOT_FILE = "mangos/update-reboot"
SELFTEST = re.compile(r"MANGOS-BOOT-(?:OK|FAIL) [^\r\n]*")
# The self-test's record of a boot on the encrypted /var (its boot history: farm/image/payload/.../mangos/selftest).
VAR_HISTORY = re.compile(r"mangos-var-history: boot (\d+) of this /var: version=(\S+) slot=(\S+)")

# guestfwd's cmd: runs once per guest connection, its stdin/stdout being that connection: relay it to the port.
RELAY = """\
import socket, sys, threading
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    while True:
        data = sys.stdin.buffer.raw.read(65536)
        if not data:
            break
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while True:
    data = conn.recv(65536)
    if not data:
        break
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
"""


@dataclass(frozen=True)
class ReleaseSet:
    release: Path  # the release keys (db.crt enrolled in OVMF; verity.crt in the kernel and in the image)
    builds: dict[str, assemble.Artifacts]
    channels: dict[str, Path]  # "2", "3", "foreign"
    foreign: ReleaseKeys
    seconds: float  # to build and publish it all


def payload_tree(dest: Path, version: str) -> Path:
    """The image payload, plus the one file ``version`` adds."""
    shutil.copytree(payload.PAYLOAD, dest)
    if version in EXTRA_FILES:
        rel, text = EXTRA_FILES[version]
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(text)
    return dest


def build_release_set(work: Path) -> ReleaseSet:
    for tool in ("mmdebstrap", "mkfs.erofs", "veritysetup", "sfdisk", "mkfs.vfat", "mcopy", "sbsign", "objcopy"):
        require(tool)
    start = time.monotonic()
    home = kernel_home()
    kernel = make_kernel(home, work / "kernel")
    settings = Settings.from_env({"MANGOS_FARM_HOME": str(home)})
    keys = ReleaseKeys(home / "release")
    builds = {}
    for version in VERSIONS:
        tree = payload_tree(work / f"payload-{version}", version)
        request = assemble.Request(
            out=work / f"out-{version}", release_keys=keys.dir, recipes=work / "no-recipes", sde=SDE,
            kernel=str(kernel), systemd="backports", version=version,
        )  # fmt: skip
        with mock.patch.object(payload, "PAYLOAD", tree):  # what customize copies (and the root cache key reads)
            builds[version] = assemble.build(request, settings)
    channel = work / "channel"
    channels = {}
    for version in VERSIONS:
        publish.publish(builds[version].raw.parent, str(channel), keys, work / "publish")
        if version == "2":  # a snapshot of the channel with releases 1 and 2 (hard links: no copies)
            channels["2"] = Path(shutil.copytree(channel, work / "channel-2", copy_function=os.link))
            channels["foreign"] = Path(shutil.copytree(channel, work / "channel-foreign", copy_function=os.link))
    channels["3"] = channel
    foreign = generate(work / "foreign-keys")
    p7s = channels["foreign"] / "2" / "SHA256SUMS.p7s"
    p7s.unlink()  # a hard link into the real channel: replaced, not written through
    p7s.write_bytes(sign_detached((channels["foreign"] / "2" / "SHA256SUMS").read_bytes(), foreign))
    return ReleaseSet(keys.dir, builds, channels, foreign, round(time.monotonic() - start, 1))


_BUILT: dict[Path, ReleaseSet] = {}  # by the session's base temporary directory


@pytest.fixture(scope="session")
def release_set(tmp_path_factory: pytest.TempPathFactory) -> ReleaseSet:
    """The set, built once per session: each test module that imports this fixture registers a fixture of its own
    (pytest keeps a session fixture per defining module), so the set itself is kept here and built by the first."""
    require("qemu-system-x86_64")
    require("swtpm")
    base = tmp_path_factory.getbasetemp()
    if base not in _BUILT:
        _BUILT[base] = build_release_set(tmp_path_factory.mktemp("releases"))
    return _BUILT[base]


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        self.server.requests.append(format % args)  # type: ignore[attr-defined]


class ChannelServer:
    """An HTTP server on 127.0.0.1 serving whichever channel directory :meth:`serve` names (a symlink swapped)."""

    def __init__(self, work: Path) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.link = work / "served"
        self.relay = work / "relay.py"
        self.relay.write_text(RELAY)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, directory=str(self.link)))
        self.httpd.requests = []  # type: ignore[attr-defined]
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests  # type: ignore[attr-defined,no-any-return]

    def serve(self, directory: Path) -> None:
        tmp = self.link.with_name(".served.tmp")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(directory)
        os.replace(tmp, self.link)

    def netdev(self) -> list[str]:
        forward = f"guestfwd=tcp:{GUEST_HOST}:80-cmd:/usr/bin/python3 {self.relay} {self.port}"
        return ["-netdev", f"user,id=net0,restrict=on,{forward}", "-device", "virtio-net-pci,netdev=net0"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Boot:
    """One QEMU run of the machine (``-no-reboot``: a reboot or power-off ends it) and its serial console; ``tpm``
    holds this run's swtpm if it has one, stopped by :meth:`stop` after QEMU (its state saved before the next boot)."""

    def __init__(self, argv: list[str], serial: Path, monitor: Path, tpm: ExitStack | None = None) -> None:
        self.serial, self.monitor, self.tpm = serial, monitor, tpm or ExitStack()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.start = time.monotonic()
        self.seen: dict[str, float] = {}  # pattern -> when wait_for first saw it (time.monotonic())

    def text(self) -> str:
        raw = self.serial.read_bytes() if self.serial.exists() else b""
        return boot.ANSI.sub("", raw.decode("utf-8", "replace"))

    def tail(self) -> str:
        return f"--- serial {self.serial} (tail) ---\n{self.text()[-5000:]}"

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first match of ``pattern`` in the console; fails if QEMU ends or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            found = pattern.search(self.text())
            if found:
                self.seen.setdefault(pattern.pattern, time.monotonic())
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU ended before {pattern.pattern!r}\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern.pattern!r} within {timeout:g}s\n{self.tail()}")
            time.sleep(0.5)

    def wait_exit(self, timeout: float) -> str:
        """Wait for the guest to reboot or power off (QEMU then ends); the whole console."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the machine did not reboot within {timeout:g}s\n{self.tail()}") from None
        return self.text()

    def _monitor(self, command: str) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(5)
                sock.connect(str(self.monitor))
                sock.sendall(command.encode() + b"\n")
                time.sleep(0.5)
        except OSError:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._monitor("quit")
            stop_group(self.proc)
        self.tpm.close()  # idempotent

    @property
    def seconds(self) -> float:
        return round(time.monotonic() - self.start, 1)


class Machine:
    """A persistent machine installed with ``raw``: its disk, OVMF variables and TPM state outlive each boot."""

    def __init__(self, raw: Path, release: Path, work: Path, server: ChannelServer) -> None:
        work.mkdir(parents=True, exist_ok=True)
        self.work, self.server = work, server
        self.disk = gpt.sparse_copy(raw, work / "disk.raw")
        self.firmware = firmware.enrolled_firmware(work / "OVMF_VARS.fd", db_certs=(release / "db.crt",))
        self.esp_put(ESP_CHANNEL_FILE, GUEST_CHANNEL + "\n")
        self.esp_put(ESP_REBOOT_FILE, "yes\n")
        self.tpm_state = work / "tpm"  # the TPM's seeds: what first-boot repart sealed /var to
        self.boots: list[Boot] = []

    def _esp(self) -> str:
        entry = next(e for e in gpt.read_table(self.disk) if e.type == gpt.ESP)
        return f"{self.disk}@@{entry.start}"

    def _mtools(self, *argv: str, check: bool = True) -> str:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0 or not check, f"{argv}: {done.stderr}"
        return done.stdout

    def esp_put(self, rel: str, text: str) -> None:
        src = self.work / "esp-file"
        src.write_text(text)
        self._mtools("mmd", "-D", "s", "-i", self._esp(), "::/" + rel.rsplit("/", 1)[0], check=False)
        self._mtools("mcopy", "-o", "-i", self._esp(), str(src), f"::/{rel}")

    def entries(self) -> list[str]:
        """The boot entries on the ESP (EFI/Linux), sorted."""
        out = self._mtools("mdir", "-b", "-i", self._esp(), "::/EFI/Linux")
        return sorted(line.rsplit("/", 1)[-1] for line in out.split() if line.endswith(".efi"))

    def slots(self) -> dict[str, str]:
        """Partition number -> label, for the root, verity and signature partitions."""
        kinds = {gpt.ROOT_X86_64, gpt.ROOT_X86_64_VERITY, gpt.ROOT_X86_64_VERITY_SIG}
        return {str(n): e.name for n, e in enumerate(gpt.read_table(self.disk), 1) if e.type in kinds}

    def boot(self, name: str) -> Boot:
        assert not self.boots or self.boots[-1].proc.poll() is not None, "the machine is still running"
        if self.boots:
            self.boots[-1].stop()  # its swtpm: one process per state directory at a time
        serial, monitor = self.work / f"serial-{len(self.boots) + 1}-{name}.log", self.work / "monitor.sock"
        monitor.unlink(missing_ok=True)
        with ExitStack() as tpm:
            sock = tpm.enter_context(boot.software_tpm(self.tpm_state))
            argv = boot.qemu_argv(
                image=self.disk, firmware=self.firmware, serial_log=serial, monitor=monitor, tpm_socket=sock,
                writable=True,
            ) + self.server.netdev()  # fmt: skip
            self.boots.append(Boot(argv, serial, monitor, tpm.pop_all()))
        return self.boots[-1]

    def stop(self) -> None:
        for b in self.boots:
            b.stop()


@pytest.fixture(scope="module")
def machine(release_set: ReleaseSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    """A machine installed with release 1 (its disk a copy of ``mangos_1.raw``), and the channel server."""
    work = tmp_path_factory.mktemp("update-vm")
    server = ChannelServer(work / "http")
    made = Machine(release_set.builds["1"].raw, release_set.release, work / "machine", server)
    try:
        yield made
    finally:
        made.stop()
        server.close()


def selftest_fields(line: str) -> dict[str, str]:
    return dict(f.split("=", 1) for f in line.split()[1:] if "=" in f)
