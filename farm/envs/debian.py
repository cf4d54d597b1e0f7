"""Pinned Debian/Ubuntu build environments, made with mmdebstrap and identified by the sha256 of their tarball.

An environment is defined as data (``envs/NAME.toml``: distribution, suite, mirror, architecture, variant,
``source_date_epoch``, extra packages) and made with ``mmdebstrap --variant=buildd`` into a tarball. With
``SOURCE_DATE_EPOCH`` set, mmdebstrap clamps every mtime and drops its logs and caches; the only host state it
copies in is ``/etc/resolv.conf`` and ``/etc/hostname``, which customize hooks overwrite with fixed content. The
tarball is therefore bit-identical run to run (for the same archive state), and its sha256 is the environment's
digest.

The tarball goes into the store as a blob; the :class:`EnvRecord` (the spec, the digest and the exact installed
package list read from the tarball's dpkg status) goes into the store as a blob too, so a worker elsewhere can
find it by digest, and into ``HOME/envs/NAME.json`` for this machine.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import E, ErrorGroup, FarmError, StoreError
from farm.fsutil import atomic_write
from farm.identity import canonical_json, sha256_hex
from farm.log import step
from farm.run import require_tool, run
from farm.store import Store
from farm.tomlfile import load_toml

RECORD_SCHEMA = "https://mangos.dev/farm/env-record/v1"
BUILD_TIMEOUT = 1800

# What the customize hooks write over the host's copies (the sandbox has no network; the name is fixed).
RESOLV_CONF = "# MANGOS build environment: no network"
HOSTNAME = "mangos-buildd"

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+._-]*$")
WORD_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")
MIRROR_RE = re.compile(r"^(https?|file)://\S+$")
VARIANTS = ("extract", "custom", "essential", "apt", "required", "minbase", "buildd", "important", "standard")

# The file format as data: key -> (type, required, help).
SCHEMA: dict[str, tuple[type, bool, str]] = {
    "distribution": (str, True, 'the distribution, e.g. distribution = "debian" (or "ubuntu")'),
    "suite": (str, True, 'the suite or codename, e.g. suite = "bookworm"'),
    "mirror": (str, True, 'the archive URL, e.g. mirror = "http://deb.debian.org/debian"'),
    "components": (list, False, 'archive components, e.g. components = ["main"] (the default)'),
    "architecture": (str, True, 'the Debian architecture, e.g. architecture = "amd64"'),
    "variant": (str, True, 'the mmdebstrap variant, e.g. variant = "buildd"'),
    "source_date_epoch": (int, True, "a fixed time in seconds since 1970, e.g. source_date_epoch = 1704067200"),
    "packages": (list, False, 'extra packages to install, e.g. packages = ["fakeroot"] (default none)'),
    "keyring": (str, False, 'the archive keyring, e.g. keyring = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"'),
}


@dataclass(frozen=True)
class EnvSpec:
    name: str
    distribution: str
    suite: str
    mirror: str
    architecture: str
    variant: str
    source_date_epoch: int
    components: tuple[str, ...] = ("main",)
    packages: tuple[str, ...] = ()
    keyring: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "suite": self.suite,
            "mirror": self.mirror,
            "components": list(self.components),
            "architecture": self.architecture,
            "variant": self.variant,
            "source_date_epoch": self.source_date_epoch,
            "packages": list(self.packages),
            "keyring": self.keyring,
        }


def parse_spec(name: str, data: Mapping[str, Any], path: Path | str | None = None) -> EnvSpec:
    """Validate a parsed definition; every problem is reported at once, each with its field and the fix."""
    errors: list[FarmError] = []

    def bad(key: str, message: str) -> None:
        errors.append(
            FarmError(E.ENV_SPEC, message, file=path, field=key, hint=SCHEMA[key][2] if key in SCHEMA else "")
        )

    if not NAME_RE.match(name):
        errors.append(
            FarmError(
                E.ENV_SPEC,
                f"'{name}' is not a valid environment name",
                file=path,
                hint="name the file like bookworm-amd64.toml (lowercase letters, digits, '.', '+', '-', '_')",
            )
        )
    for key in data:
        if key not in SCHEMA:
            errors.append(
                FarmError(
                    E.ENV_SPEC,
                    f"unknown key '{key}'",
                    file=path,
                    field=key,
                    hint="allowed keys: " + ", ".join(SCHEMA),
                )
            )
    for key, (typ, required, _) in SCHEMA.items():
        if key not in data:
            if required:
                bad(key, "missing required field")
            continue
        value = data[key]
        if not isinstance(value, typ) or isinstance(value, bool):
            bad(key, f"must be a {typ.__name__}, got {type(value).__name__}")
        elif isinstance(value, list) and not all(isinstance(v, str) for v in value):
            bad(key, "must be a list of strings")
    if errors:
        raise ErrorGroup(errors)

    def check(key: str, ok: bool, message: str) -> None:
        if not ok:
            bad(key, message)

    check("distribution", bool(WORD_RE.match(data["distribution"])), f"'{data['distribution']}' is not a name")
    check("suite", bool(WORD_RE.match(data["suite"])), f"'{data['suite']}' is not a suite name")
    check("mirror", bool(MIRROR_RE.match(data["mirror"])), f"'{data['mirror']}' is not an http(s):// or file:// URL")
    check("architecture", bool(WORD_RE.match(data["architecture"])), f"'{data['architecture']}' is not an arch")
    check("variant", data["variant"] in VARIANTS, f"'{data['variant']}' is not one of: " + ", ".join(VARIANTS))
    epoch = data["source_date_epoch"]
    check("source_date_epoch", 0 <= epoch < 2**32, f"{epoch} is out of range (0 .. 2^32-1)")
    components = tuple(data.get("components", ["main"]))
    check("components", bool(components), "must name at least one component")
    for c in components:
        check("components", bool(WORD_RE.match(c)), f"'{c}' is not a component name")
    packages = tuple(data.get("packages", []))
    for p in packages:
        check("packages", bool(PACKAGE_RE.match(p)), f"'{p}' is not a package name (NAME or NAME=VERSION)")
    check("packages", len(set(packages)) == len(packages), "lists a package twice")
    keyring = data.get("keyring")
    check("keyring", keyring is None or keyring.startswith("/"), "must be an absolute path")
    if errors:
        raise ErrorGroup(errors)
    return EnvSpec(
        name=name,
        distribution=data["distribution"],
        suite=data["suite"],
        mirror=data["mirror"],
        architecture=data["architecture"],
        variant=data["variant"],
        source_date_epoch=epoch,
        components=components,
        packages=packages,
        keyring=keyring,
    )


def load_spec(path: Path) -> EnvSpec:
    data = load_toml(
        path,
        E.ENV_SPEC,
        what="environment definition",
        read_code=E.ENV_UNKNOWN,
        read_hint="pass the name of a file in the envs directory (e.g. bookworm-amd64), or use --envs DIR",
    )
    return parse_spec(path.stem, data, path)


def find_spec(name: str, envs_dir: Path) -> EnvSpec:
    """An environment by name (``envs_dir/NAME.toml``) or by the path of its file."""
    path = Path(name) if name.endswith(".toml") else envs_dir / f"{name}.toml"
    return load_spec(path)


# -- making it -------------------------------------------------------------------------------------------------
def mmdebstrap_argv(spec: EnvSpec, out_tar: Path, *, mode: str = "root", tool: str = "mmdebstrap") -> list[str]:
    """The exact mmdebstrap command that makes ``spec`` into the tarball ``out_tar``."""
    argv = [
        tool,
        f"--variant={spec.variant}",
        f"--architectures={spec.architecture}",
        f"--components={','.join(spec.components)}",
        f"--mode={mode}",
        "--format=tar",
    ]
    if spec.packages:
        argv.append(f"--include={','.join(spec.packages)}")
    if spec.keyring:
        argv.append(f"--keyring={spec.keyring}")
    argv += [
        # mmdebstrap copies these two from the host; pin them so the tarball does not depend on the machine
        f"--customize-hook=printf '%s\\n' '{RESOLV_CONF}' > \"$1/etc/resolv.conf\"",
        f"--customize-hook=printf '%s\\n' '{HOSTNAME}' > \"$1/etc/hostname\"",
        spec.suite,
        str(out_tar),
        spec.mirror,
    ]
    return argv


def mmdebstrap_env(spec: EnvSpec, host_env: Mapping[str, str]) -> dict[str, str]:
    """A clean environment for mmdebstrap: fixed time, locale and zone; the host's proxy settings only."""
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LC_ALL": "C.UTF-8",
        "TZ": "UTC",
        "SOURCE_DATE_EPOCH": str(spec.source_date_epoch),
    }
    for key in ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY"):
        if key in host_env:
            env[key] = host_env[key]
    return env


def parse_dpkg_status(text: str) -> list[dict[str, str]]:
    """The installed packages (name, version, arch) of a dpkg status file, sorted by name."""
    packages = []
    for para in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in para.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages.append(
                {
                    "name": fields["Package"],
                    "version": fields.get("Version", ""),
                    "arch": fields.get("Architecture", ""),
                }
            )
    return sorted(packages, key=lambda p: (p["name"], p["arch"]))


def tar_packages(tar_path: Path) -> list[dict[str, str]]:
    with tarfile.open(tar_path, "r:") as tar:
        for member_name in ("./var/lib/dpkg/status", "var/lib/dpkg/status"):
            try:
                member = tar.getmember(member_name)
            except KeyError:
                continue
            fh = tar.extractfile(member)
            if fh is not None:
                return parse_dpkg_status(fh.read().decode("utf-8", "replace"))
    raise FarmError(
        E.ENV_BUILD,
        f"{tar_path} has no /var/lib/dpkg/status",
        hint="the environment was not made by mmdebstrap with a dpkg-based variant; check the variant",
    )


@dataclass(frozen=True)
class EnvRecord:
    """What an environment is: its digest (sha256 of the tarball), size, spec and installed packages.

    ``record`` (the digest of this record's blob in the store) and ``seconds`` describe this making of it and are
    not part of the record's own content.
    """

    name: str
    digest: str
    size: int
    spec: dict[str, Any]
    packages: tuple[dict[str, str], ...]
    record: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def content(self) -> dict[str, Any]:
        return {
            "schema": RECORD_SCHEMA,
            "name": self.name,
            "digest": self.digest,
            "size": self.size,
            "spec": self.spec,
            "packages": list(self.packages),
        }

    def content_bytes(self) -> bytes:
        return canonical_json(self.content())

    def to_json(self) -> dict[str, Any]:
        return self.content() | {"record": self.record, "seconds": self.seconds} | self.extra

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EnvRecord:
        known = {"schema", "name", "digest", "size", "spec", "packages", "record", "seconds"}
        return cls(
            name=data["name"],
            digest=data["digest"],
            size=int(data["size"]),
            spec=dict(data["spec"]),
            packages=tuple(dict(p) for p in data["packages"]),
            record=data.get("record", ""),
            seconds=float(data.get("seconds", 0.0)),
            extra={k: v for k, v in data.items() if k not in known},
        )


def save_record(record: EnvRecord, records_dir: Path) -> Path:
    path = records_dir / f"{record.name}.json"
    atomic_write(path, json.dumps(record.to_json(), indent=1, sort_keys=True).encode() + b"\n")
    return path


def load_records(records_dir: Path) -> list[EnvRecord]:
    records = []
    for path in sorted(records_dir.glob("*.json")) if records_dir.is_dir() else []:
        try:
            records.append(EnvRecord.from_json(json.loads(path.read_text())))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FarmError(
                E.ENV_UNKNOWN,
                f"unreadable environment record: {exc}",
                file=path,
                hint="rebuild it with 'mangos-farm env build NAME' (or delete the file)",
            ) from None
    return records


def build_env(
    spec: EnvSpec,
    store: Store,
    workdir: Path,
    *,
    records_dir: Path | None = None,
    host_env: Mapping[str, str] | None = None,
) -> EnvRecord:
    """Make the environment, store its tarball and its record, and return the record."""
    tool = require_tool("mmdebstrap")
    workdir.mkdir(parents=True, exist_ok=True)
    mode = "root" if os.geteuid() == 0 else "unshare"
    start = time.monotonic()
    with step("env build", env=spec.name, suite=spec.suite, arch=spec.architecture):
        with tempfile.TemporaryDirectory(dir=workdir, prefix=f"{spec.name}-") as tmp:
            out_tar = Path(tmp) / f"{spec.name}.tar"
            argv = mmdebstrap_argv(spec, out_tar, mode=mode, tool=tool)
            with step("mmdebstrap", mode=mode):
                run(argv, env=mmdebstrap_env(spec, os.environ if host_env is None else host_env), timeout=BUILD_TIMEOUT)
            with step("read package list"):
                packages = tar_packages(out_tar)
            with step("store tarball"):
                artifact = store.put_file(out_tar)
        record = EnvRecord(spec.name, artifact.digest, artifact.size, spec.to_json(), tuple(packages))
        with step("store record", digest=artifact.digest[:16], packages=len(packages)):
            blob = record.content_bytes()
            record_digest = store.put_bytes(blob)
            if record_digest != sha256_hex(blob):
                raise StoreError(E.STORE_CORRUPT, "the store returned a wrong digest for the record", hint="check it")
        record = EnvRecord(
            record.name,
            record.digest,
            record.size,
            record.spec,
            record.packages,
            record=record_digest,
            seconds=round(time.monotonic() - start, 3),
        )
        if records_dir is not None:
            save_record(record, records_dir)
    return record
