"""Boot an image in QEMU/OVMF with Secure Boot and read what happened from the serial console.

Used by ``mangos-farm image boot`` and the end-to-end boot tests. QEMU runs under TCG (this machine's KVM cannot run
OVMF's SMM), the image is attached with ``snapshot=on`` so a boot never changes it (unless booted ``writable``, for a
copy whose first-boot partitions must persist), and the serial console goes to a
file. A watcher reads that file while QEMU runs and, once the outcome is known (the image's self-test line, the
firmware's "Access Denied", a dm-verity corruption panic, or the image's refusal to run without Secure Boot), asks
QEMU to quit through its monitor socket; ``-no-reboot`` ends QEMU when the guest panics and reboots.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from farm.errors import E, FarmError
from farm.image.firmware import Firmware
from farm.image.payload import REFUSE_MARKER, SELFTEST_OK
from farm.log import step
from farm.run import require_tool, run

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 240.0
SERIAL_TAIL = 4000


class Outcome(StrEnum):
    BOOTED = "booted"  # the self-test reported a verity root under Secure Boot
    SELFTEST_FAILED = "selftest-failed"  # the system came up but the self-test found something wrong
    FIRMWARE_REFUSED = "firmware-refused"  # Secure Boot rejected a binary's signature
    VERITY_CORRUPTION = "verity-corruption"  # dm-verity found a block that does not match the root hash
    ROOT_SIGNATURE_REFUSED = "root-signature-refused"  # the kernel refused the root hash's signature (farm kernel)
    PANIC = "panic"  # the kernel panicked for another reason
    REFUSED_INSECURE = "refused-insecure"  # the image itself refused to run with Secure Boot off
    TIMEOUT = "timeout"  # none of the above within the time limit
    EXITED = "exited"  # QEMU ended without any recognizable outcome


ANSI = re.compile(r"\x1b\[[0-9;=?]*[A-Za-z]")  # firmware and systemd colour their console output

# Checked in this order; the first pattern found in the serial output decides.
PATTERNS: tuple[tuple[Outcome, re.Pattern[str]], ...] = (
    (Outcome.BOOTED, re.compile(re.escape(SELFTEST_OK) + r"[^\r\n]*")),
    (Outcome.SELFTEST_FAILED, re.compile(r"MANGOS-BOOT-FAIL[^\r\n]*")),
    (Outcome.REFUSED_INSECURE, re.compile(re.escape(REFUSE_MARKER) + r"[^\r\n]*")),
    (Outcome.FIRMWARE_REFUSED, re.compile(r"[^\r\n]*(?:Access Denied|Security Violation)[^\r\n]*")),
    (
        Outcome.VERITY_CORRUPTION,
        re.compile(r"device-mapper: verity: [^\r\n]*corrupt[^\r\n]*|dm-verity device corrupted"),
    ),
    (
        Outcome.ROOT_SIGNATURE_REFUSED,
        re.compile(r"device-mapper: [^\r\n]*verity: Root hash verification failed[^\r\n]*"),
    ),
    (Outcome.PANIC, re.compile(r"Kernel panic - not syncing[^\r\n]*")),
)


@dataclass(frozen=True)
class BootResult:
    outcome: Outcome
    seconds: float  # from QEMU start to the decisive serial line (or to the end)
    evidence: str  # the serial line that decided the outcome
    serial_log: str  # path of the full serial log
    serial_tail: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["outcome"] = str(self.outcome)
        return data


def classify(serial: str) -> tuple[Outcome, str] | None:
    """The outcome the serial output shows so far, with the line that shows it; None while undecided."""
    text = ANSI.sub("", serial)
    for outcome, pattern in PATTERNS:
        match = pattern.search(text)
        if match:
            return outcome, match.group(0)
    return None


def qemu_argv(
    *,
    image: Path,
    firmware: Firmware,
    serial_log: Path,
    monitor: Path,
    memory_mb: int = 1024,
    cpus: int = 2,
    tpm_socket: Path | None = None,
    writable: bool = False,
) -> list[str]:
    """QEMU for a Secure Boot q35 machine under TCG; the image is read through a snapshot (never modified), unless
    ``writable`` (then the guest writes to it: boot a copy, see :func:`farm.image.gpt.sparse_copy`)."""
    snapshot = "" if writable else "snapshot=on,"
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg,thread=multi",
        "-machine",
        "q35,smm=on",
        "-global",
        "driver=cfi.pflash01,property=secure,value=on",
        "-global",
        "ICH9-LPC.disable_s3=1",
        "-m",
        str(memory_mb),
        "-smp",
        str(cpus),
        "-drive",
        f"if=pflash,format=raw,unit=0,readonly=on,file={firmware.code}",
        "-drive",
        f"if=pflash,format=raw,unit=1,file={firmware.vars}",
        "-drive",
        f"if=none,id=disk0,format=raw,{snapshot}file={image}",
        "-device",
        "virtio-blk-pci,drive=disk0,bootindex=1",
        "-nographic",
        "-serial",
        f"file:{serial_log}",
        "-monitor",
        f"unix:{monitor},server=on,wait=off",
        "-no-reboot",
    ]
    if tpm_socket is not None:
        argv += [
            "-chardev",
            f"socket,id=chrtpm,path={tpm_socket}",
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-tis,tpmdev=tpm0",
        ]
    return argv


def swtpm_argv(state: Path) -> list[str]:
    """A software TPM 2.0 for one boot: first-boot systemd-repart seals /var, /var/tmp and swap to it."""
    return [
        "swtpm",
        "socket",
        "--tpm2",
        "--tpmstate",
        f"dir={state}",
        "--ctrl",
        f"type=unixio,path={state / 'swtpm.sock'}",
        "--pid",
        f"file={state / 'swtpm.pid'}",
        "--daemon",
    ]


@contextmanager
def software_tpm(state: Path) -> Iterator[Path]:
    """Run swtpm (daemonized) on ``state`` and yield its socket; stopped (and waited for) on exit.

    ``state`` persists the TPM (its seeds, hence what was sealed to it): reuse the directory for the next boot of the
    same disk, as a machine keeps its TPM.
    """
    require_tool("swtpm")
    state.mkdir(parents=True, exist_ok=True)
    sock, pidfile = state / "swtpm.sock", state / "swtpm.pid"
    sock.unlink(missing_ok=True)
    pidfile.unlink(missing_ok=True)
    run(swtpm_argv(state))
    try:
        yield sock
    finally:
        _stop_swtpm(pidfile)


def _stop_swtpm(pidfile: Path, wait: float = 10.0) -> None:
    """SIGTERM swtpm and wait until it is gone, so its state is on disk before the next boot starts another."""
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):  # already gone with QEMU
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)
    log.warning("swtpm %d did not stop within %gs", pid, wait)


def _quit(monitor: Path) -> None:
    """Ask QEMU to stop (HMP ``quit``); a QEMU that is already gone is fine."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(monitor))
            sock.sendall(b"quit\n")
            time.sleep(0.5)
    except OSError as exc:
        log.debug("qemu monitor %s: %s", monitor, exc)


class _Watcher(threading.Thread):
    """Polls the serial log; on a decisive line records it and makes QEMU quit."""

    def __init__(self, serial_log: Path, monitor: Path, start: float) -> None:
        super().__init__(daemon=True)
        self.serial_log, self.monitor, self.start_time = serial_log, monitor, start
        self.found: tuple[Outcome, str, float] | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                text = self.serial_log.read_bytes().decode("utf-8", "replace")
            except FileNotFoundError:
                continue
            decided = classify(text)
            if decided is not None:
                self.found = (decided[0], decided[1], time.monotonic() - self.start_time)
                # Let the console flush a moment (a panic's reason follows the verity message).
                time.sleep(2)
                _quit(self.monitor)
                return


def boot(
    image: Path,
    firmware: Firmware,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    workdir: Path | None = None,
    tpm_socket: Path | None = None,
    writable: bool = False,
) -> BootResult:
    """Boot ``image`` once and report the outcome; the serial log is kept in ``workdir`` (or a temp dir).

    ``writable`` lets the guest write the image (first-boot repart's partitions persist for the next boot): pass a
    copy, never a release artifact.
    """
    require_tool("qemu-system-x86_64")
    if not image.is_file():
        raise FarmError(E.IMAGE_INPUT, f"no image at {image}", file=str(image))
    work = workdir or Path(tempfile.mkdtemp(prefix="mangos-boot-"))
    work.mkdir(parents=True, exist_ok=True)
    serial_log, monitor = work / "serial.log", work / "qemu-monitor.sock"
    serial_log.unlink(missing_ok=True)
    monitor.unlink(missing_ok=True)
    argv = qemu_argv(
        image=image, firmware=firmware, serial_log=serial_log, monitor=monitor, tpm_socket=tpm_socket,
        writable=writable,
    )  # fmt: skip
    with step("qemu boot", logger=log, image=str(image), secure_boot=firmware.secure_boot, writable=writable):
        start = time.monotonic()
        watcher = _Watcher(serial_log, monitor, start)
        watcher.start()
        try:
            result = run(argv, check=False, timeout=timeout)
        finally:
            watcher.stop.set()
            watcher.join(timeout=10)
        elapsed = time.monotonic() - start
    serial = serial_log.read_bytes().decode("utf-8", "replace") if serial_log.exists() else ""
    decided = classify(serial)
    if watcher.found is not None:
        outcome, evidence, seconds = watcher.found
    elif decided is not None:
        outcome, evidence, seconds = decided[0], decided[1], elapsed
    elif result.timed_out:
        outcome, evidence, seconds = Outcome.TIMEOUT, f"no outcome within {timeout:g}s", elapsed
    else:
        if result.returncode != 0 and not serial:
            raise FarmError(
                E.IMAGE_BOOT,
                f"qemu failed to start (exit {result.returncode})",
                hint=result.stderr.decode("utf-8", "replace")[-1500:].strip() or "run with --debug",
            )
        outcome, evidence, seconds = Outcome.EXITED, f"qemu exited ({result.returncode})", elapsed
    return BootResult(
        outcome=outcome,
        seconds=round(seconds, 1),
        evidence=evidence.strip(),
        serial_log=str(serial_log),
        serial_tail=ANSI.sub("", serial)[-SERIAL_TAIL:],
    )
