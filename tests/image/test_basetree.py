"""The stored package trees (:mod:`farm.image.basetree`) and the overlay builds write on them
(:mod:`farm.image.overlay`): which changes are plain enough to apply to a stored tree, which stored tree a build
starts from, and mounts that never outlive their build. Real .debs made with dpkg-deb, real overlay mounts (as root).
The byte-identity of a tree made from a stored one and a fresh one is tests/image/test_cache.py's."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from farm.image import basetree, overlay, rootfs
from farm.image.packages import ARCHIVE, Inputs, Package
from farm.run import run
from tests.lib.tools import IN_CI, require

SDE = 1700000000


def make_deb(
    tmp: Path,
    name: str,
    version: str = "1",
    *,
    files: Sequence[str] = ("usr/share/doc/NAME/README",),
    scripts: Sequence[str] = (),
    fields: dict[str, str] | None = None,
) -> Path:
    require("dpkg-deb")
    root = tmp / f"{name}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    control = {"Package": name, "Version": version, "Architecture": "all", "Maintainer": "t <t@example.org>"}
    control |= (fields or {}) | {"Description": "test package"}
    (root / "DEBIAN/control").write_text("".join(f"{k}: {v}\n" for k, v in control.items()))
    for script in scripts:
        path = root / "DEBIAN" / script
        path.write_text("#!/bin/sh\nexit 0\n" if script != "triggers" else "activate-noawait ldconfig\n")
        path.chmod(0o755)
    for rel in files:
        path = root / rel.replace("NAME", name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name} {version}\n")
    deb = tmp / f"{name}_{version}_all.deb"
    run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)])
    return deb


def package(deb: Path, name: str, version: str = "1") -> Package:
    return Package(name, version, "all", hashlib.sha256(deb.read_bytes()).hexdigest(), ARCHIVE, deb)


@pytest.mark.unit
def test_relation_fields_name_their_packages() -> None:
    value = "a (>= 1.0) | b:any, c [amd64], d<< , e:amd64 (= 2)"
    assert basetree.relation_names(value) == {"a", "b", "c", "d", "e"}
    assert basetree.relation_names("") == set()


@pytest.mark.integration
def test_a_plain_package_is_plain_and_every_rule_says_why_another_is_not(tmp_path: Path) -> None:
    others, interests = {"hello", "other"}, ["/usr/share/debianutils/shells.d"]

    def why(deb: Path, name: str = "hello") -> str | None:
        return basetree.not_plain(name, basetree.deb_facts(deb), others=others, interests=interests)

    assert why(make_deb(tmp_path / "plain", "hello", fields={"Replaces": "hello-traditional"})) is None
    assert why(make_deb(tmp_path / "s", "hello", scripts=("postinst", "prerm"))) == "hello has postinst, prerm"
    assert why(make_deb(tmp_path / "t", "hello", scripts=("triggers",))) == "hello has triggers"
    assert why(make_deb(tmp_path / "e", "hello", fields={"Essential": "yes"})) == "hello is Essential"
    replaces = make_deb(tmp_path / "r", "hello", fields={"Replaces": "other (<< 2), hello"})
    assert why(replaces) == "hello Replaces other"  # a package of the set: whose file wins depends on order
    shell = make_deb(tmp_path / "w", "hello", files=("usr/share/debianutils/shells.d/hello",))
    assert why(shell) == "hello ships /usr/share/debianutils/shells.d, which a file trigger watches"


def stored(tmp: Path, key: str, packages: dict[str, Package], requested: Sequence[str], *, sde: int = SDE) -> Path:
    """A stored tree whose dpkg database holds ``packages`` (no files besides: what check() reads)."""
    directory = tmp / "trees" / key
    info = directory / "tree" / basetree.DPKG / "info"
    info.mkdir(parents=True)
    status = "".join(
        f"Package: {p.name}\nStatus: install ok installed\nVersion: {p.version}\nArchitecture: all\n\n"
        for p in packages.values()
    )
    (info.parent / "status").write_text(status)
    for p in packages.values():
        (info / f"{p.name}.list").write_text(f"/usr/share/doc/{p.name}\n")
    got = Inputs(tuple(packages.values()), tuple(requested))
    doc = basetree.meta_doc(got, key, sde)
    (directory / "meta.json").write_text(json.dumps(doc))
    return directory


@pytest.mark.integration
def test_which_differences_a_stored_tree_takes(tmp_path: Path) -> None:
    debs = tmp_path / "debs"
    old = {n: package(make_deb(debs, n, "1"), n) for n in ("hello", "libx", "liby")}
    base = basetree.load(stored(tmp_path, "k" * 64, old, ["hello", "liby"]))
    assert base is not None and base.requested == {"hello", "liby"}
    new_hello = package(make_deb(debs, "hello", "2"), "hello", "2")

    def check(packages: Sequence[Package], requested: Sequence[str]) -> str | None:
        got = Inputs(tuple(packages), tuple(requested))
        assert base is not None
        return basetree.check(basetree.delta(got, base), got)

    assert check([new_hello, old["libx"], old["liby"]], ["hello", "liby"]) is None  # hello upgraded
    assert check([new_hello, old["libx"]], ["hello"]) is None  # liby (requested) purged
    assert check([new_hello, old["liby"]], ["hello", "liby"]) == "libx was installed as a dependency"
    assert check([new_hello, old["libx"], old["liby"]], ["hello/bookworm", "libx", "liby"]) == (
        "libx is requested in one set and not in the other"  # apt's auto-installed marks would differ
    )
    added = package(make_deb(debs, "libz"), "libz")
    assert check([*old.values(), added], ["hello", "liby"]) == "libz comes in as a dependency"
    assert check([*old.values(), added], ["hello", "liby", "libz"]) is None
    (base.tree / basetree.DPKG / "info" / "libx.postinst").write_text("#!/bin/sh\n")
    upgraded = package(make_deb(debs, "libx", "2"), "libx", "2")
    assert check([old["hello"], upgraded, old["liby"]], ["hello", "liby"]) == "libx has postinst"  # the old one
    many = [package(make_deb(debs, f"p{i}"), f"p{i}") for i in range(basetree.MAX_DELTA)]
    assert check([*old.values(), *many], ["hello", "liby", *(p.name for p in many)]) is None  # at most
    extra = package(make_deb(debs, "q"), "q")
    assert check([*old.values(), *many, extra], ["hello", "liby", "q", *(p.name for p in many)]) == (
        f"{basetree.MAX_DELTA + 1} packages differ (more than {basetree.MAX_DELTA})"
    )


@pytest.mark.integration
def test_a_build_starts_from_its_own_tree_or_the_nearest_that_takes_the_change(tmp_path: Path) -> None:
    debs, trees = tmp_path / "debs", tmp_path / "trees"
    one = {n: package(make_deb(debs, n, "1"), n) for n in ("hello", "libx")}
    two = dict(one, hello=package(make_deb(debs, "hello", "2"), "hello", "2"))
    got_one, got_two = Inputs(tuple(one.values()), ("hello",)), Inputs(tuple(two.values()), ("hello",))
    key_one, key_two = basetree.tree_key(got_one, SDE), basetree.tree_key(got_two, SDE)
    stored(tmp_path, key_one, one, ["hello"])
    base, d, why = basetree.choose(got_one, SDE, key_one, trees)
    assert base is not None and base.key == key_one and d is None and why == ""
    base, d, why = basetree.choose(got_two, SDE, key_two, trees)
    assert base is not None and base.key == key_one and d is not None and d.describe() == "hello 2"
    assert basetree.choose(got_two, SDE + 1, basetree.tree_key(got_two, SDE + 1), trees) == (
        None, None, "no stored tree"  # another SOURCE_DATE_EPOCH: other dates inside (/etc/shadow)
    )  # fmt: skip
    (trees / key_one / "tree" / basetree.DPKG / "info" / "hello.prerm").write_text("#!/bin/sh\n")
    assert basetree.choose(got_two, SDE, key_two, trees) == (
        None, None, "the nearest stored tree differs by hello 2: hello has prerm"
    )  # fmt: skip
    (trees / key_one / "meta.json").write_text(json.dumps({"key": key_two}))  # unreadable, or another key's
    assert basetree.stored_trees(trees) == []


@pytest.mark.integration
def test_prune_keeps_the_most_recently_used_trees_and_drops_half_made_ones(tmp_path: Path) -> None:
    debs, trees = tmp_path / "debs", tmp_path / "trees"
    keys = []
    for i in range(4):
        pkgs = {"hello": package(make_deb(debs / str(i), "hello", str(i)), "hello", str(i))}
        key = basetree.tree_key(Inputs(tuple(pkgs.values()), ("hello",)), SDE)
        os.utime(stored(tmp_path, key, pkgs, ["hello"]) / "meta.json", (1000 + i, 1000 + i))
        keys.append(key)
    (trees / ".tmp-abc-1" / "tree").mkdir(parents=True)
    gone = basetree.prune(trees, keep=2)
    assert sorted(p.name for p in gone) == sorted([".tmp-abc-1", keys[0], keys[1]])
    assert [s.key for s in basetree.stored_trees(trees)] == [keys[3], keys[2]]


@pytest.mark.unit
def test_normalize_drops_the_order_dependent_files_and_sorts_the_auto_installed_marks(tmp_path: Path) -> None:
    for rel in rootfs.ORDER_DEPENDENT:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x\n")
    states = tmp_path / rootfs.EXTENDED_STATES
    states.parent.mkdir(parents=True, exist_ok=True)
    marks = [f"Package: {n}\nArchitecture: amd64\nAuto-Installed: 1\n" for n in ("zlib1g", "libc6", "libffi8")]
    states.write_text("\n".join(marks) + "\n")
    rootfs.normalize(tmp_path)
    assert not [rel for rel in rootfs.ORDER_DEPENDENT if (tmp_path / rel).exists()]
    assert states.read_text() == "\n".join(sorted(marks)) + "\n"
    rootfs.normalize(tmp_path)
    assert states.read_text() == "\n".join(sorted(marks)) + "\n"


@pytest.mark.unit
def test_mounts_under_a_dir_are_found_deepest_first_and_siblings_are_not() -> None:
    info = "\n".join(
        f"{i} 1 0:{i} / {point} rw - tmpfs tmpfs rw"
        for i, point in enumerate(
            ["/", "/w/image/layer/merged", "/w/image/layer/merged/proc", "/w/image2", "/w/image/a\\040b"]
        )
    )
    found = overlay.mounts_under(Path("/w/image"), info)
    assert found == [Path("/w/image/layer/merged/proc"), Path("/w/image/layer/merged"), Path("/w/image/a b")]


def _need_root() -> None:
    require("mount")
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root: overlay mounts are tested as root")
        pytest.skip("overlay mounts need root")


@pytest.mark.integration
def test_an_overlay_never_writes_its_lower_tree_and_never_outlives_its_block(tmp_path: Path) -> None:
    _need_root()
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc/hostname").write_text("stored\n")
    with overlay.overlay(lower, tmp_path / "layer") as merged:
        assert (merged / "etc/hostname").read_text() == "stored\n"
        (merged / "etc/hostname").write_text("mangos\n")
        (merged / "etc/new").write_text("new\n")
        assert overlay.mounts_under(tmp_path, Path("/proc/self/mountinfo").read_text()) == [merged]
    assert (lower / "etc/hostname").read_text() == "stored\n" and not (lower / "etc/new").exists()
    assert (tmp_path / "layer/upper/etc/hostname").read_text() == "mangos\n"
    assert overlay.mounts_under(tmp_path, Path("/proc/self/mountinfo").read_text()) == []
    with pytest.raises(RuntimeError), overlay.overlay(lower, tmp_path / "layer2"):
        raise RuntimeError("a stage failed")
    assert overlay.mounts_under(tmp_path, Path("/proc/self/mountinfo").read_text()) == []


@pytest.mark.integration
def test_a_mount_left_by_a_killed_build_is_cleared(tmp_path: Path) -> None:
    _need_root()
    (tmp_path / "image/root/proc").mkdir(parents=True)
    run(["mount", "-t", "tmpfs", "tmpfs", str(tmp_path / "image/root/proc")])
    assert overlay.unmount_under(tmp_path / "image") == [tmp_path / "image/root/proc"]
    assert overlay.mounts_under(tmp_path, Path("/proc/self/mountinfo").read_text()) == []
