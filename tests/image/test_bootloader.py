"""The ESP tree: signed systemd-boot, loader.conf, and the UKI under a boot-counting name."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.image import bootloader
from farm.run import run
from tests.conftest import require
from tests.image.bootkeys import make_db_key

SDE = 1_700_000_000


@pytest.mark.unit
def test_uki_name_counts_boots_and_refuses_plus() -> None:
    assert bootloader.uki_name("2026.1") == "mangos_2026.1+3.efi"
    with pytest.raises(FarmError):
        bootloader.uki_name("1+2")
    with pytest.raises(FarmError):
        bootloader.uki_name("a/b")


@pytest.mark.integration
def test_populate_esp_signs_systemd_boot_reproducibly(tmp_path: Path) -> None:
    for tool in ("sbsign", "sbverify", "faketime"):
        require(tool)
    key, cert = make_db_key(tmp_path / "keys", "MANGOS test db")
    uki = tmp_path / "uki.efi"
    uki.write_bytes(b"a signed UKI stands here")
    trees = []
    for name in ("one", "two"):
        esp = tmp_path / name
        bootloader.populate_esp(esp, uki=uki, version="1.0", db_key=key, db_cert=cert, sde=SDE)
        trees.append({str(p.relative_to(esp)): p.read_bytes() for p in sorted(esp.rglob("*")) if p.is_file()})
    assert trees[0] == trees[1]
    files = trees[0]
    assert set(files) == {
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/systemd/systemd-bootx64.efi",
        "EFI/Linux/mangos_1.0+3.efi",
        "loader/loader.conf",
    }
    assert files["EFI/BOOT/BOOTX64.EFI"] == files["EFI/systemd/systemd-bootx64.efi"]
    assert files["EFI/Linux/mangos_1.0+3.efi"] == uki.read_bytes()
    assert b"editor no" in files["loader/loader.conf"]
    boot = tmp_path / "one/EFI/BOOT/BOOTX64.EFI"
    assert run(["sbverify", "--cert", str(cert), str(boot)], check=False).returncode == 0
    assert boot.stat().st_mtime == SDE
