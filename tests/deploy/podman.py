"""Container images for the compose test, built locally and cached by the digest of their inputs.

No container registry is reachable here, so nothing is pulled:

- the base image stands in for ``debian:bookworm-slim``: an ``mmdebstrap`` root of Debian 12 imported with
  ``podman import``. It carries what the Containerfile installs (so its ``apt-get install`` finds everything
  present) and Debian's ``redis-server`` (compose.test.yaml runs Redis from it).
- the farm image is the repository's Containerfile built with ``podman build --from BASE``.
- the services image (``tests/deploy/services.Containerfile``) adds moto's S3 server and an ``mc`` stand-in.

Each image is tagged ``localhost/NAME:DIGEST``, DIGEST being the sha256 of everything that goes into it (the
mmdebstrap command line, the Containerfile, the files it copies, the base's tag); an image whose tag exists is not
built again. Podman runs with ``runc``, explicit ulimits and the netavark network backend (``CONTAINERS_CONF``):
crun cannot run on this host's hybrid cgroups, podman's default ulimits exceed its hard limits (open files: the
host's hard limit, which builds need above their own 4096), and CNI without the dnsname plugin gives containers no
names for each other.

Build steps reach Debian's archive and PyPI through the host's network; the host's CA bundle is mounted for them,
because a TLS-intercepting egress proxy (as here) is trusted by the host's bundle and not by the image's.
"""

from __future__ import annotations

import hashlib
import os
import resource
import subprocess
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVICES_CONTAINERFILE = HERE / "services.Containerfile"
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")

BASE_PACKAGES = ("ca-certificates", "git", "bubblewrap", "build-essential", "python3-venv", "redis-server")
BASE_NAME = "localhost/mangos-farm-base"
FARM_NAME = "localhost/mangos-farm"
SERVICES_NAME = "localhost/mangos-compose-services"
FARM_LOCAL_TAG = "localhost/mangos-farm:local"  # compose.yaml's `image: mangos-farm:local`

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile={nofile}:{nofile}", "nproc=4096:4096"]
[engine]
runtime = "runc"
[network]
network_backend = "netavark"
"""


def mmdebstrap_argv(target: Path) -> list[str]:
    """The base root: Debian 12 minbase with the farm's packages; resolv.conf and hostname pinned."""
    return [
        "mmdebstrap",
        "--quiet",
        "--variant=minbase",
        f"--include={','.join(BASE_PACKAGES)}",
        '--customize-hook=echo nameserver 127.0.0.1 > "$1/etc/resolv.conf"',
        '--customize-hook=echo mangos > "$1/etc/hostname"',
        "bookworm",
        str(target),
    ]


def digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()[:20]


def tree_files(*paths: str) -> list[Path]:
    """Every file under ``paths`` (relative to the repository) a build copies; caches and bytecode left out."""
    found: list[Path] = []
    for rel in paths:
        path = ROOT / rel
        if path.is_file():
            found.append(path)
            continue
        for file in sorted(path.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                found.append(file)
    return found


def files_digest(extra: Iterable[bytes], files: Iterable[Path]) -> str:
    parts = list(extra)
    for file in files:
        parts.append(str(file.relative_to(ROOT)).encode())
        parts.append(file.read_bytes())
    return digest(parts)


def base_tag() -> str:
    return f"{BASE_NAME}:{digest(a.encode() for a in mmdebstrap_argv(Path('TARGET')))}"


def farm_tag(base: str) -> str:
    files = tree_files("Containerfile", ".dockerignore", "pyproject.toml", "README.md", "farm", "workers")
    return f"{FARM_NAME}:{files_digest([base.encode()], files)}"


def services_tag(base: str) -> str:
    files = tree_files(
        *(
            str(p.relative_to(ROOT))
            for p in (SERVICES_CONTAINERFILE, HERE / "mc_standin.py", ROOT / "tests/store/moto_launcher.py")
        )
    )
    return f"{SERVICES_NAME}:{files_digest([base.encode()], files)}"


class Podman:
    """``podman`` with this test's containers.conf (runc, explicit ulimits)."""

    def __init__(self, conf_dir: Path, log: Path) -> None:
        conf_dir.mkdir(parents=True, exist_ok=True)
        self.conf = conf_dir / "containers.conf"
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]  # podman's default (2^20) may exceed the host's
        self.conf.write_text(CONTAINERS_CONF.format(nofile=min(nofile, 1 << 20)))
        pip_conf = conf_dir / "pip.conf"
        pip_conf.write_text("[global]\ncert = /run/mangos-host-ca.crt\n")
        self.build_volumes = [f"{HOST_CA}:/run/mangos-host-ca.crt:ro", f"{pip_conf}:/etc/pip.conf:ro"]
        self.log = log

    @property
    def env(self) -> Mapping[str, str]:
        return {**os.environ, "CONTAINERS_CONF": str(self.conf)}

    def run(self, argv: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        with self.log.open("a") as log:
            log.write(f"$ {' '.join(argv)}\n")
            log.flush()
            done = subprocess.run(
                argv,
                check=False,
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                timeout=timeout,
            )
            log.write(done.stdout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}; log: {self.log}")
        return done

    def exists(self, tag: str) -> bool:
        return self.run(["podman", "image", "exists", tag], check=False).returncode == 0

    def build_args(self, tag: str, containerfile: Path, base: str) -> list[str]:
        argv = ["nice", "-n", "10", "podman", "build", "--quiet", "--network", "host", "--from", base]
        for volume in self.build_volumes:
            argv += ["--volume", volume]
        return [*argv, "-f", str(containerfile), "-t", tag, str(ROOT)]

    def ensure_base(self, work: Path) -> tuple[str, bool]:
        """The base image's tag, and whether it had to be made."""
        tag = base_tag()
        if self.exists(tag):
            return tag, False
        tar = work / "base.tar"
        self.run(["nice", "-n", "10", *mmdebstrap_argv(tar)])
        self.run(["podman", "import", "--quiet", str(tar), tag])
        tar.unlink()
        return tag, True

    def ensure_built(self, images: Mapping[str, Path], base: str) -> list[str]:
        """Build each ``containerfile`` FROM ``base`` as its tag unless that exists, all at once (their steps wait
        on the network: apt, PyPI); then drop the older images of what was built. The tags built."""
        missing = [tag for tag in images if not self.exists(tag)]
        with ThreadPoolExecutor(max_workers=max(1, len(missing))) as pool:
            for future in [pool.submit(self.run, self.build_args(t, images[t], base), 900) for t in missing]:
                future.result()
        for tag in missing:  # after every build: a prune during one could take another's layers
            self.drop_older(tag)
        return missing

    def drop_older(self, tag: str) -> None:
        """Remove the images of ``tag``'s repository made from other inputs (each farm change makes one)."""
        repository = tag.rsplit(":", 1)[0]
        listed = self.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", repository], check=False)
        older = [t for t in listed.stdout.split() if t != tag and not t.endswith(":local")]
        if older:
            self.run(["podman", "rmi", "--force", *older], check=False)
        self.run(["podman", "image", "prune", "--force"], check=False)

    def tag(self, source: str, target: str) -> None:
        self.run(["podman", "tag", source, target])
