"""Issue #5, boot chain: the image built by the real pipeline boots in QEMU/OVMF under Secure Boot with our keys.

Four boots of the same image (each through a snapshot, or of a tampered copy), read from the serial console:
- with our db cert enrolled it reaches the self-test, which reports a dm-verity root and Secure Boot on;
- one flipped byte in the root (erofs) partition makes dm-verity report corruption and the kernel panic;
- the UKI re-signed with another (valid) key is refused by the firmware, and systemd-boot counts the failed try;
- with Secure Boot off (stock OVMF vars) the image refuses to run and powers off.
And two boots of one writable copy with a persistent software TPM: the first boot's systemd-repart creates swap,
/var and /var/tmp encrypted and sealed to the TPM, the second finds /var, unlocks it with the TPM and mounts it.
TCG only (this machine's KVM cannot run OVMF's SMM): each boot takes 10-80 s.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from farm.image import boot, firmware, gpt
from farm.run import run
from tests.conftest import require
from tests.e2e.image_fixtures import BuiltImage
from tests.image.bootkeys import make_db_key

pytestmark = pytest.mark.e2e

ESP_TYPE, ROOT_TYPE = gpt.ESP.upper(), gpt.ROOT_X86_64.upper()
EROFS_SUPERBLOCK = 1024  # read by every mount, so a flipped byte there is always found by dm-verity
BOOT_TIMEOUT = 300.0


def _partitions(raw: Path) -> list[dict[str, Any]]:
    table = json.loads(run(["sfdisk", "--json", str(raw)]).text)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return [{**p, "offset": int(p["start"]) * sector, "bytes": int(p["size"]) * sector} for p in table["partitions"]]


def _partition(raw: Path, type_guid: str, *, not_name: str = "_empty") -> dict[str, Any]:
    found = [p for p in _partitions(raw) if p["type"].upper() == type_guid and p.get("name") != not_name]
    assert len(found) == 1, found
    return found[0]


def _copy(raw: Path, dest: Path) -> Path:
    return gpt.sparse_copy(raw, dest)  # the image's free tail for first-boot repart is a hole: keep it one


def _boot(raw: Path, fw: firmware.Firmware, work: Path) -> boot.BootResult:
    return boot.boot(raw, fw, timeout=BOOT_TIMEOUT, workdir=work)


@pytest.fixture
def enrolled(built_image: BuiltImage, tmp_path: Path) -> firmware.Firmware:
    return firmware.enrolled_firmware(tmp_path / "OVMF_VARS.fd", db_certs=(built_image.db_cert,))


def test_boots_with_our_keys_to_the_self_test(
    built_image: BuiltImage,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """Through the CLI, as a user would: the farm's own release db cert is enrolled."""
    require("qemu-system-x86_64")
    raw = built_image.raw
    before = raw.stat().st_mtime_ns
    result = built_image.farm.json("image", "boot", str(raw), "--keep", str(tmp_path))
    record_property("boot_seconds", result["seconds"])
    assert result["outcome"] == "booted", result["serial_tail"]
    # no TPM: repart is skipped, no /var partition
    assert result["evidence"].startswith("MANGOS-BOOT-OK root=verity sb=on tpm=no var=root factory=no parts=none ")
    serial = Path(result["serial_log"]).read_text(errors="replace")
    assert "UEFI Secure Boot is enabled" in serial  # the kernel's EFI stub saw the firmware's Secure Boot state
    assert "Verity Protection Setup for root" in serial  # systemd-veritysetup opened the root from the UKI's hash
    assert raw.stat().st_mtime_ns == before  # snapshot=on: booting never writes the image


def test_flipped_byte_in_root_stops_the_boot(
    built_image: BuiltImage,
    enrolled: firmware.Firmware,
    tmp_path: Path,
) -> None:
    require("qemu-system-x86_64")
    raw = _copy(built_image.raw, tmp_path / "flipped.raw")
    root = _partition(raw, ROOT_TYPE)
    with raw.open("r+b") as fh:
        fh.seek(root["offset"] + EROFS_SUPERBLOCK + 8)
        byte = fh.read(1)[0]
        fh.seek(-1, 1)
        fh.write(bytes([byte ^ 0x01]))
    result = _boot(raw, enrolled, tmp_path / "boot")
    assert result.outcome == boot.Outcome.VERITY_CORRUPTION, result.serial_tail
    assert "corrupted" in result.evidence
    assert "MANGOS-BOOT-OK" not in Path(result.serial_log).read_text(errors="replace")


def test_uki_signed_with_another_key_is_refused_by_the_firmware(
    built_image: BuiltImage,
    enrolled: firmware.Firmware,
    tmp_path: Path,
) -> None:
    for tool in ("qemu-system-x86_64", "mcopy", "mdir", "sbattach", "sbsign", "sbverify"):
        require(tool)
    raw = _copy(built_image.raw, tmp_path / "other.raw")
    esp = f"{raw}@@{_partition(raw, ESP_TYPE)['offset']}"
    listing = run(["mdir", "-b", "-i", esp, "::/EFI/Linux"]).text.split()
    (entry,) = [line for line in listing if line.endswith(".efi")]
    name = entry.rsplit("/", 1)[-1]
    assert re.fullmatch(r"mangos_.+\+3\.efi", name)  # a fresh slot: three tries
    uki = tmp_path / "uki.efi"
    run(["mcopy", "-n", "-i", esp, f"::/EFI/Linux/{name}", str(uki)])
    run(["sbattach", "--remove", str(uki)])
    key, cert = make_db_key(tmp_path / "other", "not our db key")
    run(["sbsign", "--key", str(key), "--cert", str(cert), "--output", str(uki), str(uki)])
    assert run(["sbverify", "--cert", str(cert), str(uki)], check=False).returncode == 0  # validly signed, by them
    run(["mcopy", "-o", "-i", esp, str(uki), f"::/EFI/Linux/{name}"])
    result = _boot(raw, enrolled, tmp_path / "boot")
    assert result.outcome == boot.Outcome.FIRMWARE_REFUSED, result.serial_tail
    assert "Access Denied" in result.evidence
    # systemd-boot renamed the entry before trying it: boot counting is live (+3 -> +2-1)
    assert re.search(r"mangos_\S+\+2-1\.efi", result.evidence), result.evidence


def test_secure_boot_off_is_refused_by_the_image(built_image: BuiltImage, tmp_path: Path) -> None:
    """Stock OVMF vars (setup mode): the firmware runs anything, so the image itself must refuse."""
    require("qemu-system-x86_64")
    args = ("image", "boot", str(built_image.raw), "--no-secure-boot", "--keep", str(tmp_path))
    result = built_image.farm.json(*args)  # exit 0: the refusal is the expected outcome
    assert result["outcome"] == "refused-insecure", result["serial_tail"]
    assert "MANGOS-BOOT-OK" not in Path(result["serial_log"]).read_text(errors="replace")


FIRST_BOOT_LABELS = {"swap", "var", "var-tmp"}
LUKS_MAGIC = b"LUKS\xba\xbe"


def _state(evidence: str) -> dict[str, str]:
    """The self-test line's ``key=value`` fields."""
    return dict(field.split("=", 1) for field in evidence.split()[1:])


def test_first_boot_creates_tpm_sealed_partitions_and_the_second_boot_mounts_var(
    built_image: BuiltImage,
    enrolled: firmware.Firmware,
    tmp_path: Path,
    record_property: Any,
) -> None:
    """One machine (a writable copy of the disk, its OVMF vars, one swtpm state) booted twice."""
    for tool in ("qemu-system-x86_64", "swtpm", "cryptsetup"):
        require(tool)
    raw = gpt.sparse_copy(built_image.raw, tmp_path / "machine.raw")
    assert raw.read_bytes() == built_image.raw.read_bytes()
    before = {p["name"] for p in _partitions(raw)}
    assert not before & FIRST_BOOT_LABELS
    tpm_state = tmp_path / "tpm"

    with boot.software_tpm(tpm_state) as sock:
        first = boot.boot(raw, enrolled, timeout=BOOT_TIMEOUT, workdir=tmp_path / "boot1", tpm_socket=sock,
                          writable=True)  # fmt: skip
    record_property("first_boot_seconds", first.seconds)
    assert first.outcome == boot.Outcome.BOOTED, first.serial_tail
    one = _state(first.evidence)
    assert one["tpm"] == "yes" and set(one["parts"].split(",")) == FIRST_BOOT_LABELS, first.evidence
    assert one["var"] == "root"  # created after this boot's mounts were set up: found from the next boot on
    assert one["factory"] == "no"  # the root's /var is an empty, read-only mount point

    # On the disk itself: the three partitions, each a LUKS2 volume with a systemd-tpm2 token (sealed to the TPM).
    created = {p["name"]: p for p in _partitions(raw) if p.get("name") in FIRST_BOOT_LABELS}
    assert set(created) == FIRST_BOOT_LABELS, _partitions(raw)
    types = {label: part["type"].lower() for label, part in created.items()}
    assert types == {"swap": gpt.SWAP, "var": gpt.VAR, "var-tmp": gpt.TMP}
    for label, part in created.items():
        header = tmp_path / f"{label}.luks"
        with raw.open("rb") as fh:
            fh.seek(part["offset"])
            header.write_bytes(fh.read(16 * 1024 * 1024))
        assert header.read_bytes()[:6] == LUKS_MAGIC, label
        dump = run(["cryptsetup", "luksDump", str(header)]).text
        assert re.search(r"^Version:\s+2$", dump, re.M) and "systemd-tpm2" in dump, dump

    with boot.software_tpm(tpm_state) as sock:
        second = boot.boot(raw, enrolled, timeout=BOOT_TIMEOUT, workdir=tmp_path / "boot2", tpm_socket=sock,
                           writable=True)  # fmt: skip
    record_property("second_boot_seconds", second.seconds)
    assert second.outcome == boot.Outcome.BOOTED, second.serial_tail
    two = _state(second.evidence)
    assert two["var"] == "luks", second.serial_tail  # gpt-auto found /var, the TPM unlocked it, it is mounted
    assert two["factory"] == "yes"  # systemd-tmpfiles copied /usr/share/factory/var's entries onto the new /var
    assert two["machine-id"] == one["machine-id"]
    assert {p["name"] for p in _partitions(raw)} == before | FIRST_BOOT_LABELS  # nothing more was created
