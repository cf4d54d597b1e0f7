"""The hot path of a fully cached rebuild, made cheaper without changing what it does: recipe files listed as
``rglob`` lists them, records read whole and refused when malformed, JSON encoded as ``json.dumps`` encodes it,
the critical path from a known order, repository locations resolved as before."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from farm import graph
from farm.errors import StoreError
from farm.identity import canonical_json, json_encoder
from farm.recipes.load import SEPARATE_SET, recipe_files
from farm.recipes.model import Recipe, Source
from farm.store.base import Artifact, BuildRecord
from farm.store.local import RECORD_READ, LocalStore

pytestmark = pytest.mark.unit


# -- recipe files ------------------------------------------------------------------------------------------------
def rglob_files(directory: Path) -> list[Path]:
    """What recipe_files returned when it was written with rglob (the reference)."""
    separate = [d.parent for d in directory.rglob(SEPARATE_SET) if d.parent != directory]
    return sorted(p for p in directory.rglob("*.toml") if not any(s in p.parents for s in separate))


def make_tree(root: Path) -> Path:
    d = root / "recipes"
    for rel in (
        "a.toml",
        "a/b.toml",  # sorts before a.toml as a path (parts), after it as a string
        "a/deep/er/c.toml",
        "a-b.toml",
        ".hidden.toml",
        "notes.txt",
        "own/x.toml",  # a separate set: left out, with everything below it
        "own/sub/y.toml",
        "sub/.recipe-set/z.toml",  # a directory named like the marker makes 'sub' a separate set too, as for rglob
        "k/kernel.toml",
    ):
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    (d / "own" / SEPARATE_SET).write_text("")
    (d / SEPARATE_SET).write_text("")  # the top directory's own marker is ignored
    (d / "dir.toml").mkdir()  # a directory so named is listed, as rglob lists it
    (d / "dir.toml" / "in.toml").write_text("")
    outside = root / "outside"
    outside.mkdir()
    (outside / "o.toml").write_text("")
    (d / "linked").symlink_to(outside)  # not followed
    (d / "link.toml").symlink_to(outside / "o.toml")  # listed (a name that matches)
    return d


def test_recipe_files_are_what_rglob_finds_in_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = make_tree(tmp_path)
    found = recipe_files(d)
    assert found == rglob_files(d)
    assert [str(p.relative_to(d)) for p in found][:4] == [".hidden.toml", "a/b.toml", "a/deep/er/c.toml", "a-b.toml"]
    assert not any("own" in p.parts or "linked" in p.parts for p in found)
    monkeypatch.chdir(d)
    assert recipe_files(Path(".")) == rglob_files(Path(".")) and str(recipe_files(Path("."))[0]) == ".hidden.toml"
    monkeypatch.chdir(tmp_path)
    assert recipe_files(Path("recipes/")) == rglob_files(Path("recipes"))


# -- records -----------------------------------------------------------------------------------------------------
def record(**changes: Any) -> BuildRecord:
    values: dict[str, Any] = {
        "build_key": "b" * 64,
        "recipe": "hello",
        "version": "1.0",
        "recipe_digest": "d" * 64,
        "source_url": "https://example.org/hello.git",
        "commit": "c" * 40,
        "tree": "t" * 40,
        "environment": "e" * 64,
        "artifacts": (Artifact("hello.tar", "a" * 64, 10240), Artifact("run", "f" * 64, 7, executable=True)),
        "provenance": "1" * 64,
        "log": "2" * 64,
        "builder": "farm@test",
        "started": "2026-01-01T00:00:00Z",
        "finished": "2026-01-01T00:00:01Z",
        "key_inputs": {"recipe": {"name": "hello"}},
    }
    return BuildRecord(**(values | changes))


def test_a_record_read_back_is_the_record_written() -> None:
    rec = record()
    back = BuildRecord.from_json(json.loads(rec.to_bytes()))
    assert back == rec and vars(back) == vars(rec) and back.to_bytes() == rec.to_bytes()
    assert isinstance(back.artifacts, tuple) and back.artifacts[1].executable is True
    data = rec.to_json()
    del data["key_inputs"]
    data["artifacts"] = [{"name": "x", "digest": "a" * 64, "size": 1}]  # fields at their default may be absent
    back = BuildRecord.from_json(data)
    assert back.key_inputs == {} and back.artifacts == (Artifact("x", "a" * 64, 1, False),)
    assert vars(back.artifacts[0]) == vars(Artifact("x", "a" * 64, 1)), "as the constructor makes it"
    back.key_inputs["mutable"] = True
    assert BuildRecord.from_json(data).key_inputs == {}, "each record has its own default"


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("builder"),
        lambda d: d.update(extra=1),
        lambda d: d["artifacts"][0].pop("size"),
        lambda d: d["artifacts"][0].update(mode=420),
    ],
    ids=["missing field", "unknown field", "artifact missing field", "artifact unknown field"],
)
def test_a_record_with_a_field_missing_or_unknown_is_refused(change: Any, tmp_path: Path) -> None:
    data = record().to_json()
    change(data)
    with pytest.raises(TypeError):
        BuildRecord.from_json(data)
    store = LocalStore(tmp_path / "store")
    (tmp_path / "store" / "records" / f"{'b' * 64}.json").write_text(json.dumps(data))
    with pytest.raises(StoreError) as err:
        store.get_record("b" * 64)
    assert err.value.code == "E-STORE-CORRUPT"


def test_a_record_is_read_whole_with_the_digest_of_its_bytes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    big = record(key_inputs={"recipe": {"steps": ["x" * 100] * (3 * RECORD_READ // 100)}})
    raw = big.to_bytes()
    assert len(raw) > 2 * RECORD_READ
    (tmp_path / "store" / "records" / f"{'b' * 64}.json").write_bytes(raw)
    got = store.get_record("b" * 64)
    assert got == big and got.stored_sha256 == hashlib.sha256(raw).hexdigest()
    assert store.get_record("c" * 64) is None
    with pytest.raises(StoreError):
        store.get_record("../" + "b" * 61)


# -- JSON --------------------------------------------------------------------------------------------------------
VALUES: list[Any] = [
    {"b": 1, "a": [1, 2.5, None, True, False], "c": {"z": 'ü€\n"\\', "y": []}},
    ["x", {"k": -0.0, "j": 1e300, "i": 10**30}],
    "plain",
    "ünïcödé \u2028",
    3,
    None,
    {"": {"nested": {"deeper": ["\x00", "\ud83d\ude00"]}}},
]


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"sort_keys": True},
        {"sort_keys": True, "separators": (",", ":")},
        {"separators": (",", ":")},
        {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False},
    ],
)
def test_json_encoder_writes_what_json_dumps_writes(value: Any, options: dict[str, Any]) -> None:
    assert json_encoder(**options)(value) == json.dumps(value, **options)


def test_canonical_json_is_unchanged() -> None:
    value = {"b": [1, "ü"], "a": {"y": None, "x": True}}
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert canonical_json(value) == expected


# -- graph and recipes -------------------------------------------------------------------------------------------
def test_critical_path_from_a_known_order_is_the_same() -> None:
    g = {"app": ["util", "lib"], "util": ["lib"], "lib": ["base"], "base": [], "tool": []}
    order = graph.topological_order(g)
    assert graph.critical_path_lengths(g, order=order) == graph.critical_path_lengths(g)
    assert graph.critical_path_lengths(g, order=order)["base"] == 4.0


def test_git_location_resolves_against_the_recipe_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo").mkdir()
    (tmp_path / "recipes").mkdir()
    src = Source(git="../repo", commit="c" * 40)
    at = Recipe("a", "1", src, (), ("o",), path=tmp_path / "recipes" / "a.toml")
    assert at.git_location == str((tmp_path / "repo").resolve())
    monkeypatch.chdir(tmp_path / "recipes")
    here = Recipe("a", "1", src, (), ("o",), path=Path("a.toml"))
    assert here.git_location == str((tmp_path / "repo").resolve())
    url = Recipe("a", "1", Source(git="https://example.org/x.git", commit="c" * 40), (), ("o",))
    assert url.git_location == "https://example.org/x.git"
