"""The farm kernel's part of the image, as pure functions: the command line that makes the kernel enforce the root's
signature, Debian's kernel left out, the boot outcome of a refused root, the image version that names the kernel."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.image import boot, kernel, payload

pytestmark = pytest.mark.unit

ROOT_HASH = "ab" * 32


def test_kernel_cmdline_hands_the_signature_to_dm_verity_and_requires_it() -> None:
    words = payload.cmdline(ROOT_HASH, kernel_checks_signature=True).split()
    assert f"roothash={ROOT_HASH}" in words
    assert "systemd.verity_root_options=panic-on-corruption,root-hash-signature=/run/mangos/root.p7s" in words
    assert "dm_verity.require_signatures=1" in words
    assert payload.SIGNATURE_FILE == "/run/mangos/root.p7s"
    verity_sig = (payload.PAYLOAD / "usr/lib/mangos/verity-sig").read_text()
    assert f"out={payload.SIGNATURE_FILE}" in verity_sig  # the file the initrd writes is the one named


def test_debian_kernel_cmdline_is_unchanged() -> None:
    words = payload.cmdline(ROOT_HASH).split()
    assert "systemd.verity_root_options=panic-on-corruption" in words
    assert not any("require_signatures" in w or "root-hash-signature" in w for w in words)


def test_farm_kernel_leaves_debians_kernel_out() -> None:
    assert "linux-image-amd64" in payload.packages()
    ours = payload.packages(farm_kernel=True)
    assert "linux-image-amd64" not in ours and "dracut" in ours and "systemd" in ours


def test_initrd_gets_the_signature_step_before_the_root_is_opened() -> None:
    conf = (payload.PAYLOAD / "etc/dracut.conf.d/50-mangos.conf").read_text()
    for item in ("/usr/lib/mangos/verity-sig", "/usr/lib/systemd/system/mangos-verity-sig.service", "/usr/bin/base64"):
        assert item in conf
    dropin = payload.PAYLOAD / "usr/lib/systemd/system/systemd-veritysetup@root.service.d/50-mangos-sig.conf"
    text = dropin.read_text()
    assert "After=mangos-verity-sig.service" in text and "FailureAction=reboot-force" in text


def test_a_refused_root_signature_is_its_own_boot_outcome() -> None:
    serial = (
        "Starting systemd-veritysetup@root.service...\r\n"
        "device-mapper: table: 253:0: verity: Root hash verification failed (-126)\r\n"
        "device-mapper: ioctl: error adding target to table\r\n"
    )
    decided = boot.classify(serial)
    assert decided == (boot.Outcome.ROOT_SIGNATURE_REFUSED, serial.splitlines()[1].rstrip("\r"))


def test_image_version_names_the_kernel() -> None:
    k = kernel.Kernel(Path("vmlinuz"), "6.1.187-mangos", "1" * 64, "c" * 40, "d" * 64, Path("kbuild.tar"))
    other = kernel.Kernel(Path("vmlinuz"), "6.1.187-mangos", "2" * 64, "c" * 40, "e" * 64, Path("kbuild.tar"))
    assert kernel.inputs_digest("f" * 64, None) == "f" * 64  # images with Debian's kernel keep their versions
    assert len({kernel.inputs_digest("f" * 64, k), kernel.inputs_digest("f" * 64, other), "f" * 64}) == 3
