"""What the kernel recipes need from the farm: recipe inputs (files the build reads at $INPUTS, pinned by sha256 in the
recipe's content, key and provenance) and script builds in a pinned environment (its /usr instead of the host's,
its digest in the key). Recipes without either keep the content, and so the build keys, they always had."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from farm.build import BuildFailure, BuildRequest, script_env
from farm.build.execute import execute_build
from farm.errors import E, ErrorGroup
from farm.identity import build_key
from farm.recipes import Input, Recipe, Source, load_file
from farm.store import BuildRecord, open_store
from farm.trust.keys import BuilderKey
from farm.trust.provenance import verify_envelope
from tests.conftest import MakeRepo, require
from tests.lib.git import git
from tests.lib.recipes import worker_context

COMMIT = "0123456789abcdef0123456789abcdef01234567"
RECIPE = f"""name = "pkg"
version = "1.0"
outputs = ["out"]
{{extra}}
[source]
git = "https://example.com/pkg.git"
commit = "{COMMIT}"

[build]
steps = ["make"]
{{build}}
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recipe_file(root: Path, extra: str = "", build: str = "", files: dict[str, bytes] | None = None) -> Path:
    """``root/recipes/pkg.toml`` with ``extra`` top-level lines and ``build`` lines, and ``files`` (path relative
    to ``root`` -> bytes)."""
    for rel, data in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    path = root / "recipes" / "pkg.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(RECIPE.format(extra=extra, build=build))
    return path


def problems(path: Path) -> list[tuple[str, str | None, str]]:
    with pytest.raises(ErrorGroup) as info:
        load_file(path)
    return [(e.code, e.field, e.message) for e in info.value.errors]


@pytest.mark.unit
def test_a_recipe_without_inputs_or_environment_keeps_its_content(tmp_path: Path) -> None:
    content = load_file(recipe_file(tmp_path)).content()
    assert "inputs" not in content and content["build"] == {"steps": ["make"], "env": {}}


@pytest.mark.unit
def test_inputs_are_pinned_by_path_and_sha256_and_change_the_key(tmp_path: Path) -> None:
    files = {"recipes/a.config": b"A=1\n", "certs/org.pem": b"CERT\n"}
    path = recipe_file(tmp_path, 'inputs = ["a.config", "certs/org.pem"]', files=files)
    recipe = load_file(path)
    assert recipe.inputs == (Input("a.config", sha(b"A=1\n")), Input("certs/org.pem", sha(b"CERT\n")))
    assert recipe.content()["inputs"] == [
        {"file": "a.config", "sha256": sha(b"A=1\n")},
        {"file": "certs/org.pem", "sha256": sha(b"CERT\n")},
    ]
    assert Recipe.from_content(recipe.content(), path) == recipe  # as a worker receives it
    before = recipe.digest
    (tmp_path / "certs" / "org.pem").write_bytes(b"ANOTHER CERT\n")
    assert load_file(path).digest != before


@pytest.mark.unit
@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("/etc/passwd", "input path '/etc/passwd' is absolute"),
        ("../secret", "contains '..'"),
        ("gone.txt", "input file 'gone.txt' does not exist"),
    ],
)
def test_an_input_must_exist_and_stay_below_inputs(tmp_path: Path, entry: str, message: str) -> None:
    (tmp_path / "secret").write_text("x")
    found = problems(recipe_file(tmp_path, f"inputs = [{json.dumps(entry)}]"))
    assert [(code, field) for code, field, _ in found] == [(E.RECIPE_VALUE, "inputs[0]")]
    assert message in found[0][2]


@pytest.mark.unit
def test_an_input_listed_twice_and_a_reserved_variable_are_refused(tmp_path: Path) -> None:
    path = recipe_file(tmp_path, 'inputs = ["a", "a"]', 'env = { INPUTS = "/tmp" }', {"recipes/a": b"a"})
    assert [(code, field) for code, field, _ in problems(path)] == [
        (E.RECIPE_VALUE, "build.env.INPUTS"),
        (E.RECIPE_VALUE, "inputs"),
    ]


@pytest.mark.unit
def test_a_script_recipe_may_name_an_environment_but_not_pin_archive_packages(tmp_path: Path) -> None:
    recipe = load_file(recipe_file(tmp_path, build='environment = "bookworm-kernel"'))
    assert recipe.kind == "script" and recipe.environment == "bookworm-kernel"
    assert recipe.content()["build"] == {"steps": ["make"], "env": {}, "environment": "bookworm-kernel"}
    pin = '{ package = "bc", version = "1", arch = "amd64", sha256 = "' + "0" * 64 + '" }'
    found = problems(recipe_file(tmp_path / "b", build=f'environment = "e"\narchive = [{pin}]'))
    assert [(code, field) for code, field, _ in found] == [(E.RECIPE_VALUE, "build.kind")]


@pytest.mark.unit
def test_an_environment_is_bound_in_place_of_the_host_usr(tmp_path: Path) -> None:
    root = tmp_path / "root"
    present = frozenset({"usr", "etc/alternatives", "etc/ld.so.cache"})
    assert script_env.env_binds(root, present) == (
        (str(root / "usr"), "/usr"),
        (str(root / "etc/alternatives"), "/etc/alternatives"),
        (str(root / "etc/ld.so.cache"), "/etc/ld.so.cache"),
    )


@pytest.mark.unit
def test_inputs_are_staged_from_beside_the_recipe_or_from_the_store_and_checked(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "store"))
    path = recipe_file(tmp_path, 'inputs = ["conf/a.txt"]', files={"recipes/conf/a.txt": b"hello\n"})
    recipe = load_file(path)
    log = io.BytesIO()
    script_env.stage_inputs(recipe, store, tmp_path / "staged", log)
    assert (tmp_path / "staged" / "conf" / "a.txt").read_bytes() == b"hello\n"
    assert (tmp_path / "staged" / "conf" / "a.txt").stat().st_mode & 0o777 == 0o444
    assert store.has_blob(sha(b"hello\n")), "staged inputs are in the store, for workers without the recipe files"
    digest = sha(b"hello\n")
    assert f"==> input conf/a.txt sha256 {digest}".encode() in log.getvalue()
    elsewhere = replace(recipe, path=Path("/nonexistent/recipes/pkg.toml"))
    script_env.stage_inputs(elsewhere, store, tmp_path / "from-store", io.BytesIO())
    assert (tmp_path / "from-store" / "conf" / "a.txt").read_bytes() == b"hello\n"
    (tmp_path / "recipes" / "conf" / "a.txt").write_bytes(b"changed after planning\n")
    with pytest.raises(Exception, match="was planned") as info:
        script_env.stage_inputs(recipe, store, tmp_path / "again", io.BytesIO())
    assert getattr(info.value, "code", None) == E.RECIPE_VALUE
    empty = open_store(str(tmp_path / "empty"))
    with pytest.raises(BuildFailure, match="neither beside the recipe nor in the store"):
        script_env.stage_inputs(elsewhere, empty, tmp_path / "none", io.BytesIO())


def tiny_environment(tar: Path) -> None:
    """An environment tarball holding only dash (as /usr/bin/sh) and the libraries it loads, and a marker file."""
    dash = Path("/usr/bin/dash")
    libraries = [Path(line.split()[-2] if "=>" in line else line.split()[0]) for line in ldd(dash)]
    with tarfile.open(tar, "w") as out:
        out.add(dash, "usr/bin/dash")
        link = tarfile.TarInfo("usr/bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "dash"
        out.addfile(link)
        for lib in libraries:
            rel = str(lib).lstrip("/")
            out.add(lib.resolve(), rel if rel.startswith("usr/") else f"usr/{rel}")  # merged /usr, as bookworm's
        marker = b"from the pinned environment\n"
        info = tarfile.TarInfo("usr/share/tiny/marker")
        info.size = len(marker)
        out.addfile(info, io.BytesIO(marker))


def ldd(binary: Path) -> list[str]:
    out = subprocess.run(["ldd", str(binary)], check=True, capture_output=True, text=True).stdout
    return [line.strip() for line in out.splitlines() if "/" in line]


STEP = """echo "$INPUTS" > "$OUT/where"
while IFS= read -r line; do echo "$line"; done < "$INPUTS/conf/settings.txt" > "$OUT/copy"
if [ -e /usr/bin/git ]; then echo host > "$OUT/usr"; else read -r m < /usr/share/tiny/marker; echo "$m" > "$OUT/usr"; fi
if ( : > "$INPUTS/new" ) 2>/dev/null; then echo writable > "$OUT/ro"; else echo read-only > "$OUT/ro"; fi"""


@pytest.mark.integration
def test_a_script_build_runs_in_its_pinned_environment_with_its_inputs(
    tmp_path: Path, make_repo: MakeRepo, builder_key: BuilderKey
) -> None:
    require("bwrap")
    require("ldd")
    ctx = worker_context(tmp_path, builder_key)
    tiny_environment(tmp_path / "env.tar")
    env = ctx.store.put_file(tmp_path / "env.tar").digest
    repo, commit = make_repo("pkg", {"README": "x\n"})
    settings = b"setting = 1\n"
    (tmp_path / "recipes" / "conf").mkdir(parents=True)
    (tmp_path / "recipes" / "conf" / "settings.txt").write_bytes(settings)
    recipe = Recipe(
        name="pkg",
        version="1.0",
        source=Source(git=str(repo), commit=commit),
        steps=(STEP,),
        outputs=("where", "copy", "usr", "ro"),
        environment="tiny",
        inputs=(Input("conf/settings.txt", sha(settings)),),
        path=tmp_path / "recipes" / "pkg.toml",
    )
    tree = git(repo, "rev-parse", f"{commit}^{{tree}}")
    req = BuildRequest(
        build_key=build_key(recipe.content(), commit, tree, env, {}),
        recipe=recipe.content(),
        recipe_path=str(recipe.path),
        fetch_url=str(repo),
        tree=tree,
        environment=env,
    )
    outcome = execute_build(req, ctx)
    assert outcome.ok, outcome.log_tail
    assert outcome.record is not None
    record = BuildRecord.from_json(outcome.record)
    got = {name: ctx.store.get_bytes(digest).decode() for name, digest in record.outputs().items()}
    assert got == {
        "where": "/build/inputs\n",
        "copy": settings.decode(),
        "usr": "from the pinned environment\n",  # the environment's /usr, not the host's (which has git)
        "ro": "read-only\n",
    }
    assert record.environment == env and record.key_inputs["environment"] == env
    statement = verify_envelope(json.loads(ctx.store.get_bytes(record.provenance)), [builder_key.public]).statement
    resolved = statement["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert {"name": "input/conf/settings.txt", "digest": {"sha256": sha(settings)}} in resolved
