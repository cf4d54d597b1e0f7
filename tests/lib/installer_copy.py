"""The installer's in-image program on the host, for its tests: a small published channel, the program copied as the
image carries it and run in an isolated interpreter (or on a pty), and a fake machine for its network settings."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

from farm.image import installer, installer_net, publish
from tests.lib.release import Built, build_out, release_keys
from tests.lib.tools import require


def publish_small(tmp: Path) -> Path:
    """A channel (a directory ``tmp/chan``) with release 1.0 of a small image (keys in ``tmp/keys``, the image in
    ``tmp/out``)."""
    require("sfdisk")
    require("openssl")
    keys = release_keys(tmp / "keys")
    built: Built = build_out(tmp / "out", "1.0", keys)
    publish.publish(built.out, str(tmp / "chan"), keys, tmp / "work")
    return tmp / "chan"


def guest_copy(dest: Path) -> Path:
    """The installer's files as the image carries them; its entry script."""
    for rel, data in installer.guest_files().items():
        if rel.startswith(installer.GUEST):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(data)
    return dest / installer.GUEST / "mangos-install"


def run_guest(script: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """The in-image program from its copy, in an isolated interpreter without site-packages (only the stdlib)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run([sys.executable, "-I", "-S", "-B", str(script), *argv], capture_output=True, text=True,
                          env=env, cwd=script.parent, timeout=120, check=False)  # fmt: skip


class Networkd:
    """``Host.execute`` for tests: records each argv; a restart of networkd makes its state of each link that the
    installer's file matches name that file (unless ``stuck``)."""

    def __init__(self, host_dir: Path, *, stuck: bool = False) -> None:
        self.dir, self.stuck = host_dir, stuck
        self.ran: list[list[str]] = []

    def __call__(self, argv: list[str]) -> None:
        self.ran.append(argv)
        network = self.dir / "network" / installer_net.NETWORK_FILE
        if argv == installer_net.networkd_argv() and not self.stuck:
            name = network.read_text().split("\nName=", 1)[1].split()[0]
            ifindex = (self.dir / "sys-net" / name / "ifindex").read_text().strip()
            (self.dir / "links" / ifindex).write_text(
                f"# This is private data. Do not parse.\nADMIN_STATE=configured\nOPER_STATE=routable\n"
                f"NETWORK_FILE={network}\n"
            )


def fake_host(tmp_path: Path, *, stuck: bool = False, nics: tuple[str, ...] = ("ens3",)) -> installer_net.Host:
    """A machine with lo, a bridge and the wired interfaces ``nics`` (DHCP'd by the image's file)."""
    sys_net = tmp_path / "sys-net"
    for i, name in enumerate(("lo", "br0", *nics), 1):
        (sys_net / name).mkdir(parents=True)
        (sys_net / name / "type").write_text("772\n" if name == "lo" else "1\n")
        (sys_net / name / "ifindex").write_text(f"{i}\n")
        (sys_net / name / "address").write_text(f"52:54:00:12:34:5{i + 3}\n")
        (sys_net / name / "operstate").write_text("up\n")
        if name not in ("lo", "br0"):
            (sys_net / name / "device").mkdir()
    (tmp_path / "links").mkdir()
    dhcp = "/usr/lib/systemd/network/80-mangos-dhcp.network"
    for i in range(3, 3 + len(nics)):
        (tmp_path / "links" / str(i)).write_text(f"ADMIN_STATE=configured\nOPER_STATE=routable\nNETWORK_FILE={dhcp}\n")
    (tmp_path / "resolv.conf").write_text("")  # the image's: an empty file on the read-only root
    return installer_net.Host(
        network_dir=tmp_path / "network", links=tmp_path / "links", sys_net=sys_net,
        resolv=tmp_path / "resolv.conf", run_dir=tmp_path / "run", execute=Networkd(tmp_path, stuck=stuck),
        address=lambda name: "10.0.2.15/24", wait=0.5,
    )  # fmt: skip


def drive(argv: list[str], script: list[tuple[str, str]], timeout: float = 60.0) -> tuple[int, str]:
    """``argv`` on a real terminal (a pty): each (prompt, answer) typed when the prompt shows; its exit, its output."""
    master, slave = pty.openpty()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "dumb"}
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True,
                            start_new_session=True)  # fmt: skip
    os.close(slave)
    seen, left = b"", list(script)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the program ended and closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            while left and left[0][0].encode() in seen[seen.rfind(b"\n", 0, len(seen) - 1) + 1 :] + seen[-400:]:
                os.write(master, left.pop(0)[1].encode() + b"\r")
                seen += b"\n"  # this prompt is answered
            if proc.poll() is not None and not ready:
                break
        return proc.wait(timeout=10), seen.decode(errors="replace").replace("\r\n", "\n")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
