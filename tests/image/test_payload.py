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
    # every repart.d partition is Encrypt=tpm2: without a TPM repart is skipped rather than failing every boot
    repart = (units / "systemd-repart.service.d/50-mangos-tpm2.conf").read_text()
    assert "ConditionSecurity=tpm2" in repart
    # sealed to PCR 7 only (what an update keeps: the db key signing every UKI), the unit's ExecStart= replaced
    starts = [line for line in repart.splitlines() if line.startswith("ExecStart=")]
    assert starts == ["ExecStart=", "ExecStart=systemd-repart --dry-run=no --tpm2-pcrs=7"]
    # /var's boot history is recorded first, and can never fail the self-test (a failing release's boots count too)
    pre = [line for line in selftest.splitlines() if line.startswith("ExecStartPre=")]
    assert pre == ["ExecStartPre=-/usr/lib/mangos/selftest record"]


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


def _size(value: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


@pytest.mark.unit
def test_first_boot_space_holds_the_repart_minimums() -> None:
    """The image's free tail must fit what repart.d asks for, plus a LUKS2 header and alignment per partition."""
    defs = sorted((payload.PAYLOAD / "usr/lib/repart.d").glob("*.conf"))
    minimums = [
        _size(line.split("=", 1)[1]) for p in defs for line in p.read_text().splitlines() if line.startswith("SizeMin")
    ]
    assert len(minimums) == len(defs) == 3
    assert sum(minimums) + len(defs) * (16 + 1) * 1024**2 <= payload.FIRST_BOOT_SPACE


@pytest.mark.unit
def test_var_moves_to_the_factory_and_tmpfiles_recreates_it(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    var = root / "var"
    (var / "lib/dpkg/info").mkdir(parents=True)
    (var / "lib/dpkg/status").write_text("Package: demo\n")
    (var / "log").mkdir()
    (var / "log/dpkg.log").write_text("")
    (var / "mail").mkdir(mode=0o2775)
    (var / "mail").chmod(0o2775)
    (var / "tmp").mkdir()
    (var / "run").symlink_to("/run")
    payload.customize(root, machine_id=MID, sde=SDE)
    assert var.is_dir() and not any(var.iterdir())  # an empty mount point for the /var partition
    assert var.stat().st_mtime == SDE
    factory = root / payload.FACTORY_VAR
    assert (factory / "lib/dpkg/status").read_text() == "Package: demo\n"
    lines = (root / payload.FACTORY_TMPFILES).read_text().splitlines()
    entries = [line for line in lines if not line.startswith("#")]
    assert entries == [
        "d /var/lib 0755 - - -",
        "C /var/lib/dpkg - - - - /usr/share/factory/var/lib/dpkg",
        "d /var/log 0755 - - -",
        "C /var/log/dpkg.log - - - - /usr/share/factory/var/log/dpkg.log",
        "d /var/mail 2775 - - -",
        "L /var/run - - - - /run",
    ]  # /var/tmp is a partition of its own
    with pytest.raises(FarmError):  # the move is not repeatable on the same tree
        (var / "lib").mkdir()
        payload.move_var_to_factory(root)
