"""The farm's own kernel in the image: it checks the root's verity signature itself (QEMU/OVMF, Secure Boot, TCG).

One kernel (``make kernel`` in the persistent home of :func:`tests.lib.kernel.kernel_home`) and one image built with
it (``image build --kernel``, archive packages only) per session:
- the image boots to the self-test, which reports that the kernel checked the root's signature (``verity-sig=kernel``:
  the live dm-verity table carries the signature's keyring key, and ``dm_verity.require_signatures`` is on);
- a copy whose signature partition holds a valid signature of the same root hash by another key (everything else the
  image's own) is refused by the kernel: the root is never opened, let alone mounted;
- ``trace uki:.linux`` follows the UKI's kernel back to linux-image-mangos's build, its source commit and the digest
  of the certificate inside the kernel;
- ``image build --kernel`` refuses a vmlinuz whose bytes differ from its signed provenance.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.image import boot, firmware, trace, uki
from farm.image.kernel import IMAGE_DIR
from farm.image.verify import verify_image
from farm.settings import Settings
from farm.trust.keys import trusted_keys
from tests.lib.cli import REPO
from tests.lib.kernel import (
    KERNEL_BUILD_TIMEOUT,
    KernelImage,
    build_kernel_image,
    farm_env,
    foreign_signed_copy,
    kernel_home,
    make_kernel,
)
from tests.lib.tools import require

# A cold kernel build (~20 min) may happen in the first test's set-up; a boot has its own limit (BOOT_TIMEOUT).
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(KERNEL_BUILD_TIMEOUT + 900),
    pytest.mark.xdist_group("kernel"),
]  # one worker uses the kernel home

BOOT_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def kernel_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KernelImage]:
    require("qemu-system-x86_64")
    home = kernel_home()
    work = tmp_path_factory.mktemp("kernel-image")
    kernel = make_kernel(home, work / "kernel")
    yield build_kernel_image(home, kernel, work / "out")


@pytest.fixture
def enrolled(kernel_image: KernelImage, tmp_path: Path) -> firmware.Firmware:
    return firmware.enrolled_firmware(tmp_path / "OVMF_VARS.fd", db_certs=(kernel_image.release / "db.crt",))


def _mangos_farm(image: KernelImage, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [str(REPO / ".venv/bin/mangos-farm"), *args]
    return subprocess.run(argv, cwd=REPO, env=farm_env(image.home), capture_output=True, text=True, check=False)


def test_kernel_image_boots_and_the_kernel_checked_the_root_signature(
    kernel_image: KernelImage,
    enrolled: firmware.Firmware,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    cmdline = uki.cmdline_of(kernel_image.uki)
    assert "dm_verity.require_signatures=1" in cmdline.split()
    assert "root-hash-signature=/run/mangos/root.p7s" in cmdline
    assert (
        hashlib.sha256(uki.section(kernel_image.uki, ".linux")).hexdigest()
        == hashlib.sha256((kernel_image.kernel / "vmlinuz").read_bytes()).hexdigest()
    )  # the farm's vmlinuz, not Debian's
    result = boot.boot(kernel_image.raw, enrolled, timeout=BOOT_TIMEOUT, workdir=tmp_path / "boot")
    record_property("boot_seconds", result.seconds)
    assert result.outcome == boot.Outcome.BOOTED, result.serial_tail
    assert result.evidence.startswith("MANGOS-BOOT-OK root=verity sb=on ")
    assert result.evidence.endswith(" verity-sig=kernel"), result.evidence
    serial = Path(result.serial_log).read_text(errors="replace")
    assert "mangos-verity-sig: the root hash signature from /dev/" in serial  # the partition's PKCS#7, handed over


def test_kernel_refuses_a_root_signed_by_another_key(
    kernel_image: KernelImage, enrolled: firmware.Firmware, tmp_path: Path
) -> None:
    foreign = foreign_signed_copy(kernel_image.raw, tmp_path / "foreign.raw", tmp_path / "other-keys")
    report = verify_image(foreign, cert=kernel_image.verity_cert)  # only the signature is not ours
    failed = sorted(c.name for c in report.checks if not c.ok)
    assert failed and set(failed) <= {"signature", "certificate"}, failed
    result = boot.boot(foreign, enrolled, timeout=BOOT_TIMEOUT, workdir=tmp_path / "boot")
    assert result.outcome == boot.Outcome.ROOT_SIGNATURE_REFUSED, result.serial_tail
    serial = Path(result.serial_log).read_text(errors="replace")
    assert "MANGOS-BOOT" not in serial and "Switching root" not in serial


def test_kernel_trace_follows_the_uki_linux_to_its_build_commit_and_certificate(kernel_image: KernelImage) -> None:
    done = _mangos_farm(
        kernel_image, "trace", str(kernel_image.raw), "uki:.linux", "--cert", str(kernel_image.verity_cert), "--json"
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    recipe = (REPO / "recipes/kernel/linux-image-mangos.toml").read_text()
    assert result["recipe"] == "linux-image-mangos" and f'commit = "{result["commit"]}"' in recipe
    assert result["linux_sha256"] == hashlib.sha256((kernel_image.kernel / "vmlinuz").read_bytes()).hexdigest()
    assert result["certificate_sha256"] == hashlib.sha256(kernel_image.verity_cert.read_bytes()).hexdigest()
    assert result["certificate_is_release_cert"] is True
    assert result["compiled_by"]["recipe"] == "linux-mangos" and len(result["compiled_by"]["build_key"]) == 64
    assert result["signature"] == "verified" and result["image_signature"] == "verified"


def test_kernel_with_bytes_unlike_its_provenance_is_refused(kernel_image: KernelImage, tmp_path: Path) -> None:
    tampered = tmp_path / "kernel"
    shutil.copytree(kernel_image.kernel, tampered)
    data = bytearray((tampered / "vmlinuz").read_bytes())
    data[4096] ^= 0xFF
    (tampered / "vmlinuz").write_bytes(bytes(data))
    done = _mangos_farm(kernel_image, "image", "build", "-o", str(tmp_path / "out"), "--kernel", str(tampered),
                        "--recipes", str(tmp_path / "none"))  # fmt: skip
    assert done.returncode != 0
    assert "vmlinuz" in done.stderr and not (tmp_path / "out").exists(), done.stderr


def test_kernel_trace_refuses_a_linux_section_unlike_the_signed_vmlinuz(
    kernel_image: KernelImage, tmp_path: Path
) -> None:
    settings = Settings.from_env({"MANGOS_FARM_HOME": str(kernel_image.home)})
    trusted = trusted_keys(settings.keys_dir, settings.trusted_keys_dir)
    root = tmp_path / "root"
    with pytest.raises(FarmError, match="no kernel provenance"):  # an image with Debian's kernel
        trace.trace_kernel(root, b"MZ", trusted, None)
    (root / IMAGE_DIR).mkdir(parents=True)
    shutil.copy(kernel_image.kernel / "vmlinuz.intoto.json", root / IMAGE_DIR / "vmlinuz.intoto.json")
    linux = (kernel_image.kernel / "vmlinuz").read_bytes()
    assert trace.trace_kernel(root, linux, trusted, None)["signature"] == "verified"
    with pytest.raises(FarmError, match=r"the UKI's \.linux has sha256"):
        trace.trace_kernel(root, linux[:-1] + bytes([linux[-1] ^ 1]), trusted, None)
