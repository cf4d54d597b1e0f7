"""``mangos-farm rebuild --stage 1`` as a user runs it: stage 0, then each recipe with a bootstrap edge built again
against the farm's build of that dependency, and its outputs compared.

Real git, real builds on the embedded broker, a real local store, the real CLI. First script recipes (bubblewrap,
seconds) stand in for a cycle: ``cc`` builds against the archive's ``libc`` (a bootstrap edge), ``libc`` against
the farm's ``cc``; ``cc`` embeds what it finds of ``libc`` (so stage 1 differs), ``make`` has a bootstrap edge to
``libc`` too but does not use it (so stage 1 is equal). ``hello`` has none and is not rebuilt. Then one real Debian
pair (tiny native packages, dpkg-buildpackage in the pinned bookworm environment made once per session): ``x``
build-depends on the archive's ``y`` (a .deb pinned by sha256), ``y`` on the farm's ``x``; at stage 1, apt installs
the farm's ``y`` in ``x``'s build root.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from farm.run import run
from farm.store import open_store
from tests.integration.conftest import Made
from tests.lib.cli import Farm
from tests.lib.debsource import MAINTAINER, native_package
from tests.lib.git import git
from tests.lib.recipes import write_recipe
from tests.lib.tools import require

pytestmark = pytest.mark.integration

CC = (
    'if [ -d "$DEPS/libc" ]; then cat "$DEPS/libc/libc_1.0_all.deb" > cc; else printf archive-libc > cc; fi; '
    'cp cc "$OUT/cc_1.0_all.deb"'
)


def with_bootstrap(path: Path, *targets: str) -> None:
    edges = "".join(f'  {{ recipe = "{t}", version = "{t}-archive-1" }},\n' for t in targets)
    path.write_text(path.read_text().replace("\n[source]", f"bootstrap = [\n{edges}]\n\n[source]", 1))


def make_set(root: Path) -> Path:
    repo = root / "repos" / "src"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "README").write_text("stage 1\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "src")
    commit = git(repo, "rev-parse", "HEAD")
    recipes = root / "recipes"

    def recipe(name: str, step: str, depends: tuple[str, ...] = ()) -> Path:
        outputs = [f"{name}_1.0_all.deb"]
        return write_recipe(
            recipes, name, git_url=str(repo), commit=commit, steps=[step], outputs=outputs, depends=depends
        )

    with_bootstrap(recipe("cc", CC), "libc")
    recipe("libc", 'printf "libc built by $(cat $DEPS/cc/cc_1.0_all.deb)" > "$OUT/libc_1.0_all.deb"', ("cc",))
    with_bootstrap(recipe("make", 'printf make > "$OUT/make_1.0_all.deb"'), "libc")
    recipe("hello", 'printf hello > "$OUT/hello_1.0_all.deb"')
    return recipes


def test_stage1_rebuilds_each_bootstrapped_recipe_and_compares(tmp_path: Path) -> None:
    require("bwrap")
    require("git")
    recipes = make_set(tmp_path)
    farm = Farm.at(tmp_path, tmp_path / ".mangos", MANGOS_FARM_WORKERS="2")
    farm.run("keys", "generate")

    early = farm.json("rebuild", str(recipes), "--stage", "1", check=False)  # nothing built yet: nothing builds
    assert [(e["recipe"], e["outcome"], e["error"]["code"]) for e in early["stage1"]] == [
        ("cc", "failed", "E-STAGE0-MISSING"),
        ("make", "failed", "E-STAGE0-MISSING"),
    ]
    assert "rebuild" in early["stage1"][0]["error"]["hint"] and early["stage1"][0]["run"] is None
    text = farm.run("rebuild", str(recipes), "--stage", "1", check=False)
    assert text.returncode == 1 and "error[E-STAGE0-MISSING]" in text.stdout

    stage0 = farm.json("rebuild", str(recipes))
    assert stage0["summary"]["built"] == 4, stage0

    proc = farm.run("rebuild", str(recipes), "--stage", "1", "--json", check=False)
    assert proc.returncode == 1, proc.stderr  # cc differs
    result = json.loads(proc.stdout)
    by = {e["recipe"]: e for e in result["stage1"]}
    assert sorted(by) == ["cc", "make"] and result["summary"] == {"equal": 1, "different": 1, "failed": 0}
    assert by["make"]["outcome"] == "equal" and by["make"]["differences"] == []
    assert by["cc"]["outcome"] == "different" and by["cc"]["depends_on_farm"] == ["libc"]
    (diff,) = by["cc"]["differences"]
    assert diff["file"] == "cc_1.0_all.deb" and diff["stage0"] != diff["stage1"] and diff["stage0"]
    assert by["cc"]["stage1_key"] != by["cc"]["stage0_key"]

    again = farm.json("rebuild", str(recipes), "--stage", "1", check=False)  # resumable: all cached now
    assert {e["recipe"]: e["stage1_key"] for e in again["stage1"]} == {r: e["stage1_key"] for r, e in by.items()}
    assert again["summary"] == result["summary"]
    status = farm.json("status", again["stage1"][0]["run"])
    assert {b["recipe"]: b["state"] for b in status["builds"]} == {"libc": "cached", "cc": "cached"}
    summary = farm.run("rebuild", str(recipes), "--stage", "1", check=False).stdout
    assert "1 equal, 1 different, 0 failed" in summary and "differs: cc_1.0_all.deb" in summary, summary
    later = farm.json("rebuild", str(recipes))  # stage 0 is untouched by stage 1
    assert later["summary"]["cached"] == 4 and later["summary"]["built"] == 0


def archive_deb(root: Path, name: str, content: str) -> Path:
    """A .deb as the archive would serve it: ``name`` 1.0, Architecture all, /usr/share/NAME/built = ``content``."""
    tree = root / f"{name}-archive"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "usr" / "share" / name).mkdir(parents=True)
    (tree / "usr" / "share" / name / "built").write_text(content)
    (tree / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: 1.0\nArchitecture: all\nMaintainer: {MAINTAINER}\nDescription: archive's\n"
    )
    deb = root / f"{name}_1.0_all.deb"
    run(["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)])
    return deb


def debian_toml(name: str, repo: Path, commit: str, *, depends: str = "", pins: str = "", bootstrap: str = "") -> str:
    return (
        f'name = "{name}"\nversion = "1.0"\noutputs = ["*.deb", "*.buildinfo"]\n'
        + (f'build-depends = ["{depends}"]\n' if depends else "")
        + (f'bootstrap = [{{ recipe = "{bootstrap}", version = "1.0" }}]\n' if bootstrap else "")
        + f'\n[source]\ngit = "{repo}"\ncommit = "{commit}"\n'
        + f'\n[build]\nkind = "debian"\nenvironment = "bookworm-amd64"\narchive = [{pins}]\n'
    )


def test_stage1_of_a_debian_pair_installs_the_farms_build(tmp_path: Path, made_env: Made) -> None:
    require("unshare")
    deb = archive_deb(tmp_path, "y", "archive")
    digest = made_env.store.put_file(deb).digest
    assert digest == hashlib.sha256(deb.read_bytes()).hexdigest()
    x_repo, y_repo = tmp_path / "repos" / "x", tmp_path / "repos" / "y"
    probe = ['echo "probe: y is $$(cat /usr/share/y/built)"']
    x_commit = native_package(x_repo, "x", probe, build_depends="y")
    y_commit = native_package(y_repo, "y", build_depends="x")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    pin = f'{{ package = "y", version = "1.0", arch = "all", sha256 = "{digest}" }}'
    (recipes / "x.toml").write_text(debian_toml("x", x_repo, x_commit, pins=pin, bootstrap="y"))
    (recipes / "y.toml").write_text(debian_toml("y", y_repo, y_commit, depends="x"))
    home = tmp_path / "home"
    shutil.copytree(made_env.records_dir, home / "envs")
    farm = Farm.at(tmp_path, home, MANGOS_FARM_WORKERS="2", MANGOS_FARM_STORE=made_env.store.url)
    farm.run("keys", "generate")

    stage0 = farm.json("rebuild", str(recipes))
    assert stage0["summary"]["built"] == 2, stage0
    result = farm.json("rebuild", str(recipes), "--stage", "1")  # exit 0: equal
    (entry,) = result["stage1"]
    assert entry["recipe"] == "x" and entry["outcome"] == "equal", entry
    assert entry["depends_on_farm"] == ["y"] and entry["dropped_pins"] == ["y"]
    store = open_store(made_env.store.url)
    logs = {}
    for stage in ("stage0", "stage1"):
        record = store.get_record(entry[f"{stage}_key"])
        assert record is not None
        logs[stage] = store.get_bytes(record.log).decode()
    assert "probe: y is archive" in logs["stage0"]  # stage 0: the archive's y
    assert "probe: y is built" in logs["stage1"]  # stage 1: the farm's y, built against the farm's x
