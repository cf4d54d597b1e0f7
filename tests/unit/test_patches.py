"""A recipe's patches: found beside the recipe (or in a parent directory), pinned by sha256 in the recipe's content
and build key only when there are some, applied in order with every mtime reset, refused with E-RECIPE-PATCH
naming the file and the failing hunk."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from farm.errors import E, ErrorGroup, FarmError
from farm.identity import build_key
from farm.recipes import Patch, Recipe, Source, load_file
from farm.recipes.patches import apply, locate, read_local, why_not
from tests.lib.git import make_repo

pytestmark = pytest.mark.unit

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RECIPE = f"""name = "hello"
version = "1.0"
outputs = ["bin/hello"]
{{patches}}
[source]
git = "https://example.com/hello.git"
commit = "{COMMIT}"

[build]
steps = ["make"]
"""
FIX = """Description: Greet the world politely
 A DEP-3 header: git apply reads only the diff below it.
Author: A Packager <packager@example.com>
Forwarded: no
---
--- a/hello.c
+++ b/hello.c
@@ -1,3 +1,3 @@
 #include <stdio.h>
-int main(void){puts("hi");return 0;}
+int main(void){puts("hello");return 0;}
 /* end */
"""
ADD = """--- /dev/null
+++ b/NEWS
@@ -0,0 +1 @@
+patched
"""
SOURCE = {"hello.c": '#include <stdio.h>\nint main(void){puts("hi");return 0;}\n/* end */\n'}


def recipe_file(directory: Path, patches: list[str] | None, **files: str) -> Path:
    """``directory/recipes/hello.toml`` with ``patches`` (None: no field), and ``files`` (path -> text) written
    relative to ``directory``."""
    for rel, text in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(text)
    field = "" if patches is None else "patches = [" + ", ".join(f'"{p}"' for p in patches) + "]\n"
    path = directory / "recipes" / "hello.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECIPE.replace("{patches}", field))
    return path


def error(path: Path) -> FarmError:
    with pytest.raises(ErrorGroup) as info:
        load_file(path)
    assert len(info.value.errors) == 1, info.value.render()
    return info.value.errors[0]


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- the field ---------------------------------------------------------------------------------------------------
def test_a_recipe_without_patches_keeps_its_content_and_key(tmp_path: Path) -> None:
    recipe = load_file(recipe_file(tmp_path, None))
    assert recipe.patches == ()
    assert "patches" not in recipe.content()
    empty = load_file(recipe_file(tmp_path / "empty", []))
    assert empty.content() == recipe.content()


def test_patches_are_pinned_by_path_and_sha256_in_order(tmp_path: Path) -> None:
    files = {"patches/a.patch": FIX, "patches/b.patch": ADD}
    path = recipe_file(tmp_path, ["patches/a.patch", "patches/b.patch"], **files)
    recipe = load_file(path)
    assert recipe.patches == (Patch("patches/a.patch", sha(FIX)), Patch("patches/b.patch", sha(ADD)))
    assert recipe.content()["patches"] == [
        {"file": "patches/a.patch", "sha256": sha(FIX)},
        {"file": "patches/b.patch", "sha256": sha(ADD)},
    ]


def test_the_build_key_changes_with_a_patch_its_bytes_and_the_order(tmp_path: Path) -> None:
    def key(patches: list[str] | None, fix: str = FIX) -> str:
        d = tmp_path / str(len(list(tmp_path.iterdir())))
        r = load_file(recipe_file(d, patches, **{"patches/a.patch": fix, "patches/b.patch": ADD}))
        return build_key(r.content(), COMMIT, "7" * 40, "e" * 64, {})

    keys = [
        key(None),
        key(["patches/a.patch"]),
        key(["patches/a.patch"], fix=FIX.replace("hello", "HELLO")),
        key(["patches/a.patch", "patches/b.patch"]),
        key(["patches/b.patch", "patches/a.patch"]),
    ]
    assert len(set(keys)) == len(keys)
    assert key(None) == key([])


def test_paths_resolve_from_the_recipe_directory_then_its_parents(tmp_path: Path) -> None:
    top = tmp_path / "repo"
    path = recipe_file(top, ["patches/hello/fix.patch"], **{"patches/hello/fix.patch": FIX})
    assert locate(path, "patches/hello/fix.patch") == top / "patches/hello/fix.patch"
    (top / "recipes/patches/hello").mkdir(parents=True)
    (top / "recipes/patches/hello/fix.patch").write_text(ADD)  # the nearest wins
    assert locate(path, "patches/hello/fix.patch") == top / "recipes/patches/hello/fix.patch"
    assert load_file(path).patches[0].sha256 == sha(ADD)
    assert locate(path, "patches/nope.patch") is None


def test_a_missing_patch_file_names_the_file_and_the_field(tmp_path: Path) -> None:
    path = recipe_file(tmp_path, ["patches/hello/0001-missing.patch"])
    err = error(path)
    assert err.code == E.RECIPE_PATCH
    assert err.file == str(path) and err.field == "patches[0]"
    assert "patches/hello/0001-missing.patch" in err.message and "does not exist" in err.message
    assert "relative to the recipe's directory" in err.hint


@pytest.mark.parametrize(
    ("entry", "why"),
    [("/etc/fix.patch", "is absolute"), ("patches/", "names a directory"), ("a\\\\b.patch", "backslash")],
)
def test_unusable_paths_are_refused(tmp_path: Path, entry: str, why: str) -> None:
    err = error(recipe_file(tmp_path, [entry]))
    assert err.code == E.RECIPE_PATCH and err.field == "patches[0]" and why in err.message


def test_entries_must_be_paths_and_listed_once(tmp_path: Path) -> None:
    path = recipe_file(tmp_path, [], **{"fix.patch": FIX})
    path.write_text(path.read_text().replace("patches = []", 'patches = [{ file = "fix.patch", sha256 = "x" }]'))
    err = error(path)
    assert err.code == E.RECIPE_TYPE and err.field == "patches[0]"
    path.write_text(path.read_text().replace('[{ file = "fix.patch", sha256 = "x" }]', '["fix.patch", "fix.patch"]'))
    err = error(path)
    assert err.code == E.RECIPE_PATCH and "twice" in err.message


def test_content_round_trips_with_pinned_patches_that_need_no_file(tmp_path: Path) -> None:
    path = recipe_file(tmp_path, ["patches/a.patch"], **{"patches/a.patch": FIX})
    recipe = load_file(path)
    elsewhere = Recipe.from_content(recipe.content(), tmp_path / "nowhere" / "recipe.json")
    assert elsewhere.patches == recipe.patches
    assert elsewhere.content() == recipe.content()
    assert elsewhere.digest == recipe.digest


def test_a_pinned_patch_must_be_file_and_sha256(tmp_path: Path) -> None:
    recipe = Recipe("hello", "1.0", Source("https://example.com/h.git", COMMIT), ("make",), ("bin/hello",))
    content = recipe.content() | {"patches": [{"file": "a.patch", "sha256": "nothex"}]}
    with pytest.raises(ErrorGroup) as info:
        Recipe.from_content(content, tmp_path / "r.json")
    assert [e.code for e in info.value.errors] == [E.RECIPE_PATCH]


def test_read_local_refuses_a_patch_changed_since_planning(tmp_path: Path) -> None:
    path = recipe_file(tmp_path, ["fix.patch"], **{"fix.patch": FIX})
    patch = load_file(path).patches[0]
    assert read_local(patch, path) == FIX.encode()
    (tmp_path / "fix.patch").write_text(ADD)
    with pytest.raises(FarmError) as info:
        read_local(patch, path)
    assert info.value.code == E.RECIPE_PATCH and "was planned" in info.value.message
    assert read_local(Patch("gone.patch", sha(FIX)), path) is None


# -- applying ----------------------------------------------------------------------------------------------------
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name, text in SOURCE.items():
        (src / name).write_text(text)
    return src


def test_patches_apply_in_order_and_every_mtime_is_reset(tmp_path: Path) -> None:
    src = tree(tmp_path)
    patches = [(Patch("a.patch", sha(FIX)), FIX.encode()), (Patch("b.patch", sha(ADD)), ADD.encode())]
    apply(patches, src, mtime=1_700_000_000, recipe_path=tmp_path / "hello.toml")
    assert 'puts("hello")' in (src / "hello.c").read_text()
    assert (src / "NEWS").read_text() == "patched\n"
    assert {int(os.lstat(p).st_mtime) for p in [src, *src.rglob("*")]} == {1_700_000_000}
    assert sorted(p.name for p in src.iterdir()) == ["NEWS", "hello.c"]  # no .orig, no .rej


def test_a_tree_inside_a_git_work_tree_is_patched_as_a_plain_directory(tmp_path: Path) -> None:
    make_repo(tmp_path / "outer", {"README": "outer\n"})
    src = tree(tmp_path / "outer")
    apply([(Patch("a.patch", sha(FIX)), FIX.encode())], src, mtime=0, recipe_path=tmp_path / "r.toml")
    assert 'puts("hello")' in (src / "hello.c").read_text()


def test_a_patch_that_does_not_apply_names_the_patch_and_the_hunk(tmp_path: Path) -> None:
    src = tree(tmp_path)
    (src / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("bye");return 0;}\n/* end */\n')
    (src / "hello.c").touch()
    patches = [(Patch("b.patch", sha(ADD)), ADD.encode()), (Patch("patches/a.patch", sha(FIX)), FIX.encode())]
    with pytest.raises(FarmError) as info:
        apply(patches, src, mtime=0, recipe_path=tmp_path / "hello.toml")
    err = info.value
    assert err.code == E.RECIPE_PATCH and err.field == "patches[1]" and err.file == str(tmp_path / "hello.toml")
    assert "patch patches/a.patch does not apply" in err.message
    assert "hunk #1 (@@ -1,3 +1,3 @@) of hello.c" in err.message
    assert "refresh the patch" in err.hint
    assert "bye" in (src / "hello.c").read_text(), "a patch applies whole or not at all"


def test_why_not_names_the_hunk_git_apply_refused() -> None:
    patch = Patch("p", "0" * 64)
    two = FIX + "@@ -9,2 +9,2 @@\n-x\n+y\n z\n"
    assert why_not(patch, two.encode(), "error: patch failed: hello.c:9\n") == (
        "hunk #2 (@@ -9,2 +9,2 @@) of hello.c does not apply"
    )
    assert why_not(patch, two.encode(), "error: patch failed: other.c:3\n") == (
        "the hunk at line 3 of other.c does not apply"
    )
    assert why_not(patch, b"", "error: gone.c: No such file or directory\n") == "gone.c: No such file or directory"


# -- trace -------------------------------------------------------------------------------------------------------
def test_trace_shows_the_patches_of_a_farm_build(tmp_path: Path) -> None:
    from farm.image import trace
    from farm.image.assemble import MANIFEST_DIR
    from farm.trust.keys import generate
    from farm.trust.provenance import sign, statement
    from farm.trust.verify import ENVELOPE_SUFFIX

    key = generate(tmp_path / "keys")
    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/info/hello.list").write_text("/usr/bin/hello\n")
    deb, sha256 = "hello_2.10-3_amd64.deb", "d" * 64
    entry = {"name": "hello", "version": "2.10-3", "arch": "amd64", "sha256": sha256, "origin": "farm", "file": deb}
    (root / MANIFEST_DIR / "provenance").mkdir(parents=True)
    (root / MANIFEST_DIR / "manifest.json").write_text(json.dumps({"packages": [entry]}))

    def traced(patches: list[Patch]) -> dict[str, object]:
        recipe = Recipe(
            "hello", "2.10-3", Source("", COMMIT, dsc="hello=2.10-3"), (), ("*.deb",), patches=tuple(patches)
        )
        stmt = statement(
            subjects=[(deb, sha256)], recipe=recipe.content(), recipe_digest=recipe.digest, source_url="dsc:hello",
            commit=COMMIT, tree="0" * 40, environment="e" * 64, dependencies=[], builder_id="test", build_key="k",
            started="", finished="",
        )  # fmt: skip
        (root / MANIFEST_DIR / "provenance" / (deb + ENVELOPE_SUFFIX)).write_text(json.dumps(sign(stmt, key)))
        return trace.trace_tree(root, "/usr/bin/hello", [key.public])

    assert "patches" not in traced([])
    fix = Patch("patches/hello/0001-fix.patch", "a" * 64)
    assert traced([fix])["patches"] == [{"name": "patches/hello/0001-fix.patch", "sha256": "a" * 64}]
