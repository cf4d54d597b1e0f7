"""Configuration extensions the farm's kernel checks: ours is merged, a foreign-signed and an unsigned one are refused.

The image (farm kernel with the organization's certificate built in, ``dm_verity.require_signatures=1``) is built
with systemd 254 from bookworm-backports (``Request.systemd = "backports"``, :mod:`farm.image.extensions`):
``systemd-confext`` merges with ``--image-policy=root=signed+absent:...`` and no ``/etc/verity.d`` is shipped, so a
confext's verity root hash signature is checked by the kernel's keyring only. Each boot carries one confext on the
ESP (``/efi/mangos/confexts``, staged into ``/run/confexts``; one refused image fails the whole merge, so one per
boot) and the image's ``mangos-extensions-report`` prints what was staged and merged:
- ours (signed with the release verity key, whose certificate is in the kernel): merged, its file is in ``/etc``;
- foreign (a valid PKCS#7 by another key): the kernel refuses the root hash signature, nothing is merged;
- unsigned (no signature partition): the image policy refuses it, nothing is merged.
Each boot still verifies the root (the self-test's ``verity-sig=kernel``). The host view of the same three images
(``veritysetup verify``, ``openssl cms -verify``, ``systemd-dissect``) needs no kernel and runs first.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.image import assemble, boot, confext, extensions, firmware, gpt, signature
from farm.image.payload import SELFTEST_OK
from farm.settings import Settings
from farm.trust.release_keys import ReleaseKeys, generate, load_cert, load_key
from tests.lib.kernel import KERNEL_BUILD_TIMEOUT, SOURCE_DATE_EPOCH, kernel_home, make_kernel
from tests.lib.tools import require, stop_group

# dm-verity's own line when the kernel refuses a root hash signature, with the errno (-126: ENOKEY, no trusted key)
KERNEL_REFUSED = r"device-mapper: [^\r\n]*verity: Root hash verification failed(?: \((-?\d+)\))?"
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.timeout(KERNEL_BUILD_TIMEOUT + 900),
    pytest.mark.xdist_group("kernel"),
]  # one worker uses the kernel home

BOOT_TIMEOUT = 300.0
SDE = int(SOURCE_DATE_EPOCH)
NAMES = ("ours", "foreign", "unsigned")
REPORT = re.compile(re.escape(extensions.REPORT_MARKER) + r" [^\r\n]*")
DONE = re.compile(re.escape(SELFTEST_OK) + r"[^\r\n]*|MANGOS-BOOT-FAIL[^\r\n]*|Kernel panic - not syncing[^\r\n]*")


@dataclass(frozen=True)
class Confexts:
    raws: dict[str, Path]
    ours_cert: Path


def make_confexts(out: Path, ours: ReleaseKeys, foreign_dir: Path) -> Confexts:
    """ours (the release verity key), foreign (a fresh key pair), unsigned; each ships /etc/mangos/confext-NAME."""
    other = generate(foreign_dir)
    signers: dict[str, confext.Signer | None] = {
        "ours": (load_key(ours.verity_key), load_cert(ours.verity_cert)),
        "foreign": (load_key(other.verity_key), load_cert(other.verity_cert)),
        "unsigned": None,
    }
    raws = {}
    for name, signer in signers.items():
        tree = out / "trees" / name
        (tree / "etc/mangos").mkdir(parents=True)
        (tree / "etc/mangos" / f"confext-{name}").write_text(f"{name}\n")
        raws[name] = confext.build(name, tree, out / "raw", signer=signer, sde=SDE).raw
    return Confexts(raws, ours.verity_cert)


def test_kernel_confext_images_as_a_host_sees_them(tmp_path: Path) -> None:
    for tool in ("mkfs.erofs", "veritysetup", "sfdisk", "openssl", "systemd-dissect"):
        require(tool)
    keys = generate(tmp_path / "ours")
    made = make_confexts(tmp_path, keys, tmp_path / "foreign")
    cert = load_cert(keys.verity_cert)
    seen = {n: confext.check(raw, cert, tmp_path / "check" / n) for n, raw in made.raws.items()}
    assert all(c.tree_ok for c in seen.values()), seen  # veritysetup verify: every tree matches its data
    assert {n: c.signature for n, c in seen.items()} == {"ours": "verified", "foreign": "other-key", "unsigned": "none"}
    for name in ("ours", "foreign"):  # openssl, independently: only ours verifies with our certificate
        raw = made.raws[name]
        entry = next(e for e in gpt.read_table(raw) if e.type == gpt.ROOT_X86_64_VERITY_SIG)
        doc = signature.parse_partition(gpt.read_partition(raw, entry, limit=signature.PARTITION_SIZE))
        (tmp_path / f"{name}.p7s").write_bytes(base64.b64decode(doc["signature"]))
        (tmp_path / f"{name}.roothash").write_text(doc["rootHash"])
        done = subprocess.run(
            ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / f"{name}.p7s"),
             "-content", str(tmp_path / f"{name}.roothash"), "-CAfile", str(keys.verity_cert), "-purpose", "any",
             "-out", os.devnull],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert (done.returncode == 0) == (name == "ours"), (name, done.stderr)
    # systemd's own reader: the signed ones have a signature partition ("signed"), the unsigned one plain verity
    for name, want in (("ours", "signed"), ("foreign", "signed"), ("unsigned", "yes")):
        done = subprocess.run(
            ["systemd-dissect", "--json=short", str(made.raws[name])], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        assert '"designator":"root","partition_uuid"' in done.stdout and f'"verity":"{want}"' in done.stdout, (
            name,
            done.stdout,
        )
    with pytest.raises(FarmError, match="not valid"):
        confext.build("bad.name", tmp_path / "trees/ours", tmp_path / "bad", signer=None, sde=SDE)


def test_kernel_extension_policy_goes_into_a_backports_tree(tmp_path: Path) -> None:
    wishes = extensions.packages(("dracut", "systemd", "udev"), "backports")
    assert "dracut" in wishes and "systemd" not in wishes and "systemd/bookworm-backports" in wishes
    assert {extensions.plain_name(w) for w in wishes} >= {"systemd", "udev", "libsystemd-shared", "systemd-dev"}
    assert extensions.packages(("systemd",), "") == ("systemd",)
    with pytest.raises(FarmError, match="unknown systemd choice"):
        extensions.packages((), "sid")
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    extensions.customize(root, sde=SDE)
    dropin = (root / "usr/lib/systemd/system/systemd-confext.service.d/50-mangos-image-policy.conf").read_text()
    assert f"ExecStart=systemd-confext refresh --image-policy={extensions.IMAGE_POLICY}" in dropin
    assert (root / "efi").is_dir() and not any((root / "efi").iterdir())
    wants = root / "etc/systemd/system/sysinit.target.wants"
    assert (wants / "systemd-confext.service").readlink() == Path("/usr/lib/systemd/system/systemd-confext.service")
    assert os.access(root / "usr/lib/mangos/extensions-report", os.X_OK)
    assert {p.stat().st_mtime for p in (root / "usr/lib/mangos").iterdir()} == {SDE}
    (root / "etc/verity.d").mkdir()
    (root / "etc/verity.d/other.crt").write_text("x")
    with pytest.raises(FarmError, match=r"verity\.d"):  # a userspace certificate would accept other signers
        extensions.customize(root, sde=SDE)


# -- in QEMU, with the farm's kernel ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfextImage:
    raw: Path
    release: Path
    confexts: Confexts


@pytest.fixture(scope="module")
def confext_image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConfextImage]:
    require("qemu-system-x86_64")
    for tool in ("mmdebstrap", "mkfs.erofs", "veritysetup", "sfdisk", "mkfs.vfat", "mcopy", "sbsign", "objcopy"):
        require(tool)
    home = kernel_home()
    work = tmp_path_factory.mktemp("confext-image")
    kernel = make_kernel(home, work / "kernel")
    settings = Settings.from_env({"MANGOS_FARM_HOME": str(home)})
    out = work / "out"
    request = assemble.Request(
        out=out, release_keys=home / "release", recipes=out / "no-recipes", sde=SDE, kernel=str(kernel),
        systemd="backports",
    )  # fmt: skip
    built = assemble.build(request, settings)
    made = make_confexts(work / "confexts", ReleaseKeys(home / "release"), work / "foreign")
    yield ConfextImage(built.raw, home / "release", made)


def boot_until_selftest(image: Path, fw: firmware.Firmware, work: Path) -> str:
    """Boot ``image`` (snapshot) until the self-test's line (or a panic, or the timeout); the serial text."""
    work.mkdir(parents=True, exist_ok=True)
    serial, monitor = work / "serial.log", work / "monitor.sock"
    argv = boot.qemu_argv(image=image, firmware=fw, serial_log=serial, monitor=monitor)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            text = serial.read_bytes().decode("utf-8", "replace") if serial.exists() else ""
            if DONE.search(boot.ANSI.sub("", text)):
                time.sleep(1)
                break
            time.sleep(0.5)
    finally:
        stop_group(proc)
    return boot.ANSI.sub("", serial.read_bytes().decode("utf-8", "replace") if serial.exists() else "")


def report_fields(serial: str) -> dict[str, str]:
    found = REPORT.findall(serial)
    assert found, serial[-4000:]
    return dict(f.split("=", 1) for f in found[-1].split()[1:])


@pytest.mark.parametrize("name", NAMES)
def test_kernel_merges_only_our_signed_confext(confext_image: ConfextImage, name: str, tmp_path: Path) -> None:
    disk = gpt.sparse_copy(confext_image.raw, tmp_path / "disk.raw")
    confext.add_to_esp(disk, confext_image.confexts.raws[name])
    fw = firmware.enrolled_firmware(tmp_path / "OVMF_VARS.fd", db_certs=(confext_image.release / "db.crt",))
    serial = boot_until_selftest(disk, fw, tmp_path / "boot")
    (tmp_path / "serial.txt").write_text(serial)
    ok = re.search(re.escape(SELFTEST_OK) + r"[^\r\n]*", serial)
    assert ok and ok.group(0).endswith(" verity-sig=kernel"), serial[-4000:]  # the root itself: kernel-checked
    fields = report_fields(serial)
    assert fields["confext-staged"] == name, fields
    refused_by_kernel = re.search(KERNEL_REFUSED, serial)
    # systemd-confext 254 logs a refused image and goes on (its unit still succeeds): what counts is the merge
    assert fields["confext-unit"] == "active/success", fields
    if name == "ours":  # merged, through a dm-verity device the kernel checked the signature of (besides the root)
        assert fields["confext-merged"] == "ours" and fields["verity-signed"] == "2", fields
        # (not systemd-confext's own "Using extensions 'ours'." line: it reaches the console only through journald,
        # which a starved guest may still be starting then; /etc/extension-release.d is what the report reads)
        assert not refused_by_kernel, serial[-4000:]
    else:
        assert fields["confext-merged"] == "none" and fields["verity-signed"] == "1", fields
    if name == "foreign":  # the kernel itself refused the signature (the image's own root was accepted): -126 is
        # ENOKEY, no trusted key signed it (read from the kernel's own line, not from systemd-confext's "Required key
        # not available", which reaches the console only through journald: a starved guest may not have it yet)
        assert refused_by_kernel and refused_by_kernel.group(1) == "-126", serial[-4000:]
    if name == "unsigned":  # refused by the image policy before the kernel is asked
        assert "/run/confexts/unsigned.raw: Image does not match image policy." in serial, serial[-4000:]
        assert not refused_by_kernel, serial[-4000:]
