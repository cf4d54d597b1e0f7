"""The root-tree payload: machine-id, units enabled, repart definitions, the signed command line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.image import payload

SDE = 1_700_000_000
MID = "0123456789abcdef0123456789abcdef"


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "usr/lib/systemd/system").mkdir(parents=True)
    (root / "etc").mkdir()
    # Debian ships machine-id as an empty file and os-release as a symlink: customize must not write through links.
    (root / "etc/machine-id").write_text("")
    return root


@pytest.mark.unit
def test_customize_bakes_machine_id_and_enables_units(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    payload.customize(root, machine_id=MID, sde=SDE)
    assert (root / "etc/machine-id").read_text() == MID + "\n"
    for unit, target in payload.ENABLED_UNITS:
        link = root / "etc/systemd/system" / f"{target}.wants" / unit
        assert os.readlink(link) == f"/usr/lib/systemd/system/{unit}"
        assert (root / "usr/lib/systemd/system" / unit).is_file()
    selftest = root / "usr/lib/mangos/selftest"
    assert os.access(selftest, os.X_OK)
    assert selftest.stat().st_mtime == SDE
    assert (root / "etc/machine-id").stat().st_mtime == SDE


@pytest.mark.unit
def test_repart_definitions_are_encrypted_with_tpm2(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    payload.customize(root, machine_id=MID, sde=SDE)
    defs = {p.name: p.read_text() for p in (root / "usr/lib/repart.d").iterdir()}
    types = {line.split("=", 1)[1] for text in defs.values() for line in text.splitlines() if line.startswith("Type=")}
    assert types == {"swap", "var", "tmp"}
    assert all("Encrypt=tpm2" in text for text in defs.values())


@pytest.mark.unit
def test_selftest_unit_gates_boot_complete_and_secure_boot_unit_powers_off() -> None:
    units = payload.PAYLOAD / "usr/lib/systemd/system"
    selftest = (units / "mangos-selftest.service").read_text()
    assert "RequiredBy=boot-complete.target" in selftest
    refuse = (units / "mangos-require-secureboot.service").read_text()
    assert "ConditionSecurity=!uefi-secureboot" in refuse
    assert "SuccessAction=poweroff-force" in refuse
    assert payload.REFUSE_MARKER in refuse


@pytest.mark.unit
def test_customize_rejects_a_bad_machine_id(tmp_path: Path) -> None:
    with pytest.raises(FarmError) as err:
        payload.customize(_tree(tmp_path), machine_id="not-hex", sde=SDE)
    assert err.value.code == "E-IMAGE-INPUT"


@pytest.mark.unit
def test_cmdline_carries_root_hash_and_panics_on_corruption() -> None:
    roothash = "ab" * 32
    line = payload.cmdline(roothash).split()
    assert f"roothash={roothash}" in line
    assert "systemd.verity_root_options=panic-on-corruption" in line
    assert "console=ttyS0,115200" in line
    with pytest.raises(FarmError):
        payload.cmdline("AB" * 32)
    with pytest.raises(FarmError):
        payload.cmdline("ab" * 31)
