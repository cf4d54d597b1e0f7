"""The image pipeline's stages with the real tools on small trees: mkfs.erofs, veritysetup, openssl, sfdisk,
mkfs.vfat/mtools, systemd-dissect, dpkg-deb. Each is reproducible and each check fails on a flipped byte."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.image import erofs, esp, gpt, inputs, signature, sysext, verity
from farm.run import run
from farm.trust.keys import BuilderKey, generate
from farm.trust.provenance import sign, statement
from farm.trust.release_keys import ReleaseKeys, load_cert, load_key
from farm.trust.release_keys import generate as generate_release
from tests.conftest import require
from tests.lib.minirecipe import write_debian_recipe

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> ReleaseKeys:
    return generate_release(tmp_path_factory.mktemp("release") / "keys")


def _tree(root: Path) -> Path:
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/tool").write_bytes(b"#!/bin/sh\necho tool\n" + bytes(range(256)) * 64)
    (root / "usr/share/doc").mkdir(parents=True)
    (root / "usr/share/doc/README").write_text("hello\n" * 2000)
    return root


def test_erofs_verity_pure_python_and_veritysetup_agree(tmp_path: Path) -> None:
    require("mkfs.erofs")
    require("veritysetup")
    tree = _tree(tmp_path / "tree")
    a = erofs.make(tree, tmp_path / "a.erofs", sde=1700000000, seed="s")
    b = erofs.make(tree, tmp_path / "b.erofs", sde=1700000000, seed="s")
    assert a.read_bytes() == b.read_bytes() and a.stat().st_size % 4096 == 0
    v = verity.format_file(a, tmp_path / "a.verity", seed="s")
    v2 = verity.format_file(b, tmp_path / "b.verity", seed="s")
    assert (tmp_path / "a.verity").read_bytes() == (tmp_path / "b.verity").read_bytes() and v == v2
    assert verity.root_hash(a.read_bytes(), v.salt) == v.root_hash
    sb = verity.read_superblock((tmp_path / "a.verity").read_bytes())
    assert sb["salt"] == v.salt and sb["data_blocks"] == v.data_blocks and sb["uuid"] == v.uuid
    subprocess.run(verity.verify_argv(a, tmp_path / "a.verity", v.root_hash), check=True, capture_output=True)
    data = bytearray(a.read_bytes())
    data[len(data) // 2] ^= 0xFF
    a.write_bytes(bytes(data))
    bad = subprocess.run(verity.verify_argv(a, tmp_path / "a.verity", v.root_hash), check=False, capture_output=True)
    assert bad.returncode != 0
    assert verity.root_hash(bytes(data), v.salt) != v.root_hash


def test_openssl_accepts_the_signature_partition(release: ReleaseKeys, tmp_path: Path) -> None:
    require("openssl")
    root_hash = hashlib.sha256(b"root").hexdigest()
    der = signature.write_partition(
        tmp_path / "sig", root_hash, load_key(release.verity_key), load_cert(release.verity_cert)
    )
    (tmp_path / "sig.der").write_bytes(der)
    (tmp_path / "roothash").write_text(root_hash)
    argv = ["openssl", "cms", "-verify", "-binary", "-inform", "DER", "-in", str(tmp_path / "sig.der"),
            "-content", str(tmp_path / "roothash"), "-CAfile", str(release.verity_cert), "-purpose", "any",
            "-out", "/dev/null"]  # fmt: skip
    ok = subprocess.run(argv, check=False, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "roothash").write_text(hashlib.sha256(b"other").hexdigest())
    assert subprocess.run(argv, check=False, capture_output=True).returncode != 0


def test_gpt_written_on_a_file_reads_back(tmp_path: Path) -> None:
    require("sfdisk")
    content = tmp_path / "data"
    content.write_bytes(b"D" * 8192)
    parts = [
        gpt.Partition("root-1", gpt.ROOT_X86_64, "00112233-4455-6677-8899-aabbccddeeff", gpt.MIB, content),
        gpt.Partition(gpt.EMPTY_LABEL, gpt.ROOT_X86_64, gpt.derived_uuid("s", "b"), gpt.MIB),
    ]
    disk = tmp_path / "disk.raw"
    gpt.write_disk(disk, parts, label_id=gpt.derived_uuid("s", "disk"))
    first = disk.read_bytes()
    gpt.write_disk(disk, parts, label_id=gpt.derived_uuid("s", "disk"))
    assert disk.read_bytes() == first
    table = gpt.read_table(disk)
    assert [(e.name, e.type, e.uuid) for e in table] == [(p.name, p.type, p.uuid) for p in parts]
    assert gpt.read_partition(disk, table[0], limit=8192) == b"D" * 8192
    assert gpt.read_partition(disk, table[1], limit=16) == b"\0" * 16
    with pytest.raises(FarmError) as exc:
        gpt.read_table(content)
    assert exc.value.code == "E-IMAGE-VERIFY"


def test_free_tail_is_sparse_and_sparse_copy_keeps_bytes_and_holes(tmp_path: Path) -> None:
    """The free space first-boot repart grows into costs no disk, in the image or in a copy booted writable."""
    require("sfdisk")
    content = tmp_path / "data"
    content.write_bytes(b"D" * 8192)
    parts = [gpt.Partition("root-1", gpt.ROOT_X86_64, "00112233-4455-6677-8899-aabbccddeeff", gpt.MIB, content)]
    disk = tmp_path / "disk.raw"
    free = 256 * gpt.MIB
    placed = gpt.write_disk(disk, parts, label_id=gpt.derived_uuid("s", "disk"), free=free)
    assert disk.stat().st_size == gpt.align(placed[-1].end) + free + gpt.MIB
    assert disk.stat().st_blocks * 512 < 8 * gpt.MIB
    run(["sfdisk", "--verify", str(disk)])  # backup GPT at the very end: the free tail is inside the usable range
    table = json.loads(run(["sfdisk", "--json", str(disk)]).text)["partitiontable"]
    assert (table["lastlba"] + 1) * gpt.SECTOR >= gpt.align(placed[-1].end) + free
    copy = gpt.sparse_copy(disk, tmp_path / "copy.raw")
    assert copy.read_bytes() == disk.read_bytes()
    assert copy.stat().st_blocks <= disk.stat().st_blocks + 16


def test_esp_image_is_reproducible_and_readable_with_mtools(tmp_path: Path) -> None:
    require("mkfs.vfat")
    require("mcopy")
    tree = tmp_path / "esp"
    (tree / "EFI/Linux").mkdir(parents=True)
    (tree / "EFI/Linux/mangos_1+3.efi").write_bytes(b"MZ" + b"x" * 5000)
    (tree / "loader").mkdir()
    (tree / "loader/loader.conf").write_text("timeout 0\n")
    a = esp.make(tree, tmp_path / "a.img", sde=1700000000).read_bytes()
    b = esp.make(tree, tmp_path / "b.img", sde=1700000000).read_bytes()
    assert a == b
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    argv = ["mtype", "-i", str(tmp_path / "a.img"), "::/loader/loader.conf"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
    assert out.stdout == "timeout 0\n"


def test_sysext_is_reproducible_and_systemd_dissect_recognises_it(release: ReleaseKeys, tmp_path: Path) -> None:
    require("systemd-dissect")
    tree = _tree(tmp_path / "ext")
    a = sysext.build("tools", tree, tmp_path / "a", keys=release, sde=1700000000)
    b = sysext.build("tools", tree, tmp_path / "b", keys=release, sde=1700000000)
    assert a.raw.read_bytes() == b.raw.read_bytes() and a.root_hash == b.root_hash
    assert not (tree / "usr/lib/extension-release.d").exists()  # the caller's tree is not modified
    out = subprocess.run(["systemd-dissect", "--json=short", str(a.raw)], check=False, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    designators = {m["designator"] for m in info["mounts"]}
    assert {"root", "root-verity", "root-verity-sig"} <= designators
    root = next(m for m in info["mounts"] if m["designator"] == "root")
    assert root["verity"] == "signed" and root["fstype"] == "erofs", info
    assert info["useSystemExtension"] is True and "ID=_any" in info["extensionRelease"], info


def _deb(root: Path, name: str, content: str = "#!/bin/sh\n") -> Path:
    pkg = root / name
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: 1.0-1\nArchitecture: amd64\nMaintainer: t <t@x>\nDescription: test\n"
    )
    (pkg / "usr/bin").mkdir(parents=True)
    (pkg / "usr/bin" / name).write_text(content)
    out = root / f"{name}_1.0-1_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(pkg), str(out)], check=True,
                   capture_output=True, env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/bin:/bin"})  # fmt: skip
    shutil.rmtree(pkg)
    return out


def _sign(
    deb: Path, key: BuilderKey, build_key: str = "k" * 64, *, commit: str = "c" * 40, recipe_digest: str = "r" * 64
) -> None:
    digest = hashlib.sha256(deb.read_bytes()).hexdigest()
    stmt = statement(
        subjects=[(deb.name, digest)], recipe={"name": "demo"}, recipe_digest=recipe_digest,
        source_url="dsc:demo=1.0-1", commit=commit, tree="t" * 40, environment="e" * 64, dependencies=[],
        builder_id="test", build_key=build_key, started="2023-11-14T22:13:20Z", finished="2023-11-14T22:13:21Z",
    )  # fmt: skip
    (deb.parent / f"{deb.name}.intoto.json").write_text(json.dumps(sign(stmt, key)))


def test_farm_debs_are_verified_and_a_tampered_one_stops_the_build(tmp_path: Path) -> None:
    require("dpkg-deb")
    key = generate(tmp_path / "keys")
    deb = _deb(tmp_path, "demo")
    _sign(deb, key)
    got = inputs.verify_local([deb], [key.public])
    assert got["demo"].origin == inputs.FARM and got["demo"].commit == "c" * 40 and got["demo"].version == "1.0-1"
    assert got["demo"].statement["subject"][0]["name"] == deb.name
    # signed by a key we do not trust
    with pytest.raises(FarmError) as exc:
        inputs.verify_local([deb], [generate(tmp_path / "other").public])
    assert exc.value.code == "E-VERIFY-UNTRUSTED-KEY"
    # one flipped byte
    data = bytearray(deb.read_bytes())
    data[-10] ^= 1
    deb.write_bytes(bytes(data))
    with pytest.raises(FarmError) as exc:
        inputs.verify_local([deb], [key.public])
    assert exc.value.code == "E-VERIFY-DIGEST"
    # no provenance at all
    unsigned = _deb(tmp_path / "u", "plain")
    with pytest.raises(FarmError) as exc:
        inputs.verify_local([unsigned], [key.public])
    assert exc.value.code == "E-VERIFY-NO-ENVELOPE"


def test_trace_follows_a_file_to_its_commit_and_refuses_a_mismatched_manifest(tmp_path: Path) -> None:
    from farm.image import payload, trace
    from farm.image.assemble import MANIFEST_DIR

    require("dpkg-deb")
    key = generate(tmp_path / "keys")
    deb = _deb(tmp_path, "demo")
    _sign(deb, key)
    root = tmp_path / "root"
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(root)], check=True)
    info = root / "var/lib/dpkg/info"
    info.mkdir(parents=True)
    (info / "demo.list").write_text("/.\n/usr\n/usr/bin\n/usr/bin/demo\n")
    md5 = hashlib.md5((root / "usr/bin/demo").read_bytes()).hexdigest()
    (info / "demo.md5sums").write_text(f"{md5}  usr/bin/demo\n")
    sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    entry = {"name": "demo", "version": "1.0-1", "arch": "amd64", "sha256": sha, "origin": "farm", "file": deb.name}
    (root / MANIFEST_DIR / "provenance").mkdir(parents=True)
    (root / MANIFEST_DIR / "manifest.json").write_text(json.dumps({"packages": [entry]}))
    shutil.copy(deb.parent / f"{deb.name}.intoto.json", root / MANIFEST_DIR / "provenance")

    got = trace.trace_tree(root, "/usr/bin/demo", [key.public])
    assert got["commit"] == "c" * 40 and got["signature"] == "verified" and got["file_matches_package"] is True
    payload.move_var_to_factory(root)  # as assembly does: dpkg's state moves to usr/share/factory/var, /var is empty
    assert not any((root / "var").iterdir())
    assert trace.trace_tree(root, "/usr/bin/demo", [key.public]) == got
    (root / "usr/bin/demo").write_text("changed\n")
    assert trace.trace_tree(root, "usr/bin/demo", [key.public])["file_matches_package"] is False
    with pytest.raises(FarmError) as exc:
        trace.trace_tree(root, "/usr/bin/other", [key.public])
    assert exc.value.code == "E-IMAGE-TRACE"
    entry["sha256"] = "0" * 64  # the manifest names other bytes than the farm signed
    (root / MANIFEST_DIR / "manifest.json").write_text(json.dumps({"packages": [entry]}))
    with pytest.raises(FarmError) as exc:
        trace.trace_tree(root, "/usr/bin/demo", [key.public])
    assert exc.value.code == "E-IMAGE-TRACE" and "signed provenance" in exc.value.message
    with pytest.raises(FarmError) as exc:
        trace.trace_tree(root, "/usr/bin/demo", [generate(tmp_path / "other").public])
    assert exc.value.code == "E-VERIFY-UNTRUSTED-KEY"


class DemoStore:
    """A store of signed builds of one .deb of recipe ``demo``, which recipes/demo.toml pins at commit d*40."""

    def __init__(self, tmp_path: Path) -> None:
        from farm.store import open_store

        require("dpkg-deb")
        self.tmp = tmp_path
        self.key = generate(tmp_path / "keys")
        self.store = open_store(f"file://{tmp_path / 'store'}")
        self.commit = "d" * 40
        self.recipes = tmp_path / "recipes"
        self.digest = write_debian_recipe(self.recipes, "demo", self.commit)

    def build(self, build_key: str, *, finished: str, recipe_digest: str, signed_commit: str = "", signed: str = "",
              content: str = "#!/bin/sh\n") -> str:  # fmt: skip
        """Store a build of demo at the pinned commit whose index entry names ``recipe_digest``; its provenance
        names ``signed_commit`` and ``signed`` (a recipe digest) when given, else the same. Returns the .deb's
        sha256."""
        from farm.store import BuildRecord

        deb = _deb(self.tmp / build_key[:8], "demo", content)
        _sign(deb, self.key, build_key, commit=signed_commit or self.commit, recipe_digest=signed or recipe_digest)
        artifact = self.store.put_file(deb)
        envelope = self.store.put_bytes((deb.parent / f"{deb.name}.intoto.json").read_bytes())
        record = BuildRecord(
            build_key=build_key, recipe="demo", version="1.0-1", recipe_digest=recipe_digest,
            source_url="dsc:demo=1.0-1", commit=self.commit, tree="t" * 40, environment="e" * 64,
            artifacts=(artifact,), provenance=envelope, log=self.store.put_bytes(b"log"), builder="test",
            started="2023-11-14T22:13:20Z", finished=finished,
        )  # fmt: skip
        assert self.store.put_record(record)
        return artifact.digest

    def farm_debs(self) -> dict[str, inputs.Package]:
        return inputs.farm_debs(self.store, self.recipes, [self.key.public], self.tmp / "work")


def test_farm_debs_refuse_a_record_the_index_lists_under_another_commit(tmp_path: Path) -> None:
    """A trusted build of other inputs, indexed as if it were this recipe's pinned commit, is not admitted."""
    demo = DemoStore(tmp_path)
    demo.build("b" * 64, finished="2023-11-14T22:13:21Z", recipe_digest=demo.digest, signed_commit="c" * 40)
    with pytest.raises(FarmError) as exc:
        demo.farm_debs()
    assert exc.value.code == "E-ARTIFACT-REFUSED" and "index" in exc.value.message


def test_farm_debs_take_the_build_of_the_recipe_as_written(tmp_path: Path) -> None:
    """A newer build of the same recipe and commit under another definition (a ``rebuild --stage 1`` variant,
    other trims) is not this recipe's: the image takes the build whose recipe digest is the recipe's, and the
    coverage counts only that one. An index entry that claims the recipe's digest for a build signed under
    another is refused."""
    from farm.image import coverage

    demo = DemoStore(tmp_path)
    ours = demo.build("a" * 64, finished="2023-11-14T22:13:21Z", recipe_digest=demo.digest)
    demo.build("f" * 64, finished="2023-11-15T00:00:00Z", recipe_digest="v" * 64, content="#!/bin/sh\n# stage 1\n")
    got = demo.farm_debs()
    assert got["demo"].sha256 == ours and got["demo"].build_key == "a" * 64
    assert coverage.built_recipes(demo.store, {"demo": demo.commit}, {"demo": demo.digest}) == {"demo"}
    assert coverage.built_recipes(demo.store, {"demo": demo.commit}, {"demo": "0" * 64}) == set()

    # only the variant: no build of the recipe as written, so its packages come from the archive
    variant = DemoStore(tmp_path / "variant")
    variant.build("f" * 64, finished="2023-11-15T00:00:00Z", recipe_digest="v" * 64)
    assert variant.farm_debs() == {}

    # the index says "the recipe as written", the signed provenance says another recipe
    lying = DemoStore(tmp_path / "lying")
    lying.build("e" * 64, finished="2023-11-15T00:00:00Z", recipe_digest=lying.digest, signed="v" * 64)
    with pytest.raises(FarmError) as exc:
        lying.farm_debs()
    assert exc.value.code == "E-ARTIFACT-REFUSED" and "recipe digest" in exc.value.message
