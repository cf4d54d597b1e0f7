"""The image build's cache: blobs are checked before use, entries are whole or absent, the initrd's key follows
what dracut reads, and a build from empty caches gives the same bytes as one that takes from them."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from farm.image import initrd
from farm.image.cache import ImageCache
from tests.image.conftest import ArchiveImage
from tests.lib.debvariant import variant_deb

KVER = "6.1.0-test-amd64"


@pytest.mark.unit
def test_a_damaged_or_truncated_blob_is_never_used(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    src = tmp_path / "src"
    src.write_bytes(b"erofs" * 10000)
    digest = cache.put_file(src)
    assert cache.get_file(digest, tmp_path / "out") and (tmp_path / "out").read_bytes() == src.read_bytes()
    blob = cache.blob(digest)
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.unlink()  # (a hard link of src: write a separate damaged copy)
    blob.write_bytes(bytes(data))
    assert not cache.get_file(digest, tmp_path / "again") and not (tmp_path / "again").exists()
    assert not blob.exists()  # deleted, so the stage makes it again
    cache.put_file(src)
    blob.write_bytes(src.read_bytes()[:1000])  # truncated (a crash mid-copy would leave it under a temp name)
    assert not cache.has(digest) and not blob.exists()
    assert cache.get_bytes("../../etc/passwd") is None and not cache.has("x" * 64)


@pytest.mark.unit
def test_an_unreadable_or_misplaced_entry_is_a_miss(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    key, other = "a" * 64, "b" * 64
    cache.put("root", key, {"erofs": "c" * 64})
    assert cache.get("root", key) == {"erofs": "c" * 64, "key": key}
    entry = tmp_path / "cache/entries/root" / f"{key}.json"
    shutil.copy(entry, entry.with_name(f"{other}.json"))  # an entry under another key's name
    assert cache.get("root", other) is None
    entry.write_text('{"erofs": "c')  # half an entry
    assert cache.get("root", key) is None and not entry.exists()
    assert not [p for p in (tmp_path / "cache").rglob(".*")]  # no temporary files left behind


@pytest.mark.unit
def test_prune_keeps_the_recently_used_entries_and_their_blobs(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    blobs = [cache.put_bytes(f"image {i}".encode()) for i in range(4)]
    keys = [f"{i}" * 64 for i in range(4)]
    for i, (key, blob) in enumerate(zip(keys, blobs, strict=True)):
        cache.put("root", key, {"erofs": blob})
        os.utime(tmp_path / "cache/entries/root" / f"{key}.json", (1000 + i, 1000 + i))
    assert cache.get("root", keys[0])  # used now: the newest
    stray = cache.put_bytes(b"named by no entry")
    assert cache.prune({"root": 2}) == 3  # blobs of the two oldest unused entries, and the stray one
    assert [bool(cache.get("root", k)) for k in keys] == [True, False, False, True]
    assert cache.has(blobs[0]) and cache.has(blobs[3]) and not cache.has(blobs[1]) and not cache.has(stray)


@pytest.mark.unit
def test_sums_hash_a_sparse_disk_image_byte_for_byte(tmp_path: Path) -> None:
    from farm.image.sums import CHUNK, sparse_sha256

    disk = tmp_path / "disk.raw"
    with disk.open("wb") as fh:  # data, a hole, data across a chunk boundary, a trailing hole
        fh.write(b"gpt" * 1000)
        fh.seek(3 * CHUNK + 5)
        fh.write(bytes(range(256)) * 20000)
        fh.truncate(9 * CHUNK + 7)
    assert sparse_sha256(disk) == hashlib.sha256(disk.read_bytes()).hexdigest()
    empty = tmp_path / "empty"
    empty.touch()
    assert sparse_sha256(empty) == hashlib.sha256(b"").hexdigest()


def _root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for d in ("boot", f"usr/lib/modules/{KVER}/kernel/drivers", "usr/lib/dracut/modules.d", "usr/bin", "etc"):
        (root / d).mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{KVER}").write_bytes(b"kernel")
    (root / f"usr/lib/modules/{KVER}/modules.dep").write_text("kernel/drivers/a.ko:\n")
    (root / f"usr/lib/modules/{KVER}/kernel/drivers/a.ko").write_bytes(b"a" * 10)
    (root / "usr/lib/dracut/modules.d/90x").write_text("install() { inst bash; }\n")
    (root / "usr/bin/bash").write_bytes(b"bash 1")
    (root / "usr/bin/hello").write_bytes(b"hello 1")
    (root / "etc/machine-id").write_text("1" * 32 + "\n")
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    return root


def _newc(members: list[tuple[str, int, bytes]]) -> bytes:
    out = b""
    for name, mode, data in [*members, ("TRAILER!!!", 0, b"")]:
        raw = name.encode() + b"\0"
        fields = [0, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + raw
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return out


@pytest.mark.unit
def test_initrd_members_are_read_from_early_and_compressed_archives(tmp_path: Path) -> None:
    early = _newc([("kernel", 0o40755, b""), ("kernel/x86/microcode/GenuineIntel.bin", 0o100644, b"ucode")])
    main = _newc([(".", 0o40755, b""), ("usr/bin/bash", 0o100755, b"bash 1"), ("etc/machine-id", 0o100444, b"")])
    image = tmp_path / "initrd.img"
    image.write_bytes(early + b"\0" * 512 + gzip.compress(main))
    assert initrd.initrd_files(image) == ["etc/machine-id", "kernel/x86/microcode/GenuineIntel.bin", "usr/bin/bash"]
    image.write_bytes(_newc([("etc/machine-id", 0o100444, b"1" * 33)]))
    with pytest.raises(ValueError, match="machine-id"):  # copied from the root: the key would have to cover it
        initrd.initrd_files(image)


@pytest.mark.unit
def test_the_initrd_key_follows_what_dracut_reads_and_nothing_else(tmp_path: Path) -> None:
    root = _root(tmp_path)
    files = ["usr/bin/bash", "etc/machine-id", "etc/os-release", f"usr/lib/modules/{KVER}/kernel/drivers/a.ko"]

    def keys() -> tuple[str, str]:
        plan = initrd.plan_key(root, kver=KVER, sde=1)
        return plan, initrd.content_key(root, plan, files)

    plan, content = keys()
    (root / "usr/bin/hello").write_bytes(b"hello 2")  # not in the initrd, its name unchanged
    (root / "etc/machine-id").write_text("2" * 32 + "\n")  # dracut writes an empty one
    assert keys() == (plan, content)
    assert initrd.plan_key(root, kver=KVER, sde=2) != plan

    def relink() -> None:
        (root / "etc/os-release").unlink()
        (root / "etc/os-release").symlink_to("os-release.d/x")

    def configure() -> None:
        (root / "etc/dracut.conf.d").mkdir()
        (root / "etc/dracut.conf.d/x.conf").write_text('compress="cat"')

    for change in (
        lambda: (root / "usr/bin/bash").write_bytes(b"bash 2"),  # a file it copied
        lambda: (root / "usr/bin/zsh").write_bytes(b"new"),  # a name beside one (a glob or `inst -o` may take it)
        relink,
    ):
        change()
        assert keys()[0] == plan and keys()[1] != content
        content = keys()[1]
    for change in (
        lambda: (root / "usr/lib/dracut/modules.d/90x").write_text("install() { inst zsh; }\n"),  # dracut's code
        configure,
        lambda: (root / f"usr/lib/modules/{KVER}/kernel/drivers/b.ko").write_bytes(b"b"),  # a module it may select
        lambda: (root / f"usr/lib/modules/{KVER}/modules.dep").write_text("x\n"),
        lambda: (root / "boot" / f"vmlinuz-{KVER}").write_bytes(b"kernel 2"),
    ):
        change()
        assert keys()[0] != plan
        plan = keys()[0]


def _deb(dest: Path, name: str, version: str) -> Path:
    import subprocess

    tree = dest / f"tree-{name}-{version}"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\nMaintainer: t <t@mangos.invalid>\n"
        f"Description: {name}\n"
    )
    (tree / "usr/share" / name).mkdir(parents=True)
    (tree / "usr/share" / name / "v").write_text(version)
    deb = dest / f"{name}_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                   capture_output=True, env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/bin:/bin"})  # fmt: skip
    return deb


@pytest.mark.integration
def test_the_cached_packages_index_is_what_dpkg_scanpackages_prints(tmp_path: Path) -> None:
    from farm.image import rootfs
    from farm.image.packages import ARCHIVE, Inputs, Package
    from farm.trust.verify import file_sha256
    from tests.lib.tools import require

    require("dpkg-scanpackages")
    cache = ImageCache(tmp_path / "cache")

    def inputs(*debs: Path) -> Inputs:
        pkgs = [Package(d.name.split("_")[0], d.name.split("_")[1], "amd64", file_sha256(d), ARCHIVE, d) for d in debs]
        return Inputs(tuple(pkgs), ())

    debs = [_deb(tmp_path / "debs", name, "1.0") for name in ("zlib", "a-b", "hello", "a")]
    for _ in range(2):  # the second time from the cache alone
        rootfs.stage_repo(inputs(*debs), tmp_path / "repo", cache)
        assert (tmp_path / "repo/Packages").read_bytes() == rootfs.scan(tmp_path / "repo")
    debs[2] = _deb(tmp_path / "debs", "hello", "2.0")  # one package changed: one stanza made again
    rootfs.stage_repo(inputs(*debs), tmp_path / "repo", cache)
    assert b"Version: 2.0" in (tmp_path / "repo/Packages").read_bytes()
    assert (tmp_path / "repo/Packages").read_bytes() == rootfs.scan(tmp_path / "repo")


# -- cold and warm builds give the same bytes (real tools, a full image build: minutes) ---------------------------
def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.e2e
def test_a_tree_from_the_stored_one_and_a_cold_build_give_the_same_bytes(
    archive_image: ArchiveImage, tmp_path: Path
) -> None:
    """Cold (empty caches: the session's reference build, whose tree is stored). Then hello changes (a farm build of
    it no build has seen): the tree is the stored one with hello upgraded by dpkg, the initrd comes from the cache.
    The same inputs from empty tree and root caches (mmdebstrap makes the tree afresh), and once more with the whole
    root cached: every .raw and SHA256SUMS is the same as the one made from the stored tree."""
    cold, cache, out = archive_image.built, archive_image.home / "cache/image", archive_image.out.parent
    temporary = [*(cache / "blobs").rglob(".*"), *(cache / "entries").rglob(".*"), *(cache / "trees").glob(".*")]
    assert not temporary  # (a stored tree holds dot files of its own: /etc/skel/.bashrc, ...)
    assert cold["cached"] == {"root": False, "initrd": False} and cold["tree"] == "fresh"
    deb = variant_deb(archive_image.home, tmp_path / "debs", "t1")
    delta = archive_image.build(out / "delta", "--deb", str(deb))
    assert delta["tree"] == "delta: hello 2.10-3+bencht1", delta["tree"]
    assert delta["cached"] == {"root": False, "initrd": True} and "rootfs" in delta["stages"]
    assert len(list((cache / "trees").iterdir())) == 1  # the tree made from the stored one is not stored
    # Another package set, the same machine-id: the /var first boot made (its UUID derives from it) is found again.
    assert delta["machine_id"] == cold["machine_id"] and len(cold["machine_id"]) == 32
    shutil.rmtree(cache / "trees")
    shutil.rmtree(cache / "entries/root")
    fresh = archive_image.build(out / "fresh", "--deb", str(deb))
    assert fresh["tree"] == "fresh" and fresh["cached"] == {"root": False, "initrd": True}
    hit = archive_image.build(out / "hit", "--deb", str(deb))
    assert hit["cached"] == {"root": True, "initrd": True} and "rootfs" not in hit["stages"]
    assert _sha(Path(str(delta["raw"]))) != _sha(Path(str(cold["raw"])))  # hello did change
    for other in (fresh, hit):
        assert _sha(Path(str(other["raw"]))) == _sha(Path(str(delta["raw"])))
    sums = {(out / d / "SHA256SUMS").read_bytes() for d in ("delta", "fresh", "hit")}
    assert len(sums) == 1
