"""QEMU's command line and reading a boot's outcome from the serial console (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.image import boot
from farm.image.firmware import Firmware

FW = Firmware(code=Path("/ovmf/CODE.secboot.fd"), vars=Path("/w/VARS.fd"), secure_boot=True)


@pytest.mark.unit
def test_qemu_argv_is_secure_boot_tcg_and_never_writes_the_image() -> None:
    argv = boot.qemu_argv(image=Path("/i/m.raw"), firmware=FW, serial_log=Path("/w/s.log"), monitor=Path("/w/m"))
    joined = " ".join(argv)
    assert argv[0] == "qemu-system-x86_64"
    assert "-accel tcg,thread=multi" in joined and "-machine q35,smm=on" in joined
    assert "driver=cfi.pflash01,property=secure,value=on" in argv
    assert "if=pflash,format=raw,unit=0,readonly=on,file=/ovmf/CODE.secboot.fd" in argv
    assert "if=pflash,format=raw,unit=1,file=/w/VARS.fd" in argv
    assert "if=none,id=disk0,format=raw,snapshot=on,file=/i/m.raw" in argv
    assert "file:/w/s.log" in argv and "-no-reboot" in argv and "-nographic" in argv
    assert "tpm-tis" not in joined
    with_tpm = boot.qemu_argv(
        image=Path("m.raw"), firmware=FW, serial_log=Path("s"), monitor=Path("m"), tpm_socket=Path("/t/sock")
    )
    assert "socket,id=chrtpm,path=/t/sock" in with_tpm
    writable = boot.qemu_argv(
        image=Path("/i/c.raw"), firmware=FW, serial_log=Path("s"), monitor=Path("m"), writable=True
    )  # a copy whose first-boot partitions must persist to the next boot
    assert "if=none,id=disk0,format=raw,file=/i/c.raw" in writable
    assert not any("snapshot" in arg for arg in writable)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("serial", "outcome"),
    [
        ("...\r\nMANGOS-BOOT-OK root=verity sb=on\r\n", boot.Outcome.BOOTED),
        ("MANGOS-BOOT-FAIL root=plain sb=on\r\n", boot.Outcome.SELFTEST_FAILED),
        (
            'BdsDxe: failed to load Boot0001 "UEFI Misc Device" from PciRoot(0x0)/Pci(0x3,0x0): Access Denied\r\n',
            boot.Outcome.FIRMWARE_REFUSED,
        ),
        (
            "[ 12.14] device-mapper: verity: 253:2: data block 0 is corrupted\n"
            "[ 12.15] Kernel panic - not syncing: dm-verity device corrupted\n",
            boot.Outcome.VERITY_CORRUPTION,
        ),
        ("[ 3.0] Kernel panic - not syncing: VFS: Unable to mount root fs\n", boot.Outcome.PANIC),
        ("MANGOS-REFUSE: Secure Boot is off, refusing to start; powering off\r\n", boot.Outcome.REFUSED_INSECURE),
        (
            "\x1b[1m\x1b[31m\x1b[40mError loading \\EFI\\Linux\\mangos_1.0+2-1.efi: Access Denied\r\n\x1b[0m",
            boot.Outcome.FIRMWARE_REFUSED,
        ),
    ],
)
def test_classify(serial: str, outcome: boot.Outcome) -> None:
    decided = boot.classify(serial)
    assert decided is not None and decided[0] == outcome
    assert decided[1] in boot.ANSI.sub("", serial)
    assert "\x1b" not in decided[1]


@pytest.mark.unit
def test_classify_keeps_the_whole_self_test_line() -> None:
    line = "MANGOS-BOOT-OK root=verity sb=on tpm=yes var=luks parts=swap,var,var-tmp machine-id=" + "ab" * 16
    decided = boot.classify(f"[  OK  ] Reached target multi-user.target.\r\n{line}\r\n[  OK  ] Finished")
    assert decided == (boot.Outcome.BOOTED, line)


@pytest.mark.unit
def test_classify_waits_while_undecided() -> None:
    assert boot.classify("BdsDxe: loading Boot0001\r\nEFI stub: UEFI Secure Boot is enabled.\r\n") is None


@pytest.mark.unit
def test_swtpm_argv_is_a_tpm2_socket_in_the_state_dir() -> None:
    argv = boot.swtpm_argv(Path("/w/tpm"))
    assert argv[:3] == ["swtpm", "socket", "--tpm2"] and "--daemon" in argv
    assert "type=unixio,path=/w/tpm/swtpm.sock" in argv and "file=/w/tpm/swtpm.pid" in argv
