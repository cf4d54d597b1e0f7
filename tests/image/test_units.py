"""Pure parts of the image pipeline: the verity tree, the signature partition, the GPT layout, the SBOM, argv."""

from __future__ import annotations

import base64
import itertools
import json
import os
from pathlib import Path

import pytest

from farm.archive.resolve import install_argv
from farm.errors import FarmError
from farm.image import erofs, esp, gpt, inputs, rootfs, signature, sysext, trace, verity
from farm.trust.release_keys import ReleaseKeys, generate, load_cert, load_key

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> ReleaseKeys:
    return generate(tmp_path_factory.mktemp("release") / "keys")


def test_release_keys_are_private_and_refuse_overwrite(release: ReleaseKeys) -> None:
    assert release.check() is release
    assert os.stat(release.verity_key).st_mode & 0o777 == 0o600
    assert os.stat(release.dir).st_mode & 0o777 == 0o700
    with pytest.raises(FarmError) as exc:
        generate(release.dir)
    assert exc.value.code == "E-KEY-EXISTS"
    with pytest.raises(FarmError) as exc:
        ReleaseKeys(release.dir / "nowhere").check()
    assert exc.value.code == "E-RELEASE-KEY"


def test_pure_python_verity_tree_is_deterministic_and_depends_on_every_block() -> None:
    data = bytes(range(256)) * 16 * 300  # 300 blocks: two levels
    salt = verity.derive_salt("x")
    first = verity.root_hash(data, salt)
    assert first == verity.root_hash(data, salt) and len(first) == 64
    flipped = bytearray(data)
    flipped[4096 * 299 + 7] ^= 1
    assert verity.root_hash(bytes(flipped), salt) != first
    assert verity.root_hash(data, verity.derive_salt("y")) != first
    with pytest.raises(ValueError):
        verity.root_hash(b"\0" * 100, salt)


def test_signature_partition_round_trip_and_tamper(release: ReleaseKeys, tmp_path: Path) -> None:
    root_hash = "ab" * 32
    key, cert = load_key(release.verity_key), load_cert(release.verity_cert)
    der = signature.write_partition(tmp_path / "sig", root_hash, key, cert)
    data = (tmp_path / "sig").read_bytes()
    assert len(data) == signature.PARTITION_SIZE and data.endswith(b"\0")
    doc = signature.parse_partition(data)
    assert doc["rootHash"] == root_hash and base64.b64decode(doc["signature"]) == der
    signature.verify_root_hash(root_hash, der, cert)
    # deterministic: the same hash and key give the same bytes (no signing time)
    assert signature.sign_root_hash(root_hash, key, cert) == der
    with pytest.raises(FarmError) as exc:
        signature.verify_root_hash("cd" * 32, der, cert)
    assert exc.value.code == "E-IMAGE-VERIFY"
    other = generate(tmp_path / "other")
    with pytest.raises(FarmError):
        signature.verify_root_hash(root_hash, der, load_cert(other.verity_cert))


def test_partition_uuids_derive_from_the_root_hash_like_systemd() -> None:
    root_hash = "00112233445566778899aabbccddeeff" + "ffeeddccbbaa99887766554433221100"
    data, hashes = gpt.root_uuids(root_hash)
    assert data == "00112233-4455-6677-8899-aabbccddeeff"
    assert hashes == "ffeeddcc-bbaa-9988-7766-554433221100"


def test_gpt_layout_is_aligned_and_script_names_every_partition() -> None:
    parts = [
        gpt.Partition("esp", gpt.ESP, gpt.derived_uuid("s", "esp"), 64 * gpt.MIB),
        gpt.Partition("root-1", gpt.ROOT_X86_64, "00000000-0000-0000-0000-000000000001", 3 * gpt.MIB + 4096),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64_VERITY_SIG, gpt.derived_uuid("s", "b"), 16384),
    ]
    placed = gpt.layout(parts)
    assert [p.start % gpt.MIB for p in placed] == [0, 0, 0]
    assert all(a.end <= b.start for a, b in itertools.pairwise(placed))
    script = gpt.sfdisk_script(placed, "11111111-2222-4333-8444-555555555555")
    assert script.startswith("label: gpt\nlabel-id: 11111111-2222-4333-8444-555555555555\n")
    assert f'type={gpt.ROOT_X86_64_VERITY_SIG}, uuid={parts[2].uuid}, name="_empty"' in script
    assert gpt.slot_size(100 * gpt.MIB) == 150 * gpt.MIB


def test_esp_copy_plan_is_sorted_parents_first(tmp_path: Path) -> None:
    for rel in ("loader/loader.conf", "EFI/Linux/b.efi", "EFI/Linux/a.efi", "EFI/BOOT/BOOTX64.EFI"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    dirs, files = esp.copy_plan(tmp_path)
    assert dirs == ["::/EFI", "::/EFI/BOOT", "::/EFI/Linux", "::/loader"]
    assert [d for _, d in files] == [
        "::/EFI/BOOT/BOOTX64.EFI", "::/EFI/Linux/a.efi", "::/EFI/Linux/b.efi", "::/loader/loader.conf",
    ]  # fmt: skip
    assert esp.mkfs_argv(tmp_path / "e.img", 64 * esp.MIB, "4d414e47")[:4] == ["mkfs.vfat", "-C", "--invariant", "-i"]


def test_erofs_and_verity_argv_pin_everything_that_varies() -> None:
    argv = erofs.mkfs_argv(Path("t"), Path("o"), sde=42, uuid_="u")
    assert argv[:5] == ["mkfs.erofs", "-T42", "-Uu", "--all-root", "-x-1"]
    fmt = verity.format_argv(Path("d"), Path("h"), salt="aa", uuid_="bb")
    assert "--salt=aa" in fmt and "--uuid=bb" in fmt and "--format=1" in fmt
    assert verity.derive_salt("a") == verity.derive_salt("a") != verity.derive_salt("b")


def _pkg(name: str, origin: str) -> inputs.Package:
    farm = origin == inputs.FARM
    return inputs.Package(
        name, "1.0-1", "amd64", "0" * 64, origin, Path(f"/x/{name}_1.0-1_amd64.deb"),
        recipe=name if farm else "", commit="c" * 40 if farm else "", build_key="k" * 64 if farm else "",
    )  # fmt: skip


def test_spdx_names_every_package_with_its_origin() -> None:
    got = inputs.Inputs((_pkg("hello", inputs.FARM), _pkg("libc6", inputs.ARCHIVE)), ("hello",))
    doc = inputs.spdx(got, name="mangos_1", created="2023-11-14T22:13:20Z")
    assert doc["spdxVersion"] == "SPDX-2.3" and doc["documentNamespace"].endswith(got.digest)
    by_name = {p["name"]: p for p in doc["packages"]}
    assert "c" * 40 in by_name["hello"]["sourceInfo"] and by_name["hello"]["comment"] == "origin: farm"
    assert by_name["libc6"]["comment"] == "origin: archive"
    assert by_name["libc6"]["checksums"] == [{"algorithm": "SHA256", "checksumValue": "0" * 64}]
    assert set(doc["documentDescribes"]) == {p["SPDXID"] for p in doc["packages"]}
    json.dumps(doc)
    # the digest (cache key, version) changes with any package's bytes
    changed = inputs.Inputs((_pkg("hello", inputs.FARM),), ("hello",))
    assert changed.digest != got.digest
    assert rootfs.cache_key(got, 1) != rootfs.cache_key(got, 2)


def test_closure_and_mmdebstrap_argv_are_offline_and_pinned(tmp_path: Path) -> None:
    argv = install_argv(tmp_path / "status", ["hello", "systemd"])
    assert argv[:2] == ["apt-get", "-s"] and argv[-3:] == ["install", "hello", "systemd"]
    assert f"Dir::State::status={tmp_path / 'status'}" in argv
    mm = rootfs.mmdebstrap_argv(tmp_path / "repo", tmp_path / "out.tar", ["hello"])
    assert mm[-1] == f"deb [trusted=yes] copy://{tmp_path / 'repo'} ./"
    assert "--include=hello" in mm
    assert rootfs.mmdebstrap_env(7)["SOURCE_DATE_EPOCH"] == "7"
    assert rootfs.mmdebstrap_env(7)["INITRD"] == "No"  # no throwaway initrd from the kernel's postinst
    assert "Codename: bookworm" in rootfs.release_text(b"x")
    assert inputs.is_image_deb("hello_2.10-3_amd64.deb") and not inputs.is_image_deb("hello-dbgsym_2_amd64.deb")


def test_trace_knows_merged_usr_aliases() -> None:
    assert trace.candidates("/bin/sh") == ["/bin/sh", "/usr/bin/sh"]
    assert trace.candidates("usr/lib/x") == ["/lib/x", "/usr/lib/x"]


def test_sysext_release_file_and_tree_rules(tmp_path: Path) -> None:
    assert sysext.release_path("docker", "sysext") == "usr/lib/extension-release.d/extension-release.docker"
    assert "ID=_any" in sysext.release_text("docker", "sysext")
    (tmp_path / "var").mkdir()
    with pytest.raises(FarmError) as exc:
        sysext.check_tree(tmp_path, "sysext")
    assert "var" in exc.value.message


def test_streamed_verity_tree_equals_the_in_memory_one() -> None:
    import io

    data = bytes(range(256)) * 16 * 1000
    salt = verity.derive_salt("z")
    assert verity.root_hash_stream(io.BytesIO(data), 1000, salt) == verity.root_hash(data, salt)
    assert verity.root_hash_stream(io.BytesIO(data[:4096]), 1, salt) == verity.root_hash(data[:4096], salt)
    with pytest.raises(ValueError):
        verity.root_hash_stream(io.BytesIO(data[:4096]), 2, salt)
