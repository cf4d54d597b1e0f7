"""The image bench's baseline: mkosi 24.3 (bookworm-backports) building the image's package set, signed and bootable.

mkosi 24 needs systemd >= 254 (repart, a newer bootctl), which the host (bookworm, 252) does not have and must keep.
So mkosi runs in a chroot made by mmdebstrap from bookworm with bookworm-backports pinned first (mkosi 24.3 and
systemd 254 from backports), kept under ``HOME/cache/bench-mkosi/chroot`` between runs. It runs there in its own
mount namespace (``unshare --mount`` + proc, sys, dev, a copy of the host's resolv.conf), building from the Debian
archive over the network: the requested packages of our image (``image build --check-inputs``), a UKI signed with
the release db key (Secure Boot) and a disk with an erofs root, its dm-verity hash partition and a signature
partition signed with the release verity key. **cold**: an empty package cache (downloads included); **warm**: the
same build again with the package cache filled (mkosi installs every package and builds its initrd again each time).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench._common import progress

SUITE_MIRROR = "http://deb.debian.org/debian"
CHROOT_PACKAGES = (
    "mkosi", "systemd", "systemd-container", "systemd-boot", "systemd-boot-efi", "bubblewrap", "debian-archive-keyring",
    "dosfstools", "mtools", "e2fsprogs", "erofs-utils", "cryptsetup-bin", "sbsigntool", "openssl", "fdisk",
    "python3-pefile", "python3-cryptography", "zstd", "xz-utils", "cpio", "kmod", "ca-certificates", "apt", "dpkg-dev",
)  # fmt: skip
PIN = "Package: *\\nPin: release n=bookworm-backports\\nPin-Priority: 500\\n"

# The suites our image resolves from (mkosi's default list adds bookworm-debug, which this mirror does not serve).
SOURCES = "".join(
    f"Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\n"
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
    for uri, suite in (
        (SUITE_MIRROR, "bookworm"),
        (SUITE_MIRROR, "bookworm-updates"),
        ("http://security.debian.org/debian-security", "bookworm-security"),
    )
)

REPART = {
    "00-esp.conf": "[Partition]\nType=esp\nFormat=vfat\nCopyFiles=/boot:/\nCopyFiles=/efi:/\nSizeMinBytes=512M\n",
    "10-root.conf": "[Partition]\nType=root\nFormat=erofs\nCopyFiles=/\nVerity=data\nVerityMatchKey=root\n"
    "Minimize=best\nExcludeFilesTarget=/var/\n",
    "11-root-verity.conf": "[Partition]\nType=root-verity\nVerity=hash\nVerityMatchKey=root\nMinimize=best\n",
    "12-root-verity-sig.conf": "[Partition]\nType=root-verity-sig\nVerity=signature\nVerityMatchKey=root\n",
}


def chroot_argv(dest: Path) -> list[str]:
    hook = f'mkdir -p "$1/etc/apt/preferences.d"; printf \'{PIN}\' > "$1/etc/apt/preferences.d/bpo"'
    return [
        "mmdebstrap", "--variant=apt", "--mode=root", "--format=directory", f"--include={','.join(CHROOT_PACKAGES)}",
        f"--setup-hook={hook}", "bookworm", str(dest), f"deb {SUITE_MIRROR} bookworm main",
        f"deb {SUITE_MIRROR} bookworm-backports main",
    ]  # fmt: skip


def ensure_chroot(cache: Path) -> tuple[Path, float]:
    """The mkosi chroot (made once; a half-made one is made again) and the seconds making it took now."""
    root, done = cache / "chroot", cache / "chroot.done"
    if done.exists():
        return root, 0.0
    shutil.rmtree(root, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    progress("making the mkosi chroot (mmdebstrap, bookworm + backports)")
    t0 = time.monotonic()
    subprocess.run(chroot_argv(root), check=True, capture_output=True)
    done.write_text("ok\n")
    return root, round(time.monotonic() - t0, 2)


def mkosi_conf(packages: list[str]) -> str:
    return (
        "[Distribution]\nDistribution=debian\nRelease=bookworm\nRepositories=main\n"
        f"Mirror={SUITE_MIRROR}\n\n"
        "[Output]\nFormat=disk\nImageId=mkosi-bench\nOutputDirectory=out\n"
        "CacheDirectory=cache\nPackageCacheDirectory=/bench-packages\nSplitArtifacts=yes\n\n"
        "[Content]\nBootable=yes\nBootloader=systemd-boot\nUnifiedKernelImages=yes\n"
        "KernelCommandLine=console=ttyS0\n"
        f"Packages={','.join(packages)}\n\n"
        "[Validation]\nSecureBoot=yes\nSecureBootKey=/keys/db.key\nSecureBootCertificate=/keys/db.crt\n"
        "VerityKey=/keys/verity.key\nVerityCertificate=/keys/verity.crt\n"
        "SignExpectedPcr=no\n"  # systemd-measure fails without a TPM stack in the chroot; our image signs no PCRs
    )


def _script(root: Path, cmd: str) -> str:
    mounts = [
        f"mount --bind {root} {root}",  # "/" must be a mount point in the chroot (mkosi asks findmnt about it)
        f"mount -t proc proc {root}/proc",
        f"mount --rbind /sys {root}/sys",
        f"mount --rbind /dev {root}/dev",
        f"mount -t tmpfs tmpfs {root}/run",
        f"mount -t tmpfs tmpfs {root}/tmp",  # noqa: S108 (the chroot's own /tmp)
        f"cp /etc/resolv.conf {root}/etc/resolv.conf",
    ]
    return "set -e\nmount --make-rprivate /\n" + "\n".join(mounts) + f"\nexec chroot {root} /bin/sh -c '{cmd}'\n"


def run_mkosi(root: Path, work_in_root: str) -> tuple[float, dict[str, float], str]:
    """(seconds, seconds per step, log): a step runs from one of mkosi's ``‣`` lines to the next."""
    cmd = f"cd {work_in_root} && mkosi --force build 2>&1"
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["unshare", "--mount", "--fork", "--", "/bin/sh", "-c", _script(root, cmd)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines, marks = [], []
    for line in proc.stdout:
        lines.append(line)
        step = line[1:].strip()
        if line.startswith("\u2023") and step[:1].isupper() and "size is" not in step:  # a step, not a note
            marks.append((time.monotonic(), step[:60]))
    proc.wait()
    seconds = round(time.monotonic() - t0, 2)
    log = "".join(lines)
    if proc.returncode != 0:
        raise RuntimeError(f"mkosi failed after {seconds}s: {log[-1500:]}")
    steps: dict[str, float] = {}
    ends = [t for t, _ in marks[1:]] + [t0 + seconds]
    for (start, name), end in zip(marks, ends, strict=True):
        steps[name] = round(steps.get(name, 0.0) + end - start, 2)
    return seconds, steps, log


def requested(home: Path) -> list[str]:
    from tests.lib.cli import REPO, Farm

    farm = Farm.at(REPO, home, SOURCE_DATE_EPOCH="1700000000")
    fallback = "--allow-archive-fallback"  # as bench_image: a farm build behind the archive is not the bench's subject
    out = str(home / "work/bench")
    found = farm.json("image", "build", "--check-inputs", fallback, "--recipes", "recipes", "-o", out)
    return [str(p) for p in found["requested"]]


def baseline(home: Path, work: Path, mode: str, *, keep: bool = False) -> dict[str, Any]:
    """mkosi's cold and/or warm build of the same package set, or ``{"error": why}``."""
    try:
        root, chroot_seconds = ensure_chroot(home / "cache" / "bench-mkosi")
        version = subprocess.run(["chroot", str(root), "mkosi", "--version"], capture_output=True, text=True,
                                 check=True).stdout.strip()  # fmt: skip
        inside = "/bench"
        project = root / inside.lstrip("/")
        shutil.rmtree(project, ignore_errors=True)
        (project / "mkosi.repart").mkdir(parents=True)
        # mkosi takes the UKI's stub from the image, ours from the host: the image gets systemd-boot too
        (project / "mkosi.conf").write_text(mkosi_conf([*requested(home), "systemd-boot", "systemd-boot-efi"]))
        sources = project / "mkosi.pkgmngr/etc/apt/sources.list.d/mkosi.sources"
        sources.parent.mkdir(parents=True)
        sources.write_text(SOURCES)
        for name, text in REPART.items():
            (project / "mkosi.repart" / name).write_text(text)
        (root / "keys").mkdir(exist_ok=True)
        for name in ("db.key", "db.crt", "verity.key", "verity.crt"):
            shutil.copyfile(home / "release" / name, root / "keys" / name)
            (root / "keys" / name).chmod(0o600)
        result: dict[str, Any] = {"version": version, "chroot_seconds": chroot_seconds}
        for run_mode in ("cold", "warm"):
            if mode not in ("both", run_mode) and not (run_mode == "cold" and mode == "warm"):
                continue
            if run_mode == "cold":  # nothing downloaded or built before
                for cached in (project / "cache", root / "bench-packages", root / "var/cache/mkosi"):
                    shutil.rmtree(cached, ignore_errors=True)
            for cached in (project / "cache", root / "bench-packages"):
                cached.mkdir(exist_ok=True)
            progress(f"mkosi build, {run_mode}")
            seconds, steps, log = run_mkosi(root, inside)
            outputs = {p.name: p.stat().st_size for p in (project / "out").iterdir() if p.is_file()}
            result[run_mode] = {"total_seconds": seconds, "stages": steps, "outputs": outputs}
            (work / f"mkosi-{run_mode}.log").parent.mkdir(parents=True, exist_ok=True)
            (work / f"mkosi-{run_mode}.log").write_text(log)
        if not keep:
            shutil.rmtree(project / "out", ignore_errors=True)
        return result
    except (OSError, RuntimeError, subprocess.CalledProcessError, json.JSONDecodeError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        return {"error": f"{type(exc).__name__}: {exc} {str(detail)[-800:]}".strip()}
