"""The installer image in QEMU (issue #15, test 4): ``mangos-installer_V.raw`` (:mod:`farm.image.installer`, one more
``assemble.build`` with the farm's kernel and systemd 254, as the releases) boots under Secure Boot with a blank second
disk the size of the image, installs release 2 of the channel onto it unattended (the target, the channel and a
static network setting as systemd credentials: files on the installer's ESP, since the farm's kernel has no
DMI_SYSFS for SMBIOS credentials) and reboots; that disk alone then boots release 2 to its self-test under Secure
Boot. A stream cut midway, run on the host with the same program against a server that drops the connection, leaves
a disk with no partition table.

The releases are the session's :mod:`tests.lib.releases` set (not built again); the channel is served from a loopback
port through QEMU's user network with ``restrict=on`` and a guest forward. Figures go to record_property: bytes
written against the release image's allocated size, the write time under TCG and what it implies at 500 MB/s.
"""

from __future__ import annotations

import http.server
import io
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from farm.errors import FarmError
from farm.image import assemble, boot, channel, channelfiles, firmware, gpt, installer, installer_guest
from farm.image.payload import SELFTEST_OK
from farm.settings import Settings
from farm.trust.verify import file_sha256
from tests.lib import releases
from tests.lib.kernel import KERNEL_BUILD_TIMEOUT, kernel_home, make_kernel
from tests.lib.releases import GUEST_CHANNEL, SDE, Boot, ChannelServer, ReleaseSet, selftest_fields

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(KERNEL_BUILD_TIMEOUT + 1800)]

INSTALL = 600.0  # QEMU start to the installer's last line, under TCG (boot, network, verify, write the release)
REBOOT = 120.0
BOOT = 420.0
VERSION = "2"
OK = re.compile(re.escape(SELFTEST_OK) + r"[^\r\n]*")
WROTE = r"wrote (\d+) bytes to (\S+) in ([0-9.]+) s"
DONE = re.compile(rf"mangos-install: ({WROTE}|installation failed|service (?!success)\S+)")  # or the unit's failure
Record = Callable[[str, object], None]
STATIC = "address=10.0.2.15/24 gateway=10.0.2.2 dns=10.0.2.3"  # QEMU's user network, given as static settings
NETWORK = re.compile(
    rf"mangos-install: network: static {re.escape(STATIC)} applied on \S+ \(networkd: "
    r"/run/systemd/network/10-mangos-install\.network configured, routable; address now 10\.0\.2\.15/24\)"
)

release_set = releases.release_set


@pytest.fixture(scope="module")
def installer_image(release_set: ReleaseSet, tmp_path_factory: pytest.TempPathFactory) -> assemble.Artifacts:
    """The installer image, built like the releases (their kernel, keys and systemd)."""
    work = tmp_path_factory.mktemp("installer")
    home = kernel_home()
    settings = Settings.from_env({"MANGOS_FARM_HOME": str(home)})
    base = assemble.Request(
        out=work / "out", release_keys=release_set.release, recipes=work / "no-recipes", sde=SDE,
        kernel=str(make_kernel(home, work / "kernel")), systemd="backports", version="1",
    )  # fmt: skip
    return installer.build(base, settings)


def esp_put(disk: Path, rel: str, text: str) -> None:
    """A file on the ESP of ``disk`` (mtools, no mount)."""
    entry = next(e for e in gpt.read_table(disk) if e.type == gpt.ESP)
    image, src = f"{disk}@@{entry.start}", disk.with_name("esp-file")
    src.write_text(text)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}
    mmd = ["mmd", "-D", "s", "-i", image, "::/" + rel.rsplit("/", 1)[0]]
    subprocess.run(mmd, env=env, check=False, capture_output=True)  # the directory may be there already
    subprocess.run(["mcopy", "-o", "-i", image, str(src), f"::/{rel}"], env=env, check=True, capture_output=True)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_installer_installs_release_2_unattended_and_the_disk_boots_it(
    installer_image: assemble.Artifacts, release_set: ReleaseSet, tmp_path: Path, record_property: Record
) -> None:
    record_property("installer_build_seconds", sum(installer_image.stages.values()))
    release = release_set.builds[VERSION].raw
    server = ChannelServer(tmp_path / "http")
    server.serve(release_set.channels[VERSION])
    disk = gpt.sparse_copy(installer_image.raw, tmp_path / "installer.raw")
    esp_put(disk, "mangos/install", "/dev/vdb\n")
    esp_put(disk, "mangos/install-channel", GUEST_CHANNEL + "\n")
    esp_put(disk, "mangos/install-network", STATIC + "\n")  # instead of the image's DHCP
    blank = tmp_path / "blank.raw"
    with blank.open("wb") as fh:
        fh.truncate(release.stat().st_size)  # sparse: a blank disk exactly the image's size
    fw = firmware.enrolled_firmware(tmp_path / "OVMF_VARS.fd", db_certs=(release_set.release / "db.crt",))
    serial, monitor = tmp_path / "serial-installer.log", tmp_path / "monitor.sock"
    argv = boot.qemu_argv(image=disk, firmware=fw, serial_log=serial, monitor=monitor, writable=True)
    argv += ["-drive", f"if=none,id=disk1,format=raw,file={blank}", "-device", "virtio-blk-pci,drive=disk1"]
    run = Boot(argv + server.netdev(), serial, monitor)
    try:
        done = run.wait_for(DONE, INSTALL)
        text = run.wait_exit(REBOOT) if done.group(2) else run.text()
    finally:
        run.stop()
        server.close()
    assert done.group(2), text[-4000:]
    written, target, seconds = int(done.group(2)), done.group(3), float(done.group(4))
    assert target == "/dev/vdb", text[-4000:]
    assert f"release {VERSION} of {GUEST_CHANNEL.rstrip('/')}: SHA256SUMS signature verified" in text
    assert "/dev/vda" in text and "[booted from]" in text  # the listing; vda (the installer) marked
    assert re.search(r"ETA \d+ s", text), text[-4000:]
    assert "rebooting into the installed disk" in text
    network = NETWORK.search(text)  # networkd took the static settings before anything was fetched
    assert network and text.index(network.group(0)) < text.index("SHA256SUMS signature verified"), text[-4000:]
    sums = channelfiles.parse_sums((release.parent / "SHA256SUMS").read_bytes())
    assert file_sha256(blank) == sums[release.name]  # the image, exactly
    image_allocated = allocated(release)
    record_property("installer_boot_seconds", run.seconds)
    record_property("install_bytes_written", written)
    record_property("image_allocated_bytes", image_allocated)
    record_property("image_size_bytes", release.stat().st_size)
    record_property("written_vs_allocated", round(written / image_allocated, 3))
    record_property("write_seconds_tcg", seconds)
    record_property("write_seconds_at_500MBps", round(written / 500e6, 2))
    assert written <= 1.05 * image_allocated, (written, image_allocated)

    serial = tmp_path / "serial-installed.log"
    monitor.unlink(missing_ok=True)
    argv = boot.qemu_argv(image=blank, firmware=fw, serial_log=serial, monitor=monitor, writable=True)
    run = Boot([*argv, "-nic", "none"], serial, monitor)  # the installed disk alone, no network
    try:
        fields = selftest_fields(run.wait_for(OK, BOOT).group(0))
    finally:
        run.stop()
    record_property("installed_boot_seconds", run.seconds)
    assert (fields["version"], fields["slot"], fields["verity-sig"]) == (VERSION, "A", "kernel"), fields


class _Cutting(http.server.SimpleHTTPRequestHandler):
    """Serves the channel, but sends only the first half of one file (announcing all of it) and hangs up."""

    cut_name = ""

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if path.name != self.cut_name:
            super().do_GET()
            return
        size = path.stat().st_size
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with path.open("rb") as src:
            left = size // 2
            while left > 0 and (chunk := src.read(min(left, 1 << 20))):
                self.wfile.write(chunk)
                left -= len(chunk)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def cutting_server(release_set: ReleaseSet) -> Iterator[str]:
    handler = type("Cut", (_Cutting,), {"cut_name": channel.file_name(VERSION, channel.ROOT)})
    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), partial(handler, directory=str(release_set.channels[VERSION]))
    )
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_installer_a_cut_stream_leaves_the_disk_unbootable(
    release_set: ReleaseSet, cutting_server: str, tmp_path: Path, record_property: Record
) -> None:
    target = gpt.sparse_copy(release_set.builds["1"].raw, tmp_path / "disk.raw")  # a disk that booted release 1
    assert gpt.read_table(target)
    out = io.StringIO()
    start = time.monotonic()
    cert = release_set.release / "verity.crt"
    code = installer_guest.main(["--channel", cutting_server, "--target", str(target), "--cert", str(cert)],
                                out=out, environ={})  # fmt: skip
    record_property("cut_install_seconds", round(time.monotonic() - start, 1))
    text = out.getvalue()
    assert code == 1, text
    assert "SHA256SUMS signature verified" in text  # it got as far as writing
    assert "error[E-STREAM-INCOMPLETE]" in text and "it does not boot" in text, text
    assert "mangos-install: wrote" not in text
    with target.open("rb") as fh:
        fh.seek(512)
        assert fh.read(8) != b"EFI PART"  # no primary GPT header
    with pytest.raises(FarmError):
        gpt.read_table(target)
    shutil.rmtree(tmp_path, ignore_errors=True)
