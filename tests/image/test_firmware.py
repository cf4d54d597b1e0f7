"""OVMF variable stores: our db cert enrolled with Secure Boot on (real virt-fw-vars), or stock setup mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.image import firmware
from tests.image.bootkeys import make_db_key, require_ovmf


@pytest.mark.unit
def test_enroll_argv_sets_pk_kek_db_and_secure_boot() -> None:
    argv = firmware.enroll_argv(
        "virt-fw-vars", template=Path("T.fd"), out=Path("O.fd"), db_certs=(Path("a.crt"), Path("b.crt"))
    )
    assert argv[:5] == ["virt-fw-vars", "--input", "T.fd", "--output", "O.fd"]
    assert "--no-microsoft" in argv and argv[-1] == "--secure-boot"
    joined = " ".join(argv)
    assert f"--set-pk {firmware.OWNER_GUID} a.crt" in joined
    assert f"--add-db {firmware.OWNER_GUID} a.crt" in joined and f"--add-db {firmware.OWNER_GUID} b.crt" in joined


@pytest.mark.integration
def test_enrolled_store_holds_our_cert_and_secure_boot_on(tmp_path: Path) -> None:
    require_ovmf()
    _, cert = make_db_key(tmp_path / "keys", "MANGOS enrolled test db")
    fw = firmware.enrolled_firmware(tmp_path / "vars.fd", db_certs=(cert,))
    assert fw.secure_boot and fw.code == firmware.OVMF_CODE
    assert fw.vars.stat().st_size == firmware.OVMF_VARS.stat().st_size
    printed = firmware.enrolled_certs(fw.vars)
    assert printed.count("subject CN=MANGOS enrolled test db") == 3  # PK, KEK and db
    assert "name=SecureBootEnable" in printed
    stock = firmware.enrolled_certs(firmware.setup_mode_firmware(tmp_path / "stock.fd").vars)
    assert "MANGOS enrolled test db" not in stock
