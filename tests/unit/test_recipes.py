"""Recipes: strict loading, one precise error per mistake, and a content digest that ignores formatting."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farm.errors import E, ErrorGroup, FarmError
from farm.recipes import RESERVED_ENV, Recipe, Source, load_dir, load_file, parse

pytestmark = pytest.mark.unit

COMMIT = "0123456789abcdef0123456789abcdef01234567"

VALID: dict[str, Any] = {
    "name": "hello",
    "version": "1.0",
    "description": "a greeting",
    "outputs": ["bin/hello", "share/"],
    "source": {"git": "https://example.com/hello.git", "commit": COMMIT, "ref": "v1.0"},
    "build": {"steps": ["make", 'make install DESTDIR="$OUT"'], "env": {"CFLAGS": "-O2", "AR": "ar"}},
}


# -- helpers ---------------------------------------------------------------------------------------------------
def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def dump_toml(data: dict[str, Any]) -> str:
    """Top-level keys first, then one [table] per dict-valued key (nested dicts inline)."""
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for key, table in data.items():
        if isinstance(table, dict):
            lines += ["", f"[{json.dumps(key)}]"]
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def valid(**changes: Any) -> dict[str, Any]:
    """A deep copy of VALID; ``source__git=...`` sets a nested key, a value of ``...`` deletes the key."""
    data = copy.deepcopy(VALID)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for p in parents:
            target = target[p]
        if value is ...:
            del target[key]
        else:
            target[key] = value
    return data


WriteRecipe = Callable[..., Path]


@pytest.fixture
def write(tmp_path: Path) -> WriteRecipe:
    def _write(data: dict[str, Any] | str, name: str = "hello.toml", directory: Path | None = None) -> Path:
        d = directory or tmp_path / "recipes"
        d.mkdir(parents=True, exist_ok=True)
        path = d / name
        path.write_text(data if isinstance(data, str) else dump_toml(data), encoding="utf-8")
        return path

    return _write


def problems(exc: FarmError) -> list[FarmError]:
    return exc.errors if isinstance(exc, ErrorGroup) else [exc]


def load_error(path: Path) -> FarmError:
    with pytest.raises(FarmError) as info:
        load_file(path)
    return info.value


def dir_error(directory: Path) -> FarmError:
    with pytest.raises(FarmError) as info:
        load_dir(directory)
    return info.value


def single(exc: FarmError) -> FarmError:
    found = problems(exc)
    assert len(found) == 1, [e.render() for e in found]
    return found[0]


def assert_problem(err: FarmError, code: str, file: Path, field: str | None) -> None:
    assert err.code == code, err.render()
    assert err.file == str(file)
    assert err.field == field
    assert err.hint.strip(), f"no hint for {err.render()}"
    assert err.message.strip()


# -- the happy path --------------------------------------------------------------------------------------------
def test_valid_recipe_loads_every_field(write: WriteRecipe) -> None:
    path = write(VALID)
    r = load_file(path)
    assert r.name == "hello"
    assert r.version == "1.0"
    assert r.description == "a greeting"
    assert r.outputs == ("bin/hello", "share/")
    assert r.source == Source(git="https://example.com/hello.git", commit=COMMIT, ref="v1.0")
    assert r.steps == ("make", 'make install DESTDIR="$OUT"')
    assert r.env == (("AR", "ar"), ("CFLAGS", "-O2"))  # sorted by name
    assert r.build_depends == ()
    assert r.path == path


def test_optional_fields_default(write: WriteRecipe) -> None:
    data = valid(description=..., source__ref=..., build__env=...)
    r = load_file(write(data))
    assert r.description == ""
    assert r.source.ref is None
    assert r.env == ()


def test_content_round_trips_through_from_content(write: WriteRecipe) -> None:
    r = load_file(write(valid(**{"build-depends": ["zlib"]})))
    again = Recipe.from_content(r.content())
    assert again.content() == r.content()
    assert again.digest == r.digest
    assert Recipe.from_content(r.content(), r.path) == r
    # content() is plain JSON data: it survives a JSON round trip unchanged (how workers receive it)
    assert Recipe.from_content(json.loads(json.dumps(r.content())), r.path) == r


def test_content_excludes_the_file_location(tmp_path: Path, write: WriteRecipe) -> None:
    a = load_file(write(VALID, directory=tmp_path / "one"))
    b = load_file(write(VALID, "other-name.toml", directory=tmp_path / "two"))
    assert a.path != b.path
    assert a.content() == b.content()
    assert a.digest == b.digest


def test_digest_is_sha256_of_canonical_content(write: WriteRecipe) -> None:
    r = load_file(write(VALID))
    canonical = json.dumps(r.content(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert r.digest == hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert r.digest == load_file(write(VALID)).digest  # stable across loads


def test_formatting_comments_and_key_order_do_not_change_digest(write: WriteRecipe) -> None:
    plain = write(VALID, "plain.toml")
    styled = write(
        f"""
# a comment at the top
outputs = [ "bin/hello",
  "share/", ]
description='a greeting'
version   =   "1.0"   # trailing comment
name="hello"

[build]
env = {{ AR = "ar", CFLAGS = "-O2" }}   # env written in another order
steps = [
    "make",            # first
    'make install DESTDIR="$OUT"',
]

[source]
ref    =    "v1.0"
commit = "{COMMIT}"
git = 'https://example.com/hello.git'
""",
        "styled.toml",
    )
    assert plain.read_text() != styled.read_text()
    assert load_file(styled).content() == load_file(plain).content()
    assert load_file(styled).digest == load_file(plain).digest


@pytest.mark.parametrize(
    "change",
    [
        {"version": "1.1"},
        {"description": "other"},
        {"outputs": ["bin/hello"]},
        {"source__commit": "f" * 40},
        {"source__ref": "v1.1"},
        {"source__git": "https://example.com/other.git"},
        {"build__steps": ["make"]},
        {"build__env": {"CFLAGS": "-O3", "AR": "ar"}},
        {"build-depends": ["zlib"]},
    ],
)
def test_every_content_field_changes_the_digest(write: WriteRecipe, change: dict[str, Any]) -> None:
    base = load_file(write(VALID, "base.toml")).digest
    assert load_file(write(valid(**change), "changed.toml")).digest != base


def test_step_order_changes_the_digest(write: WriteRecipe) -> None:
    a = load_file(write(valid(build__steps=["a", "b"]), "a.toml"))
    b = load_file(write(valid(build__steps=["b", "a"]), "b.toml"))
    assert a.digest != b.digest


# -- git_location ----------------------------------------------------------------------------------------------
def test_git_location_resolves_relative_paths_against_the_recipe_directory(tmp_path: Path, write: WriteRecipe) -> None:
    path = write(valid(source__git="../git/hello.git"), directory=tmp_path / "recipes")
    r = load_file(path)
    assert r.source.git == "../git/hello.git"  # the recipe keeps what was written
    assert r.git_location == str((tmp_path / "git" / "hello.git").resolve())
    assert Path(r.git_location).is_absolute()


def test_git_location_does_not_depend_on_the_working_directory(
    tmp_path: Path, write: WriteRecipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(valid(source__git="src.git"), directory=tmp_path / "r")
    r = load_file(path)
    monkeypatch.chdir("/")
    assert r.git_location == str((tmp_path / "r" / "src.git").resolve())


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hello.git",
        "ssh://git@example.com/hello.git",
        "file:///srv/git/hello.git",
        "git@example.com:org/hello.git",
        "/srv/git/hello.git",
    ],
)
def test_git_location_keeps_urls_and_absolute_paths_as_written(write: WriteRecipe, url: str) -> None:
    assert load_file(write(valid(source__git=url))).git_location == url


# -- syntax and reading ----------------------------------------------------------------------------------------
def test_toml_syntax_error(write: WriteRecipe) -> None:
    path = write('name = "hello\nversion = "1.0"\n')
    err = load_error(path)
    assert not isinstance(err, ErrorGroup)
    assert_problem(err, E.RECIPE_SYNTAX, path, None)
    assert "invalid TOML" in err.message


def test_non_utf8_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    assert_problem(load_error(path), E.RECIPE_SYNTAX, path, None)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    err = load_error(path)
    assert_problem(err, E.RECIPE_DIR, path, None)
    assert "cannot read" in err.message


# -- unknown keys ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "field", "suggestion"),
    [
        (valid(verison="1.0"), "verison", "did you mean 'version'?"),
        (valid(build_depends=["zlib"]), "build_depends", "did you mean 'build-depends'?"),
        (valid(source__comit=COMMIT), "source.comit", "did you mean 'source.commit'?"),
        (valid(source__reff="v1"), "source.reff", "did you mean 'source.ref'?"),
        (valid(build__step=["make"]), "build.step", "did you mean 'build.steps'?"),
        (valid(build__envs={}), "build.envs", "did you mean 'build.env'?"),
    ],
)
def test_unknown_key_suggests_the_close_one(
    write: WriteRecipe, data: dict[str, Any], field: str, suggestion: str
) -> None:
    path = write(data)
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_UNKNOWN_KEY, path, field)
    assert err.hint == suggestion


@pytest.mark.parametrize(
    ("data", "field", "allowed"),
    [
        (valid(zzzzzz=1), "zzzzzz", "name"),
        (valid(source__qqqq="x"), "source.qqqq", "commit"),
        (valid(build__qqqq="x"), "build.qqqq", "steps"),
    ],
)
def test_unknown_key_without_close_match_lists_allowed_keys(
    write: WriteRecipe, data: dict[str, Any], field: str, allowed: str
) -> None:
    path = write(data)
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_UNKNOWN_KEY, path, field)
    assert err.hint.startswith("allowed keys:")
    assert allowed in err.hint


# -- missing and mistyped fields -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("removed", "field"),
    [
        ("name", "name"),
        ("version", "version"),
        ("outputs", "outputs"),
        ("source", "source"),
        ("build", "build"),
        ("source__git", "source.git"),
        ("source__commit", "source.commit"),
        ("build__steps", "build.steps"),
    ],
)
def test_each_missing_required_field(write: WriteRecipe, removed: str, field: str) -> None:
    path = write(valid(**{removed: ...}))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_MISSING, path, field)
    assert err.message == "missing required field"


@pytest.mark.parametrize(
    ("change", "field", "expected"),
    [
        ({"name": 1}, "name", "expected str, got int"),
        ({"version": 1}, "version", "expected str, got int"),
        ({"version": True}, "version", "expected str, got bool"),
        ({"description": ["x"]}, "description", "expected str, got list"),
        ({"build-depends": "zlib"}, "build-depends", "expected list, got str"),
        ({"outputs": "bin/hello"}, "outputs", "expected list, got str"),
        ({"source": "https://example.com/x.git"}, "source", "expected dict, got str"),
        ({"build": ["make"]}, "build", "expected dict, got list"),
        ({"source__git": 5}, "source.git", "expected str, got int"),
        ({"source__commit": 1234}, "source.commit", "expected str, got int"),
        ({"source__ref": ["v1"]}, "source.ref", "expected str, got list"),
        ({"build__steps": "make"}, "build.steps", "expected list, got str"),
        ({"build__env": "CFLAGS=-O2"}, "build.env", "expected dict, got str"),
    ],
)
def test_wrong_types(write: WriteRecipe, change: dict[str, Any], field: str, expected: str) -> None:
    path = write(valid(**change))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_TYPE, path, field)
    assert err.message == expected


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"build-depends": ["zlib", 3]}, "build-depends"),
        ({"build-depends": [""]}, "build-depends"),
        ({"outputs": ["bin/hello", 1]}, "outputs"),
        ({"outputs": [""]}, "outputs"),
        ({"build__steps": ["make", ["nested"]]}, "build.steps"),
        ({"build__steps": ["make", ""]}, "build.steps"),
    ],
)
def test_list_entries_must_be_non_empty_strings(write: WriteRecipe, change: dict[str, Any], field: str) -> None:
    path = write(valid(**change))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_TYPE, path, field)
    assert "non-empty string" in err.message


@pytest.mark.parametrize("name", ["Hello", "-hello", "hel lo", "hello_world", ""])
def test_invalid_package_name(write: WriteRecipe, name: str) -> None:
    path = write(valid(name=name))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_VALUE, path, "name")


@pytest.mark.parametrize("name", ["hello", "libc6", "g++", "python3.11", "0ad", "foo-bar"])
def test_valid_package_names(write: WriteRecipe, name: str) -> None:
    assert load_file(write(valid(name=name))).name == name


def test_blank_version(write: WriteRecipe) -> None:
    path = write(valid(version="  "))
    assert_problem(single(load_error(path)), E.RECIPE_VALUE, path, "version")


def test_blank_git(write: WriteRecipe) -> None:
    path = write(valid(source__git=""))
    assert_problem(single(load_error(path)), E.RECIPE_VALUE, path, "source.git")


# -- commits ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("branch", ["main", "master", "v1.0", "refs/heads/main", "HEAD"])
def test_branch_or_tag_name_as_commit(write: WriteRecipe, branch: str) -> None:
    path = write(valid(source__commit=branch))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_COMMIT, path, "source.commit")
    assert "branch or tag" in err.message
    assert f"git rev-parse {branch}" in err.hint
    assert "source.ref" in err.hint


@pytest.mark.parametrize("short", ["0123456", "0123456789abcdef", COMMIT[:39]])
def test_abbreviated_commit(write: WriteRecipe, short: str) -> None:
    path = write(valid(source__commit=short))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_COMMIT, path, "source.commit")
    assert "abbreviated" in err.message
    assert "40-hex" in err.hint


@pytest.mark.parametrize("commit", [COMMIT.upper(), "0123456789ABCDEF0123456789abcdef01234567", "a" * 64])
def test_uppercase_or_overlong_hex_commit(write: WriteRecipe, commit: str) -> None:
    path = write(valid(source__commit=commit))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_COMMIT, path, "source.commit")
    assert "not a 40-hex commit id" in err.message
    assert "lowercase" in err.hint


@pytest.mark.parametrize(
    ("change", "code", "field"),
    [
        ({"source__commit": COMMIT + "\n"}, E.RECIPE_COMMIT, "source.commit"),
        ({"name": "hello\n"}, E.RECIPE_VALUE, "name"),
        ({"build__env": {"CFLAGS\n": "-O2"}}, E.RECIPE_VALUE, "build.env.CFLAGS\n"),
    ],
)
def test_a_trailing_newline_is_not_accepted(write: WriteRecipe, change: dict[str, Any], code: str, field: str) -> None:
    """A regex ending in '$' also matches before a final newline; the whole value must match."""
    path = write(valid(**change))
    assert_problem(single(load_error(path)), code, path, field)


# -- dependencies ----------------------------------------------------------------------------------------------
def test_self_dependency(write: WriteRecipe) -> None:
    path = write(valid(**{"build-depends": ["hello"]}))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_CYCLE, path, "build-depends")
    assert "depends on itself" in err.message


def test_dependency_listed_twice(write: WriteRecipe) -> None:
    path = write(valid(**{"build-depends": ["zlib", "zlib"]}))
    assert_problem(single(load_error(path)), E.RECIPE_VALUE, path, "build-depends")


# -- outputs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("output", "why"),
    [
        ("/etc/x", "is absolute"),
        ("/", "is absolute"),
        ("../x", "contains '..'"),
        ("a/../../x", "contains '..'"),
        ("a/..", "contains '..'"),
        ("..", "contains '..'"),
        (".", "names the output directory itself"),
        ("./", "names the output directory itself"),
        ("a\\b", "backslash"),
    ],
)
def test_output_paths_must_stay_inside_out(write: WriteRecipe, output: str, why: str) -> None:
    path = write(valid(outputs=[output]))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_OUTPUT_PATH, path, "outputs")
    assert why in err.message
    assert repr(output) in err.message or f"'{output}'" in err.message


def test_outputs_sharing_a_file_name(write: WriteRecipe) -> None:
    path = write(valid(outputs=["a/x", "b/x"]))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_OUTPUT_PATH, path, "outputs")
    assert "share a file name" in err.message


def test_empty_outputs(write: WriteRecipe) -> None:
    path = write(valid(outputs=[]))
    assert_problem(single(load_error(path)), E.RECIPE_VALUE, path, "outputs")


def test_empty_steps(write: WriteRecipe) -> None:
    path = write(valid(build__steps=[]))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_VALUE, path, "build.steps")
    assert "at least one step" in err.message


# -- environment -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["1BAD", "A-B", "A B", "Ä", ""])
def test_invalid_env_names(write: WriteRecipe, name: str) -> None:
    path = write(valid(build__env={name: "x"}))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_VALUE, path, f"build.env.{name}")


@pytest.mark.parametrize("name", sorted(RESERVED_ENV))
def test_reserved_env_names(write: WriteRecipe, name: str) -> None:
    path = write(valid(build__env={name: "/x"}))
    err = single(load_error(path))
    assert_problem(err, E.RECIPE_VALUE, path, f"build.env.{name}")
    assert "PATH" in err.hint


def test_path_is_reserved() -> None:
    assert {"PATH", "HOME", "SOURCE_DATE_EPOCH"} <= RESERVED_ENV


@pytest.mark.parametrize("value", [1, True, ["x"]])
def test_env_values_must_be_strings(write: WriteRecipe, value: Any) -> None:
    path = write(valid(build__env={"CFLAGS": value}))
    assert_problem(single(load_error(path)), E.RECIPE_VALUE, path, "build.env.CFLAGS")


# -- several problems at once ----------------------------------------------------------------------------------
def test_one_file_reports_every_problem(write: WriteRecipe) -> None:
    data = valid(name="Bad Name", source__commit="main", outputs=["/abs"], build__steps=[], bogus=1)
    path = write(data)
    err = load_error(path)
    assert isinstance(err, ErrorGroup)
    found = {(e.code, e.field) for e in err.errors}
    assert found == {
        (E.RECIPE_UNKNOWN_KEY, "bogus"),
        (E.RECIPE_VALUE, "name"),
        (E.RECIPE_COMMIT, "source.commit"),
        (E.RECIPE_OUTPUT_PATH, "outputs"),
        (E.RECIPE_VALUE, "build.steps"),
    }
    assert all(e.file == str(path) for e in err.errors)
    assert err.message == "5 problem(s) found"
    rendered = err.render()
    assert rendered.count("error[") == 5
    assert rendered.count("hint: ") == 5


def test_directory_reports_every_problem_in_every_file(tmp_path: Path, write: WriteRecipe) -> None:
    d = tmp_path / "recipes"
    broken = write("name = [\n", "a-broken.toml", directory=d)
    missing = write(valid(name="b", version=...), "b.toml", directory=d)
    short = write(valid(name="c", source__commit="abc1234"), "c.toml", directory=d)
    write(valid(name="d", **{"build-depends": ["nope"]}), "d.toml", directory=d)
    err = dir_error(d)
    assert isinstance(err, ErrorGroup)
    by_file = {(e.file, e.code, e.field) for e in err.errors}
    assert by_file == {
        (str(broken), E.RECIPE_SYNTAX, None),
        (str(missing), E.RECIPE_MISSING, "version"),
        (str(short), E.RECIPE_COMMIT, "source.commit"),
        (str(d / "d.toml"), E.RECIPE_UNKNOWN_DEP, "build-depends"),
    }
    assert all(e.hint for e in err.errors)


# -- directories -----------------------------------------------------------------------------------------------
def test_load_dir_returns_recipes_by_name(tmp_path: Path, write: WriteRecipe) -> None:
    d = tmp_path / "recipes"
    write(valid(name="zlib"), "z.toml", directory=d)
    write(valid(name="app", **{"build-depends": ["zlib"]}), "a.toml", directory=d)
    (d / "README.md").write_text("not a recipe")
    rs = load_dir(d)
    assert len(rs) == 2
    assert list(rs.recipes) == ["app", "zlib"]
    assert rs.recipes["app"].build_depends == ("zlib",)
    assert {r.name for r in rs.recipes.values()} == {"app", "zlib"}
    assert rs.directory == d


def test_duplicate_names_across_files(tmp_path: Path, write: WriteRecipe) -> None:
    d = tmp_path / "recipes"
    first = write(valid(), "a.toml", directory=d)
    second = write(valid(version="2.0"), "b.toml", directory=d)
    err = single(dir_error(d))
    assert_problem(err, E.RECIPE_DUPLICATE, second, "name")
    assert str(first) in err.message
    assert "'hello'" in err.message


@pytest.mark.parametrize(("missing", "hint"), [("zlb", "did you mean 'zlib'?"), ("openssl", "add a recipe")])
def test_build_depends_on_a_missing_recipe(tmp_path: Path, write: WriteRecipe, missing: str, hint: str) -> None:
    d = tmp_path / "recipes"
    write(valid(name="zlib"), "zlib.toml", directory=d)
    app = write(valid(name="app", **{"build-depends": ["zlib", missing]}), "app.toml", directory=d)
    err = single(dir_error(d))
    assert_problem(err, E.RECIPE_UNKNOWN_DEP, app, "build-depends")
    assert f"'{missing}'" in err.message
    assert hint in err.hint


def _cycle_from(message: str) -> list[str]:
    prefix = "dependency cycle: "
    assert message.startswith(prefix), message
    return message[len(prefix) :].split(" -> ")


def test_dependency_cycle_prints_the_path(tmp_path: Path, write: WriteRecipe) -> None:
    d = tmp_path / "recipes"
    paths = {
        n: write(valid(name=n, **{"build-depends": [dep]}), f"{n}.toml", directory=d)
        for n, dep in (("a", "b"), ("b", "c"), ("c", "a"))
    }
    write(valid(name="leaf"), "leaf.toml", directory=d)  # not part of the cycle
    err = single(dir_error(d))
    cycle = _cycle_from(err.message)
    assert cycle[0] == cycle[-1]
    rotations = [["a", "b", "c"][i:] + ["a", "b", "c"][:i] for i in range(3)]
    assert cycle[:-1] in rotations
    assert_problem(err, E.RECIPE_CYCLE, paths[cycle[0]], "build-depends")
    assert "a -> b -> c -> a" in err.message  # the search starts at the smallest name


def test_two_node_cycle(tmp_path: Path, write: WriteRecipe) -> None:
    d = tmp_path / "recipes"
    write(valid(name="x", **{"build-depends": ["y"]}), "x.toml", directory=d)
    write(valid(name="y", **{"build-depends": ["x"]}), "y.toml", directory=d)
    err = single(dir_error(d))
    assert err.code == E.RECIPE_CYCLE
    assert _cycle_from(err.message) == ["x", "y", "x"]


def test_self_dependency_in_a_directory(tmp_path: Path, write: WriteRecipe) -> None:
    d = tmp_path / "recipes"
    path = write(valid(name="x", **{"build-depends": ["x"]}), "x.toml", directory=d)
    assert_problem(single(dir_error(d)), E.RECIPE_CYCLE, path, "build-depends")


def test_empty_directory(tmp_path: Path) -> None:
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt").write_text("no recipes here")
    err = dir_error(d)
    assert_problem(err, E.RECIPE_DIR, d, None)
    assert "no *.toml" in err.message


def test_not_a_directory(tmp_path: Path, write: WriteRecipe) -> None:
    path = write(VALID)
    err = dir_error(path)
    assert_problem(err, E.RECIPE_DIR, path, None)
    assert "not a directory" in err.message


def test_missing_directory(tmp_path: Path) -> None:
    assert_problem(dir_error(tmp_path / "nope"), E.RECIPE_DIR, tmp_path / "nope", None)


def test_a_directory_named_like_a_recipe(tmp_path: Path, write: WriteRecipe) -> None:
    d = tmp_path / "recipes"
    write(VALID, directory=d)
    (d / "sub.toml").mkdir()
    assert_problem(single(dir_error(d)), E.RECIPE_DIR, d / "sub.toml", None)


# -- parse directly --------------------------------------------------------------------------------------------
def test_parse_names_the_given_path() -> None:
    where = Path("/somewhere/x.toml")
    with pytest.raises(ErrorGroup) as info:
        parse(valid(outputs=["../x"]), where)
    assert [e.file for e in info.value.errors] == [str(where)]


def test_parse_does_not_modify_its_input() -> None:
    data = valid()
    before = copy.deepcopy(data)
    parse(data, Path("x.toml"))
    assert data == before


def test_a_patch_list_in_a_recipe_file_is_checked_with_the_rest(write: WriteRecipe) -> None:
    path = write(valid(patches=["patches/none.patch", ""], bogus=1))
    codes = sorted(e.code for e in problems(load_error(path)))
    assert codes == sorted([E.RECIPE_PATCH, E.RECIPE_TYPE, E.RECIPE_UNKNOWN_KEY])


def test_the_repository_recipes_name_their_patches_in_the_top_level_patches_directory() -> None:
    repo = Path(__file__).resolve().parents[2]
    recipes = load_dir(repo / "recipes").recipes
    patched = {name: r.patches for name, r in recipes.items() if r.patches}
    assert set(patched) >= {"hello"}
    for patches in patched.values():
        for patch in patches:
            data = (repo / patch.file).read_bytes()
            assert patch.file.startswith("patches/") and hashlib.sha256(data).hexdigest() == patch.sha256
            assert all(f"\n{h}:" in "\n" + data.decode() for h in ("Description", "Author", "Forwarded"))  # DEP-3
