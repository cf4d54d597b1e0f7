"""The UKI: sections into the real stub, a pinned PE header, reproducible Secure Boot signatures (real tools)."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.image import payload, uki
from farm.run import run
from tests.conftest import require
from tests.image.bootkeys import make_db_key

SDE = 1_700_000_000
KVER = "6.1.0-test-amd64"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_db_key(tmp_path_factory.mktemp("db"), "MANGOS test db")


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "boot").mkdir(parents=True)
    (root / "lib/modules" / KVER).mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    # the kernel is only carried, never parsed, by objcopy: any bytes stand in for it here
    (root / "boot" / f"vmlinuz-{KVER}").write_bytes(b"MZ-not-a-kernel" * 4096)
    (root / "usr/lib/os-release").write_text('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="MANGOS test"\n')
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    return root


def _unsigned(root: Path, work: Path, cmdline: str) -> Path:
    work.mkdir()
    initrd = work / "initrd.img"
    initrd.write_bytes(b"070701" + bytes(4000))
    return uki.assemble_uki(root=root, kver=KVER, initrd=initrd, cmdline=cmdline, workdir=work, sde=SDE)


@pytest.mark.integration
def test_uki_sections_cmdline_and_pinned_header(root: Path, tmp_path: Path) -> None:
    require("objcopy")
    cmdline = payload.cmdline("cd" * 32)
    first = _unsigned(root, tmp_path / "a", cmdline)
    assert {".osrel", ".cmdline", ".linux", ".initrd"} <= set(uki.uki_sections(first))
    assert uki.cmdline_of(first) == cmdline
    data = first.read_bytes()
    ts_off, sum_off = uki.pe_offsets(data)
    assert struct.unpack_from("<I", data, ts_off)[0] == SDE
    assert struct.unpack_from("<I", data, sum_off)[0] == uki.pe_checksum(data, sum_off)
    time.sleep(1.1)  # objcopy stamps the wall clock (seconds) into the header; a second run must not differ
    second = _unsigned(root, tmp_path / "b", cmdline)
    assert second.read_bytes() == data


@pytest.mark.integration
def test_signing_is_reproducible_and_verifiable(root: Path, tmp_path: Path, keys: tuple[Path, Path]) -> None:
    for tool in ("objcopy", "sbsign", "sbverify", "faketime"):
        require(tool)
    key, cert = keys
    unsigned = _unsigned(root, tmp_path / "w", payload.cmdline("cd" * 32))
    one = uki.sign_efi(unsigned, key=key, cert=cert, sde=SDE, out=tmp_path / "one.efi")
    time.sleep(1.1)
    two = uki.sign_efi(unsigned, key=key, cert=cert, sde=SDE, out=tmp_path / "two.efi")
    assert one.read_bytes() == two.read_bytes()
    assert run(["sbverify", "--cert", str(cert), str(one)], check=False).returncode == 0
    _, other = make_db_key(tmp_path / "other", "someone else")
    assert run(["sbverify", "--cert", str(other), str(one)], check=False).returncode != 0


@pytest.mark.unit
def test_objcopy_argv_places_sections_after_the_stub() -> None:
    argv = uki.objcopy_argv(
        stub=Path("stub"), osrel=Path("o"), cmdline=Path("c"), linux=Path("l"), initrd=Path("i"), out=Path("out")
    )
    assert argv[0] == "objcopy" and argv[-2:] == ["stub", "out"]
    assert "--add-section=.linux=l" in argv and "--change-section-vma=.initrd=0x3000000" in argv
    vmas = [vma for _, vma in uki.SECTION_VMA]
    assert vmas == sorted(vmas)


@pytest.mark.unit
def test_sbsign_runs_under_faketime_at_the_epoch() -> None:
    argv = uki.sbsign_argv(key=Path("k"), cert=Path("c"), sde=SDE, src=Path("in"), out=Path("out"))
    assert argv[:6] == ["env", "TZ=UTC", "faketime", "-f", "2023-11-14 22:13:20", "sbsign"]  # frozen, not started


@pytest.mark.unit
def test_dracut_script_overlays_the_root_and_runs_reproducibly() -> None:
    script = uki.dracut_script(root=Path("/r"), layer=Path("/l"), out_dir=Path("/o"), kver=KVER, sde=SDE)
    assert "mount -t overlay overlay -o lowerdir=/r,upperdir=/l/upper,workdir=/l/work /l/merged" in script
    assert f"SOURCE_DATE_EPOCH={SDE}" in script and "--reproducible" in script and "--no-hostonly" in script


@pytest.mark.unit
def test_kernel_version_requires_exactly_one_kernel(root: Path) -> None:
    assert uki.kernel_version(root) == KVER
    (root / "lib/modules/6.2.0-x").mkdir()
    (root / "boot/vmlinuz-6.2.0-x").write_bytes(b"")
    with pytest.raises(FarmError) as err:
        uki.kernel_version(root)
    assert err.value.code == "E-IMAGE-BUILD"


@pytest.mark.unit
def test_pe_offsets_refuse_non_pe() -> None:
    with pytest.raises(FarmError):
        uki.pe_offsets(b"\x7fELF" + bytes(100))
