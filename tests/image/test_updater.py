"""The in-image updater (``/usr/lib/mangos/mangos-update``, a POSIX shell script) run on this host against a disk
image file: the releases come from ``image publish``, the running slot from a ``roothash=`` command line, the GPT is
edited with sfdisk and the ESP with mtools at its offset (this host has no device-mapper and no vfat driver).

The images have the real shape (GPT with ESP, slot A in use, slot B ``_empty``; a real FAT ESP holding the UKI with
its boot-counting name; the verity signature partition's DPS JSON naming the root hash the UKI's ``roothash=``
carries) with random payloads of a few MiB, so each update takes well under a second. The full image boots them in
the QEMU tests (issue #15).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.image import channelfiles, gpt, publish
from farm.image import esp as esp_image
from farm.image.payload import PAYLOAD
from farm.image.sums import sha256sums, sign_detached
from farm.trust.release_keys import ReleaseKeys, fingerprint, load_cert
from tests.lib.release import release_keys
from tests.lib.tools import free_port, require, stop

SCRIPT = PAYLOAD / "usr/lib/mangos/mangos-update"
MIB = gpt.MIB
SDE = 1700000000

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Out:
    out: Path
    version: str
    root_hash: str
    raw: Path

    def file(self, suffix: str) -> bytes:
        return (self.out / f"mangos_{self.version}{suffix}").read_bytes()


def make_out(base: Path, version: str, keys: ReleaseKeys, *, root_mib: int = 3, slot: int = 0) -> Out:
    """``out/`` as image build leaves it, with the GPT of write_disk (slot B ``_empty``) and a real FAT ESP."""
    out = base / f"out-{version}-{root_mib}"
    out.mkdir(parents=True)
    name = f"mangos_{version}"
    root_hash = hashlib.sha256(os.urandom(32)).hexdigest()
    cmdline = f" roothash={root_hash} systemd.verity_root_options=panic-on-corruption root=/dev/mapper/root ro "
    sig = json.dumps({"rootHash": root_hash, "certificateFingerprint": "00" * 32, "signature": "AAAA"}).encode()
    files = {
        ".efi": b"MZ" + os.urandom(300 * 1024) + cmdline.encode() + os.urandom(1000),
        ".root.erofs": os.urandom(root_mib * MIB + 8 * 4096),
        ".root.verity": os.urandom(64 * 1024),
        ".root.verity.sig": sig.ljust(4096, b"\0"),
    }
    for suffix, data in files.items():
        (out / f"{name}{suffix}").write_bytes(data)
    tree = base / f"esp-{version}-{root_mib}"
    (tree / "EFI/Linux").mkdir(parents=True)
    (tree / "loader").mkdir()
    (tree / "loader/loader.conf").write_text("timeout 0\n")
    shutil.copyfile(out / f"{name}.efi", tree / f"EFI/Linux/{name}+3.efi")
    esp = esp_image.make(tree, base / f"esp-{version}-{root_mib}.img", sde=SDE)
    data_uuid, verity_uuid = gpt.root_uuids(root_hash)
    root_slot = slot or gpt.slot_size(len(files[".root.erofs"]))
    parts = [
        gpt.Partition("esp", gpt.ESP, gpt.derived_uuid(root_hash, "esp"), esp.stat().st_size, esp),
        gpt.Partition(f"root-{version}", gpt.ROOT_X86_64, data_uuid, root_slot, out / f"{name}.root.erofs"),
        gpt.Partition(f"verity-{version}", gpt.ROOT_X86_64_VERITY, verity_uuid, MIB, out / f"{name}.root.verity"),
        gpt.Partition(f"verity-sig-{version}", gpt.ROOT_X86_64_VERITY_SIG, gpt.derived_uuid(root_hash, "sig"),
                      16 * 1024, out / f"{name}.root.verity.sig"),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64, gpt.derived_uuid(root_hash, "root-b"), root_slot),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64_VERITY, gpt.derived_uuid(root_hash, "verity-b"), MIB),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64_VERITY_SIG, gpt.derived_uuid(root_hash, "sig-b"), 16 * 1024),
    ]  # fmt: skip
    raw = out / f"{name}.raw"
    gpt.write_disk(raw, parts, label_id=gpt.derived_uuid(root_hash, "disk"), free=4 * MIB)
    listed = sorted(p for p in out.iterdir() if p.name.startswith(name))
    (out / "SHA256SUMS").write_text(sha256sums(listed))
    (out / "SHA256SUMS.p7s").write_bytes(sign_detached((out / "SHA256SUMS").read_bytes(), keys))
    return Out(out, version, root_hash, raw)


@dataclass(frozen=True)
class Releases:
    keys: list[ReleaseKeys]
    v1: Out
    v2: Out
    v3: Out
    v4: Out
    v3_new_key: Out  # signed with keys[1]
    big: Out  # a root larger than v1's slot
    chan: Path  # v1, v2 (keys[0])
    base: Path


@pytest.fixture(scope="module")
def rel(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    for tool in ("sfdisk", "openssl", "mkfs.vfat", "mcopy", "mdir", "mdel", "mren", "dd", "bash"):
        require(tool)
    base = tmp_path_factory.mktemp("updater")
    keys = [release_keys(base / f"k{i}") for i in range(3)]
    v1 = make_out(base, "1", keys[0])
    v2 = make_out(base, "2", keys[0])
    v3 = make_out(base, "3", keys[0])
    v4 = make_out(base, "4", keys[0])
    v3_new_key = make_out(base, "3", keys[1], root_mib=2)
    big = make_out(base, "9", keys[0], root_mib=6)
    chan = base / "chan"
    for out in (v1, v2):
        publish.publish(out.out, str(chan), keys[0], base / "work")
    return Releases(keys, v1, v2, v3, v4, v3_new_key, big, chan, base)


def copy_channel(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    for p in [dest, *dest.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dest


def disk_of(out: Out, dest: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(out.raw), str(dest)], check=True)
    return dest


def table(disk: Path) -> list[dict[str, object]]:
    doc = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], check=True, capture_output=True).stdout)
    return list(doc["partitiontable"]["partitions"])


def labels(disk: Path) -> list[str]:
    return [str(p.get("name", "")) for p in table(disk)]


def region(disk: Path, number: int) -> bytes:
    p = table(disk)[number - 1]
    with disk.open("rb") as fh:
        fh.seek(int(str(p["start"])) * 512)
        return fh.read(int(str(p["size"])) * 512)


def digest(disk: Path, *numbers: int) -> str:
    h = hashlib.sha256()
    for n in numbers:
        h.update(region(disk, n))
    return h.hexdigest()


def esp_files(disk: Path, dest: Path) -> dict[str, bytes]:
    """EFI/Linux of the disk's ESP (partition 1), read with mtools at its offset."""
    at = f"{disk}@@{int(str(table(disk)[0]['start'])) * 512}"
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    listing = subprocess.run(
        ["mdir", "-b", "-i", at, "::/EFI/Linux"], check=True, capture_output=True, text=True, env=env
    )
    dest.mkdir(parents=True, exist_ok=True)
    files = {}
    for line in listing.stdout.split():
        name = line.rsplit("/", 1)[-1]
        subprocess.run(["mcopy", "-n", "-i", at, f"::/EFI/Linux/{name}", str(dest / name)], check=True, env=env)
        files[name] = (dest / name).read_bytes()
    return files


def update(disk: Path, url: str, running: Out, keys: ReleaseKeys, state: Path, *args: str, http: str = "curl"
           ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TMPDIR": str(state.parent),
        "MANGOS_UPDATE_DISK": str(disk),
        "MANGOS_UPDATE_CMDLINE": f"BOOT_IMAGE=x roothash={running.root_hash} root=/dev/mapper/root ro",
        "MANGOS_UPDATE_CERT": str(keys.verity_cert),
        "MANGOS_UPDATE_STATE": str(state),
        "MANGOS_UPDATE_HTTP": http,
    }
    # /bin/sh: dash here as in the image (its Essential set); the script must not need bash.
    argv = ["/bin/sh", str(SCRIPT), "--channel", url, *args]
    result = subprocess.run(argv, check=False, env=env, capture_output=True, text=True, timeout=120)
    sys.stdout.write(result.stdout + result.stderr)
    return result


def test_update_writes_the_inactive_slot_then_the_next_update_the_other(rel: Releases, tmp_path: Path) -> None:
    """v1 -> v2 over HTTP (bash's /dev/tcp: the image has no curl) into slot B, then v2 -> v3 into slot A."""
    chan = copy_channel(rel.chan, tmp_path / "chan")
    disk = disk_of(rel.v1, tmp_path / "disk.raw")
    running_a = digest(disk, 2, 3, 4)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(chan), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        state = tmp_path / "state"
        before = hashlib.sha256(disk.read_bytes()).hexdigest()
        done = update(disk, url, rel.v1, rel.keys[0], state, "--check", http="bash")
        assert done.returncode == 0, done.stderr
        assert "release 2 is available (running 1)" in done.stdout
        assert hashlib.sha256(disk.read_bytes()).hexdigest() == before
        done = update(disk, url, rel.v1, rel.keys[0], state, http="bash")
    finally:
        stop(server)
    assert done.returncode == 0, done.stderr
    assert labels(disk) == ["esp", "root-1", "verity-1", "verity-sig-1", "root-2", "verity-2", "verity-sig-2"]
    assert digest(disk, 2, 3, 4) == running_a  # the running slot is never written
    parts = table(disk)
    assert (str(parts[4]["uuid"]).lower(), str(parts[5]["uuid"]).lower()) == gpt.root_uuids(rel.v2.root_hash)
    for number, suffix in ((5, ".root.erofs"), (6, ".root.verity"), (7, ".root.verity.sig")):
        payload = rel.v2.file(suffix)
        assert region(disk, number)[: len(payload)] == payload
    esp = esp_files(disk, tmp_path / "esp1")
    assert esp == {"mangos_1+3.efi": rel.v1.file(".efi"), "mangos_2+3.efi": rel.v2.file(".efi")}
    assert {p.name for p in (state / "trusted").iterdir()} == {f"{fingerprint(load_cert(rel.keys[0].verity_cert))}.pem"}

    # Running v2 (slot B): v3 goes into slot A, v1's boot entry leaves the ESP; slot B is not touched.
    publish.publish(rel.v3.out, str(chan), rel.keys[0], tmp_path / "work")
    running_b = digest(disk, 5, 6, 7)
    done = update(disk, f"file://{chan}", rel.v2, rel.keys[0], state)
    assert done.returncode == 0, done.stderr
    assert labels(disk) == ["esp", "root-3", "verity-3", "verity-sig-3", "root-2", "verity-2", "verity-sig-2"]
    assert digest(disk, 5, 6, 7) == running_b
    assert region(disk, 2)[: len(rel.v3.file(".root.erofs"))] == rel.v3.file(".root.erofs")
    esp = esp_files(disk, tmp_path / "esp2")
    assert esp == {"mangos_2+3.efi": rel.v2.file(".efi"), "mangos_3+3.efi": rel.v3.file(".efi")}
    assert "removed EFI/Linux/mangos_1+3.efi" in done.stdout

    # Back on v2 (slot B) after v3 failed its boots (a rollback): v4 replaces v3 in slot A, although slot B holds the
    # older version: the running slot is never the one written.
    publish.publish(rel.v4.out, str(chan), rel.keys[0], tmp_path / "work")
    done = update(disk, f"file://{chan}", rel.v2, rel.keys[0], state)
    assert done.returncode == 0, done.stderr
    assert labels(disk) == ["esp", "root-4", "verity-4", "verity-sig-4", "root-2", "verity-2", "verity-sig-2"]
    assert digest(disk, 5, 6, 7) == running_b
    assert set(esp_files(disk, tmp_path / "esp3")) == {"mangos_2+3.efi", "mangos_4+3.efi"}

    # Running v4: nothing newer; --check says so with the same code.
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    for args in ((), ("--check",)):
        done = update(disk, str(chan), rel.v4, rel.keys[0], state, *args)
        assert done.returncode == 7, done.stderr
        assert "is not newer than the running 4" in done.stderr
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


def test_update_refuses_a_signature_by_an_unknown_key(rel: Releases, tmp_path: Path) -> None:
    chan = copy_channel(rel.chan, tmp_path / "chan")
    sums = (chan / "2" / channelfiles.SUMS).read_bytes()
    (chan / "2" / channelfiles.SUMS_SIG).write_bytes(sign_detached(sums, rel.keys[2]))
    disk = disk_of(rel.v1, tmp_path / "disk.raw")
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    done = update(disk, f"file://{chan}", rel.v1, rel.keys[0], tmp_path / "state")
    assert done.returncode == 5, done.stderr
    assert "release 2: SHA256SUMS is not signed by a key this machine trusts" in done.stderr
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before  # not one byte written
    assert labels(disk)[4:] == [gpt.EMPTY_LABEL] * 3
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("victim", [".root.raw", ".efi"])
def test_update_refuses_a_flipped_payload_byte(rel: Releases, tmp_path: Path, victim: str) -> None:
    chan = copy_channel(rel.chan, tmp_path / "chan")
    target = chan / "2" / f"mangos_2{victim}"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    disk = disk_of(rel.v1, tmp_path / "disk.raw")
    running, esp = digest(disk, 2, 3, 4), digest(disk, 1)
    done = update(disk, f"file://{chan}", rel.v1, rel.keys[0], tmp_path / "state")
    assert done.returncode == 9, done.stderr
    assert f"mangos_2{victim} does not match its signed digest" in done.stderr
    assert labels(disk) == ["esp", "root-1", "verity-1", "verity-sig-1", *[gpt.EMPTY_LABEL] * 3]
    assert digest(disk, 2, 3, 4) == running
    assert digest(disk, 1) == esp  # no boot entry
    assert esp_files(disk, tmp_path / "esp") == {"mangos_1+3.efi": rel.v1.file(".efi")}


def test_update_refuses_a_release_larger_than_the_slot(rel: Releases, tmp_path: Path) -> None:
    chan = copy_channel(rel.chan, tmp_path / "chan")
    publish.publish(rel.big.out, str(chan), rel.keys[0], tmp_path / "work")
    disk = disk_of(rel.v1, tmp_path / "disk.raw")
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    done = update(disk, f"file://{chan}", rel.v1, rel.keys[0], tmp_path / "state")
    assert done.returncode == 8, done.stderr
    assert "mangos_9.root.raw" in done.stderr and "does not fit partition 5" in done.stderr
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before

    # channel.json is not signed: when it understates the size, the stream stops at the partition's end.
    index = chan / channelfiles.CHANNEL
    index.write_text(re.sub(r'"size": \d+', '"size": 1', index.read_text()))
    running, next_partition = digest(disk, 1, 2, 3, 4), digest(disk, 6, 7)
    done = update(disk, f"file://{chan}", rel.v1, rel.keys[0], tmp_path / "state")
    assert done.returncode == 8, done.stderr
    assert "mangos_9.root.raw is larger than partition 5" in done.stderr
    assert (digest(disk, 1, 2, 3, 4), digest(disk, 6, 7)) == (running, next_partition)
    assert labels(disk)[4:] == [gpt.EMPTY_LABEL] * 3


def test_update_follows_an_announced_key_and_retires_the_old_one(rel: Releases, tmp_path: Path) -> None:
    """v2 (key 0) announces key 1; v3 signed by key 1 is installed by a machine that only knew key 0."""
    chan = tmp_path / "chan"
    publish.publish(rel.v1.out, str(chan), rel.keys[0], tmp_path / "work")
    publish.publish(rel.v2.out, str(chan), rel.keys[0], tmp_path / "work", next_key=rel.keys[1].verity_cert)
    publish.publish(rel.v3_new_key.out, str(chan), rel.keys[1], tmp_path / "work")
    disk = disk_of(rel.v1, tmp_path / "disk.raw")
    state = tmp_path / "state"
    done = update(disk, f"file://{chan}", rel.v1, rel.keys[0], state)
    assert done.returncode == 0, done.stderr
    assert "release 2 announces the next release key" in done.stdout
    assert labels(disk)[4:] == ["root-3", "verity-3", "verity-sig-3"]
    new = fingerprint(load_cert(rel.keys[1].verity_cert))
    assert {p.name for p in (state / "trusted").iterdir()} == {f"{new}.pem"}  # key 0 retired

    # From now on this machine refuses a release signed by the retired key (its own image's certificate included).
    sums = (chan / "3" / channelfiles.SUMS).read_bytes()
    (chan / "3" / channelfiles.SUMS_SIG).chmod(0o644)
    (chan / "3" / channelfiles.SUMS_SIG).write_bytes(sign_detached(sums, rel.keys[0]))
    before = hashlib.sha256(disk.read_bytes()).hexdigest()
    done = update(disk, f"file://{chan}", rel.v1, rel.keys[0], state)
    assert done.returncode == 5, done.stderr
    assert f"(trusted: {new[:16]})" in done.stderr
    assert hashlib.sha256(disk.read_bytes()).hexdigest() == before


@pytest.mark.parametrize(("root", "slot", "want"), [(100 * MIB + 5, 0, 201 * MIB), (100 * MIB, 300 * MIB, 300 * MIB)])
def test_slot_size_defaults_to_twice_the_root_and_holds_a_full_slots_hash_tree(
    root: int, slot: int, want: int, tmp_path: Path
) -> None:
    """image build --slot-size: the data slot, and a verity slot veritysetup's tree of a full data slot fits."""
    require("veritysetup")
    data_slot, verity_slot = gpt.root_slots(root, 1 * MIB, slot)
    assert data_slot == want
    data, tree = tmp_path / "data", tmp_path / "tree"
    with data.open("wb") as fh:
        fh.truncate(data_slot)
    subprocess.run(["veritysetup", "format", str(data), str(tree)], check=True, capture_output=True)
    assert tree.stat().st_size <= verity_slot


def test_slot_size_smaller_than_the_root_is_refused() -> None:
    from farm.cli.image import _size
    from farm.errors import FarmError

    with pytest.raises(FarmError, match="smaller than the root"):
        gpt.root_slots(10 * MIB, MIB, 4 * MIB)
    assert (_size("4G"), _size("800m"), _size("4096")) == (4 << 30, 800 << 20, 4096)
    with pytest.raises(argparse.ArgumentTypeError):
        _size("0")
