"""A worker's capabilities (:mod:`farm.recipes.needs`), found by trying each at start, and the set it may claim.

``debian``: :func:`farm.build.capabilities.probe_debian` (a namespace overlay mount). ``kvm``: QEMU starts the
machine the farm boots (q35 with SMM, for Secure Boot) with ``-accel kvm``: answered through QMP on stdin, so a
working KVM answers in a fraction of a second, and a ``/dev/kvm`` that cannot run it (no SMM, say) fails as fast,
with QEMU's reason; a QEMU that hangs is killed at the timeout. An operator can only narrow what was found
(:func:`allowed`): claiming a capability that failed its probe is refused.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from farm.build.capabilities import Probe, probe_debian
from farm.errors import E, FarmError
from farm.recipes.needs import CAPABILITIES, DEBIAN, KVM
from farm.run import run

KVM_TIMEOUT = 10.0  # seconds QEMU may take to start and answer
_QMP = b'{"execute": "qmp_capabilities"}\n{"execute": "query-kvm"}\n{"execute": "quit"}\n'


def kvm_probe_argv(machine: str | None = None) -> list[str]:
    """QEMU with ``-accel kvm``, stopped before the guest runs (``-S``), driven through QMP on stdin. Pure."""
    machine = machine or platform.machine()
    if machine in ("x86_64", "amd64"):
        qemu, board = "qemu-system-x86_64", "q35,smm=on"
    else:
        qemu, board = f"qemu-system-{'aarch64' if machine == 'arm64' else machine}", "virt"
    return [qemu, "-machine", board, "-accel", "kvm", "-nodefaults", "-no-user-config", "-display", "none", "-S",
            "-qmp", "stdio"]  # fmt: skip


def probe_kvm(*, timeout: float = KVM_TIMEOUT, argv: Sequence[str] | None = None) -> Probe:
    """Whether QEMU starts with ``-accel kvm`` here. Never raises for a missing capability."""
    argv = list(argv or kvm_probe_argv())
    hint = "boot images under TCG on this worker, or start it on a host whose KVM runs the farm's q35 machine"
    if not os.path.exists("/dev/kvm"):
        return _no(KVM, "there is no /dev/kvm", hint)
    if shutil.which(argv[0]) is None:
        return _no(KVM, f"{argv[0]} is not installed", "apt-get install qemu-system-x86")
    result = run(argv, input=_QMP, check=False, timeout=timeout)
    if result.timed_out:
        return _no(KVM, f"QEMU with -accel kvm did not answer within {timeout:.0f}s", hint)
    if result.returncode != 0 or b'"enabled": true' not in result.stdout:
        lines = [ln for ln in result.stderr.decode(errors="replace").splitlines() if "warning:" not in ln]
        why = lines[-1].strip() if lines else f"exit {result.returncode}"
        return _no(KVM, f"QEMU does not start with -accel kvm here ({why})", hint)
    return Probe(KVM, True)


def _no(capability: str, reason: str, hint: str) -> Probe:
    return Probe(capability, False, reason, FarmError(E.WORKER_CAPABILITY, reason, hint=hint))


PROBES: Mapping[str, Callable[[Path | None], Probe]] = {
    DEBIAN: probe_debian,
    KVM: lambda _scratch: probe_kvm(),
}


def probe(wanted: Sequence[str] = CAPABILITIES, scratch: Path | None = None) -> dict[str, Probe]:
    """The outcome of each capability's probe, for ``wanted`` ones only (a capability not wanted is not tried)."""
    return {c: PROBES[c](scratch) for c in CAPABILITIES if c in wanted}


def allowed(probes: Mapping[str, Probe], claimed: Sequence[str] | None) -> list[str]:
    """The capabilities a worker announces: those that passed their probe, narrowed to ``claimed`` when given. Pure.

    Raises a FarmError (``E-WORKER-CAPABILITY``) for a claimed capability that is unknown or failed its probe: a
    worker must never take builds it cannot run."""
    if claimed is None:
        return sorted(c for c, p in probes.items() if p.ok)
    for c in claimed:
        if c not in CAPABILITIES:
            raise FarmError(E.WORKER_CAPABILITY, f"unknown capability {c!r}",
                            hint=f"capabilities a worker can have: {', '.join(CAPABILITIES)}")  # fmt: skip
        found = probes.get(c)
        if found is None or not found.ok:
            why = found.reason if found is not None else "it was not probed"
            hint = found.error.hint if found is not None and found.error is not None else ""
            raise FarmError(E.WORKER_CAPABILITY, f"this worker cannot claim capability {c!r}: {why}",
                            hint=hint or "drop it from --capability")  # fmt: skip
    return sorted(set(claimed))
