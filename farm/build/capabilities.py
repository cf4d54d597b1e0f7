"""What this machine and process can build, found by trying it (a worker probes at start).

``debian``: a Debian build's mounts succeed here, i.e. an overlay mounted in a mount namespace of the build's own:
for a root worker a plain one, for any other worker one inside a user namespace with its subordinate-id map
(:mod:`farm.build.userns`), exactly as :func:`farm.build.debian.run_debian_build` makes them.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from farm.build import userns
from farm.errors import E, FarmError
from farm.run import run

DEBIAN = "debian"

# Mounts an overlay in the namespace, writes through it and checks the write landed in the upper layer; then
# removes the probe's files from inside (the overlay's work directory is mode 000, owned by the namespace's root).
_OVERLAY = (
    'cd "$1" && mkdir L U W M && mount -t overlay overlay -o lowerdir=L,upperdir=U,workdir=W M '
    "&& echo ok > M/probe && umount M && test -f U/probe; rc=$?; rm -rf L U W M; exit $rc"
)


@dataclass(frozen=True)
class Probe:
    """The outcome of one capability probe: ``reason`` says why not (empty when ``ok``); ``error`` is what to
    raise when the capability is claimed anyway."""

    capability: str
    ok: bool
    reason: str = ""
    error: FarmError | None = None


def overlay_probe_argv(scratch: Path, idmap: userns.IdMap | None) -> list[str]:
    """The probe's command: a mount namespace (in a user namespace with ``idmap`` when given) mounting an overlay
    in ``scratch``. Pure."""
    inner = ["unshare", "--mount", "--", "/bin/sh", "-c", _OVERLAY, "probe", str(scratch)]
    return userns.wrap(idmap, inner) if idmap is not None else inner


def _refused(message: str, hint: str) -> Probe:
    return Probe(DEBIAN, False, message, FarmError(E.WORKER_CAPABILITY, message, hint=hint))


def probe_debian(scratch: Path | None = None, *, timeout: float = 30.0) -> Probe:
    """Whether this process can run Debian builds: the id map (without root) and a namespace overlay mount.

    ``scratch`` is a directory to probe in (default: a temporary one); overlayfs needs a file system that takes
    an upper layer, so give the worker's work directory. Never raises for a missing capability."""
    idmap = None
    if not userns.note_root():  # a root worker logs (once) that it need not be root
        if shutil.which("newuidmap") is None or shutil.which("newgidmap") is None:
            return _refused("newuidmap/newgidmap are not installed", "apt-get install uidmap")
        idmap = userns.id_map()
        if idmap is None:
            error = userns.no_subids_error()
            return Probe(DEBIAN, False, error.message, error)
    if shutil.which("unshare") is None:
        return _refused("unshare is not installed", "apt-get install util-linux")
    with tempfile.TemporaryDirectory(dir=scratch, prefix="mangos-probe-") as tmp:
        result = run(overlay_probe_argv(Path(tmp), idmap), check=False, timeout=timeout)
    if result.returncode == 0:
        return Probe(DEBIAN, True)
    where = "in a user namespace " if idmap is not None else ""
    detail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
    return _refused(
        f"an overlay mount {where}failed here ({detail[0]})",
        "Debian builds need overlayfs in a mount namespace (kernel 5.11 or later without root); "
        "check that user namespaces are enabled (sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces)",
    )
