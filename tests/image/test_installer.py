"""The installer's pure parts (credentials, disks and the rules on the target, the argv it runs, the files it adds to
the image) and its in-image program run from the copy the image carries, in an isolated interpreter, against a small
published release (:mod:`tests.lib.release`): it verifies the channel's signature before writing anything."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.image import channel, channelfiles, installer, installer_guest, payload, stream
from farm.image.installer_guest import Disk, boot_disk, choose, credential, list_disks, refusal
from farm.image.sums import sign_detached
from farm.trust.release_keys import generate
from tests.lib.installer_copy import fake_host, guest_copy, publish_small, run_guest

ROOTHASH = "0123456789abcdef" * 4
UUID = "01234567-89ab-cdef-0123-456789abcdef"  # its first 128 bits, as a PARTUUID


def test_credential_is_the_first_line_of_the_first_non_empty_one(tmp_path: Path) -> None:
    names = ("mangos.install", "install")
    (tmp_path / "mangos.install").write_text("")  # an empty credential counts as none
    (tmp_path / "install").write_text("  /dev/vdb \nignored\n")
    assert credential(str(tmp_path), names) == "/dev/vdb"
    (tmp_path / "mangos.install").write_text("/dev/sda\n")
    assert credential(str(tmp_path), names) == "/dev/sda"  # the first name first
    assert credential(str(tmp_path), ("mangos.install-channel",)) == ""
    assert credential(None, names) == ""


def test_settings_come_from_arguments_then_credentials_then_the_esp(tmp_path: Path) -> None:
    creds, esp = tmp_path / "creds", tmp_path / "esp"
    creds.mkdir()
    esp.mkdir()
    (esp / "install").write_text("/dev/vdb\n")
    (esp / "install-channel").write_text("http://10.0.2.100/\n")
    env = {"CREDENTIALS_DIRECTORY": str(creds)}
    args = installer_guest.parser().parse_args(["--from-service"])
    assert installer_guest.settings(args, env, esp) == ("/dev/vdb", "http://10.0.2.100", True)
    (esp / "install-reboot").write_text("no\n")
    assert installer_guest.settings(args, env, esp)[2] is False
    (creds / "mangos.install").write_text("/dev/sdb\n")  # a system credential wins over the ESP's file
    assert installer_guest.settings(args, env, esp)[0] == "/dev/sdb"
    args = installer_guest.parser().parse_args(["--target", "/tmp/x.raw", "--channel", "/c/"])
    assert installer_guest.settings(args, env, esp) == ("/tmp/x.raw", "/c", False)  # those only for the service
    args = installer_guest.parser().parse_args([])
    assert installer_guest.settings(args, env, esp)[0] == ""  # interactive


def _block(sys_block: Path, name: str, sectors: int, **files: str) -> None:
    (sys_block / name / "device").mkdir(parents=True)
    (sys_block / name / "size").write_text(f"{sectors}\n")
    for rel, text in files.items():
        (sys_block / name / rel.replace("__", "/")).write_text(text + "\n")


def test_list_disks_names_size_and_model(tmp_path: Path) -> None:
    _block(tmp_path, "vda", 2 * 2**21, device__vendor="0x1af4")
    _block(tmp_path, "sda", 4 * 2**21, device__vendor="ATA", device__model="Samsung SSD", serial="S3Z")
    _block(tmp_path, "loop0", 2**21)
    _block(tmp_path, "sr0", 2**21)
    _block(tmp_path, "sdb", 0)  # an empty card reader
    assert list_disks(tmp_path) == [
        Disk("sda", 4 * 2**30, "ATA Samsung SSD (serial S3Z)"),
        Disk("vda", 2 * 2**30, "virtio disk"),
    ]
    assert list_disks(tmp_path / "none") == []


def test_boot_disk_is_the_one_holding_the_running_root(tmp_path: Path) -> None:
    dev, sysfs = tmp_path / "dev", tmp_path / "sys"
    (dev / "disk/by-partuuid").mkdir(parents=True)
    (dev / "disk/by-partuuid" / UUID).symlink_to("../../vda2")
    (sysfs / "devices/pci/virtio1/block/vda/vda2").mkdir(parents=True)
    (sysfs / "class/block").mkdir(parents=True)
    (sysfs / "class/block/vda2").symlink_to(sysfs / "devices/pci/virtio1/block/vda/vda2")
    (sysfs / "class/block/vda").symlink_to(sysfs / "devices/pci/virtio1/block/vda")
    cmdline = f"roothash={ROOTHASH} root=/dev/mapper/root ro"
    assert boot_disk(cmdline, dev, sysfs / "class/block") == "vda"
    assert boot_disk("root=/dev/sda1 ro", dev, sysfs / "class/block") is None  # not an image's verity root
    with pytest.raises(FarmError, match="cannot tell which disk") as err:
        boot_disk(f"roothash={'f' * 64}", dev, sysfs / "class/block")
    assert err.value.code == E.IMAGE_INPUT


def test_the_boot_disk_and_a_small_disk_are_refused() -> None:
    disks = [Disk("vda", 2 * 10**9, "virtio disk"), Disk("vdb", 2 * 10**9, "virtio disk"), Disk("vdc", 10**6, "x")]
    image = 1_500_000_000
    assert refusal(disks[0], image_size=image, booted="vda") == "the installer booted from it"
    assert "smaller than the image" in refusal(disks[2], image_size=image, booted="vda")
    assert choose(disks, "/dev/vdb", image_size=image, booted="vda") == disks[1]
    assert choose(disks, "vdb\n", image_size=image, booted="vda") == disks[1]
    assert choose([Disk("vdb", image, "exactly")], "vdb", image_size=image, booted=None).name == "vdb"
    for wanted, why in (("/dev/vda", "booted from"), ("vdc", "smaller"), ("/dev/sdz", "not a disk")):
        with pytest.raises(FarmError, match=why):
            choose(disks, wanted, image_size=image, booted="vda")


def test_cms_verify_argv_checks_against_exactly_the_given_certificate() -> None:
    argv = installer_guest.cms_verify_argv(Path("S"), Path("S.p7s"), Path("r.crt"))
    assert argv[:3] == ["openssl", "cms", "-verify"]
    assert argv[argv.index("-content") + 1] == "S" and argv[argv.index("-in") + 1] == "S.p7s"
    assert argv[argv.index("-CAfile") + 1] == argv[argv.index("-certfile") + 1] == "r.crt"
    assert "-nointern" in argv and "-binary" in argv


def test_parse_sums_refuses_malformed_lines() -> None:
    digest = "a" * 64
    assert channelfiles.parse_sums(f"{digest}  mangos_1.efi\n{digest} *b\n".encode()) == {
        "mangos_1.efi": digest,
        "b": digest,
    }
    for bad in (f"{digest}  ../x", f"{digest[:-1]}  x", f"{digest}  x\n{digest}  x"):
        with pytest.raises(FarmError, match="malformed"):
            channelfiles.parse_sums(bad.encode())


def test_progress_lines_are_throttled_and_carry_an_eta() -> None:
    lines: list[str] = []
    show = installer_guest.progress_printer(lines.append, every=2.0)
    for written, seconds in ((10, 0.5), (20, 1.0), (50, 2.6), (100, 3.0)):
        show(stream.Progress(written, 100, seconds))
    assert len(lines) == 3, lines  # the first, one 2 s later, the last
    assert lines[1] == "50 of 100 bytes written (50%), 0.0 MB/s, ETA 3 s"


def test_guest_files_add_the_program_and_leave_the_image_payload_alone() -> None:
    files = installer.guest_files("http://10.0.2.100/")
    for rel in installer.VENDORED:
        assert files[f"{installer.GUEST}/{rel}"] == (Path(installer._SOURCE) / rel).read_bytes()
    assert files[f"{installer.GUEST}/channel"] == b"http://10.0.2.100\n"
    unit = files["usr/lib/systemd/system/mangos-installer.service"].decode()
    assert "--from-service" in unit and "ImportCredential=mangos.install*" in unit
    assert "\nLoadCredential=" not in unit  # a missing file would fail the unit: the program reads the ESP's
    wants = files["usr/lib/systemd/system/multi-user.target.d/50-mangos-installer.conf"].decode()
    assert "Wants=mangos-installer.service" in wants
    assert not any((payload.PAYLOAD / rel).exists() for rel in files)  # nothing of it in the image's payload
    assert installer.PAYLOAD.parent == payload.PAYLOAD.parent and installer.PAYLOAD != payload.PAYLOAD
    with pytest.raises(FarmError, match="not a channel URL"):
        installer.guest_files("ftp://x y")


def test_the_installer_request_is_the_image_request_plus_the_installer() -> None:
    from farm.image.assemble import Request

    base = Request(out=Path("out"), release_keys=Path("rk"), kernel="k", systemd="backports")
    req = installer.request(base, "http://h/c")
    assert (req.name, req.kernel, req.systemd) == ("mangos-installer", "k", "backports")
    assert req.extra_packages == installer.PACKAGES
    assert dict(req.extra_files) == installer.guest_files("http://h/c")
    assert (base.name, base.extra_packages, base.extra_files) == ("mangos", (), ())  # image build's defaults


def test_interactive_install_needs_the_name_typed_again(
    monkeypatch: pytest.MonkeyPatch, published: Path, tmp_path: Path
) -> None:
    """Asked on the console: the disk to install to, then its name again; a different answer writes nothing."""
    disks = [Disk("vda", 10**10, "virtio disk"), Disk("vdb", 10**10, "virtio disk")]
    monkeypatch.setattr(installer_guest, "list_disks", lambda: disks)
    monkeypatch.setattr(installer_guest, "boot_disk", lambda cmdline: "vda")
    answers = iter(["", "vdb", "vda"])  # Enter keeps DHCP
    out = io.StringIO()
    cert = published.parent / "keys" / "verity.crt"
    code = installer_guest.main(["--channel", str(published), "--cert", str(cert)], out=out,
                                ask=lambda prompt: next(answers), environ={}, host=fake_host(tmp_path))  # fmt: skip
    text = out.getvalue()
    assert code == 1, text
    assert "network: dhcp (the image's default): ens3 10.0.2.15/24" in text
    assert "vda: refused: the installer booted from it" in text and "vdb: can be installed to" in text
    assert "/dev/vdb was not confirmed" in text and "writing" not in text
    assert not (tmp_path / "network").exists()  # DHCP kept: nothing written, nothing run


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A channel (a directory) with release 1.0 of a small image."""
    return publish_small(tmp_path_factory.mktemp("installer"))


def test_the_in_image_copy_installs_a_release_by_itself(published: Path, tmp_path: Path) -> None:
    script = guest_copy(tmp_path / "root")
    target = tmp_path / "disk.raw"
    cert = published.parent / "keys" / "verity.crt"
    done = run_guest(script, "--channel", str(published), "--target", str(target), "--cert", str(cert))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "release 1.0 of " in done.stdout and "SHA256SUMS signature verified" in done.stdout
    assert f"mangos-install: wrote {target.stat().st_size}" not in done.stdout  # holes are not written
    raw = published.parent / "out" / "mangos_1.0.raw"
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(raw.read_bytes()).hexdigest()
    bmap = channel.file_name("1.0", channel.BMAP)
    allocated = stream.fetch_block_map(
        str(published / "1.0"), bmap, hashlib.sha256((published / "1.0" / bmap).read_bytes()).hexdigest()
    ).allocated
    assert f"mangos-install: wrote {allocated} bytes to {target} in " in done.stdout, done.stdout


def test_a_channel_signed_by_another_key_writes_nothing(published: Path, tmp_path: Path) -> None:
    script = guest_copy(tmp_path / "root")
    other = generate(tmp_path / "other")
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / "channel.json").write_bytes((published / "channel.json").read_bytes())
    (forged / "1.0").mkdir()
    for f in (published / "1.0").iterdir():
        (forged / "1.0" / f.name).symlink_to(f)
    (forged / "1.0" / "SHA256SUMS.p7s").unlink()
    (forged / "1.0" / "SHA256SUMS.p7s").write_bytes(sign_detached((published / "1.0/SHA256SUMS").read_bytes(), other))
    target = tmp_path / "disk.raw"
    cert = published.parent / "keys" / "verity.crt"
    done = run_guest(script, "--channel", str(forged), "--target", str(target), "--cert", str(cert))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "error[E-CHANNEL-UNTRUSTED]: release 1.0: SHA256SUMS is not signed by a key this installer trusts" in (
        done.stdout
    )
    assert not target.exists()  # not even created
