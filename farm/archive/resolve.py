"""Which archive packages a set of wishes comes to: apt in simulate mode, read back as pins (no sha256 yet).

apt resolves against its current lists and a dpkg status of our choosing (an environment's, or an empty one), takes
no lock and installs nothing; its ``Inst`` lines name every package with the exact version and architecture.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from farm.archive.pin import Pin
from farm.errors import E, FarmError
from farm.log import step
from farm.run import CommandFailed, run
from farm.store import Store

log = logging.getLogger(__name__)

APT_TIMEOUT = 600

# "Inst NAME [OLD] (VERSION ARCHIVE[, ARCHIVE...] [ARCH])" as apt-get -s prints it.
_INST_RE = re.compile(r"^Inst (?P<name>\S+)(?: \[[^\]]*\])? \((?P<version>\S+) .*\[(?P<arch>[^\]\s]+)\]\)")


def simulate_argv(status: Path, *command: str, cache: Path | None = None) -> list[str]:
    """apt in simulate mode against the dpkg status file ``status``: no lock, no recommends.

    With ``cache``, apt keeps its binary cache of the lists there (``srcpkgcache.bin``, rebuilt by apt itself when a
    list changes) instead of parsing every list again on each call, whatever the host's apt.conf says (container
    images often switch it off); the cache of the status and the command line's .debs is never kept."""
    lists = ["-o", f"Dir::Cache::srcpkgcache={cache / 'srcpkgcache.bin'}"] if cache else []
    cached = [*lists, "-o", "Dir::Cache::pkgcache="] if cache else []
    return [
        "apt-get", "-s", "-q", "--no-install-recommends",
        "-o", f"Dir::State::status={status}",
        "-o", "Debug::NoLocking=1",
        "-o", "APT::Get::Show-User-Simulation-Note=false",
        *cached,
        *command,
    ]  # fmt: skip


def build_dep_argv(status: Path, source_dir: Path) -> list[str]:
    """What the Build-Depends of an unpacked source need on top of an environment's dpkg status."""
    return simulate_argv(status, "build-dep", str(source_dir))


def install_argv(status: Path, packages: Sequence[str], cache: Path | None = None) -> list[str]:
    """What installing ``packages`` takes; on an empty dpkg status, the exact versions a fresh install would get."""
    return simulate_argv(status, "install", *packages, cache=cache)


def parse_simulation(text: str) -> list[Pin]:
    """The ``Inst`` lines of ``apt-get -s`` output, as pins without sha256, sorted by package."""
    pins = {}
    for line in text.splitlines():
        m = _INST_RE.match(line)
        if m:
            pins[(m["name"], m["arch"])] = Pin(m["name"], m["version"], m["arch"])
    return sorted(pins.values())


def exclude_pins(pins: Iterable[Pin], exclude: Iterable[str]) -> list[Pin]:
    """Drop the packages that the farm builds itself (their dependencies, resolved with them, stay)."""
    names = set(exclude)
    return sorted(p for p in pins if p.package not in names)


def resolve_closure(env_status: Path, source_dir: Path, exclude: set[str]) -> list[Pin]:
    """What apt would install to satisfy ``source_dir``'s Build-Depends on top of the environment, minus ``exclude``."""
    source_dir = source_dir.resolve()
    with step("resolve build-depends", log, source=source_dir.name):
        try:
            result = run(build_dep_argv(env_status, source_dir), env=os.environ | {"LC_ALL": "C"}, timeout=APT_TIMEOUT)
        except CommandFailed as exc:
            detail = exc.result.stdout.decode("utf-8", "replace") + exc.result.stderr.decode("utf-8", "replace")
            lines = [ln for ln in detail.splitlines() if ln.strip()][-12:]
            raise FarmError(
                E.ARCHIVE_UNSATISFIABLE,
                f"the Build-Depends of {source_dir.name} cannot be satisfied from the archive:\n" + "\n".join(lines),
                hint="run 'apt-get update'; if it persists, the package needs a build-dependency the archive lacks",
            ) from None
    return exclude_pins(parse_simulation(result.text), exclude)


def resolve_install(packages: Sequence[str], work: Path, cache: Path | None = None) -> list[Pin]:
    """Every package (with its version and architecture) a fresh system with ``packages`` installed would hold;
    ``cache``: a directory for apt's binary cache of the lists (:func:`simulate_argv`)."""
    status = work / "empty-status"
    status.write_bytes(b"")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    env = {"LC_ALL": "C", "PATH": "/usr/sbin:/usr/bin:/bin"}
    result = run(install_argv(status, packages, cache), check=False, env=env)
    if result.returncode != 0:
        raise FarmError(
            E.ARCHIVE_UNSATISFIABLE,
            "the image's packages cannot be installed together: " + result.stdout.decode()[-1500:].strip(),
            hint="check the package names (payload, profile) and run 'apt-get update'",
        )
    return parse_simulation(result.text)


def env_status_file(store: Store, digest: str, dest_dir: Path) -> Path:
    """The environment's /var/lib/dpkg/status, from its tarball in the store (verified on the way out)."""
    tar = dest_dir / "env.tar"
    store.fetch_blob(digest, tar)
    status = dest_dir / "status"
    with status.open("wb") as out:
        run(["tar", "-xOf", str(tar), "./var/lib/dpkg/status"], stdout=out)
    tar.unlink()
    return status
