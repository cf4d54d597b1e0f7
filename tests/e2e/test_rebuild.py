"""The whole farm through its CLI: real git, real bubblewrap builds, real Celery worker processes on the
embedded broker, a real store; then fetch and verify, and attempts to fool verify."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_recipe
from tests.e2e.conftest import Farm

pytestmark = pytest.mark.e2e

WELCOME_COMMIT = re.search(
    r'commit = "([0-9a-f]{40})"', (Path(__file__).parents[2] / "recipes" / "welcome.toml").read_text()
)


@pytest.fixture(scope="module")
def first_run(demo_farm: Farm) -> dict[str, Any]:
    proc = demo_farm.run("rebuild", "recipes")
    assert "built" in proc.stderr  # progress lines while it runs
    result = json.loads((sorted((demo_farm.home / "runs").iterdir())[-1] / "result.json").read_text())
    return dict(result)


def artifacts_of(result: dict[str, Any]) -> dict[str, Any]:
    return {b["recipe"]: b["artifacts"] for b in result["builds"]}


def test_first_rebuild_builds_everything_in_dependency_order(first_run: dict[str, Any]) -> None:
    assert first_run["ok"]
    assert first_run["summary"]["built"] == 3
    states = {b["recipe"]: b["state"] for b in first_run["builds"]}
    assert states == {"libgreet": "built", "greet": "built", "welcome": "built"}


def test_second_rebuild_is_all_cached_and_starts_no_worker(demo_farm: Farm, first_run: dict[str, Any]) -> None:
    result = demo_farm.json("rebuild", "recipes")
    assert {k: v for k, v in result["summary"].items() if v} == {"cached": 3}
    run_dir = demo_farm.home / "runs" / result["run"]
    assert not (run_dir / "workers.log").exists()
    assert artifacts_of(result) == artifacts_of(first_run)
    plan = demo_farm.json("plan", "recipes")
    assert [b["decision"] for b in plan["builds"]] == ["cached"] * 3
    assert all(b["reason"].startswith("built ") for b in plan["builds"])


# What a cached rebuild needs no library for: it exports no metrics and signs nothing, and its provenance checks hit the
# memo. Each costs tens of ms of start-up (bench/bench_plan.py: the cached-rebuild target is 0.3 s for 1,000 recipes).
HEAVY = ("prometheus_client", "cryptography")
IMPORTED = (
    "import json, sys; from farm.cli.main import main; rc = main(sys.argv[1:]); "
    "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[0].split(',')))), file=sys.stderr)"
)


def test_a_cached_rebuild_loads_no_metrics_or_crypto_library(demo_farm: Farm, first_run: dict[str, Any]) -> None:
    demo_farm.run("rebuild", "recipes")  # the parse cache and host package list are written if they were not
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTED.replace("sys.argv[0]", repr(",".join(HEAVY))), "rebuild", "recipes"],
        cwd=demo_farm.root, env=demo_farm.env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert "3 cached" in proc.stdout, proc.stdout
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == [], proc.stderr


def test_forced_rebuild_into_another_store_is_byte_identical(demo_farm: Farm, first_run: dict[str, Any]) -> None:
    other = demo_farm.root / "other-store"
    result = demo_farm.json("rebuild", "recipes", "--force", env={"MANGOS_FARM_STORE": str(other)})
    assert result["summary"]["built"] == 3
    assert artifacts_of(result) == artifacts_of(first_run)
    first_store = demo_farm.home / "store" / "blobs"
    for arts in artifacts_of(result).values():
        for digest in arts.values():
            a = (first_store / "sha256" / digest[:2] / digest).read_bytes()
            b = (other / "blobs" / "sha256" / digest[:2] / digest).read_bytes()
            assert a == b


def test_fetch_writes_verifiable_artifacts(demo_farm: Farm, first_run: dict[str, Any], tmp_path: Path) -> None:
    assert WELCOME_COMMIT
    out = tmp_path / "fetched"
    demo_farm.run("fetch", "--commit", WELCOME_COMMIT.group(1), "-o", str(out))
    assert (out / "etc.tar").is_file() and (out / "etc.tar.intoto.json").is_file()
    report = demo_farm.json("verify", str(out))
    assert [Path(v["path"]).name for v in report["ok"]] == ["etc.tar"]
    assert report["failed"] == []
    # the fetched program runs and really links the farm-built library
    greet_commit = re.search(r'commit = "([0-9a-f]{40})"', (demo_farm.root / "recipes" / "greet.toml").read_text())
    assert greet_commit
    demo_farm.run("fetch", "--commit", greet_commit.group(1), "--recipe", "greet", "-o", str(out))
    assert (
        subprocess.run([out / "greet", "-V"], capture_output=True, text=True, check=True).stdout == "libgreet 1.0.0\n"
    )


def test_verify_refuses_tampering_and_unknown_keys(demo_farm: Farm, first_run: dict[str, Any], tmp_path: Path) -> None:
    assert WELCOME_COMMIT

    def fetch(name: str) -> Path:
        out = tmp_path / name
        assert WELCOME_COMMIT
        demo_farm.run("fetch", "--commit", WELCOME_COMMIT.group(1), "-o", str(out))
        return out

    blob = fetch("blob")
    with (blob / "etc.tar").open("ab") as fh:
        fh.write(b"\0")
    proc = demo_farm.run("verify", str(blob), check=False)
    assert proc.returncode == 1
    assert "E-VERIFY-DIGEST" in proc.stderr and "altered" in proc.stderr

    stmt = fetch("statement")
    env_path = stmt / "etc.tar.intoto.json"
    envelope = json.loads(env_path.read_text())
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["subject"][0]["digest"]["sha256"] = "0" * 64
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    env_path.write_text(json.dumps(envelope))
    proc = demo_farm.run("verify", str(stmt), check=False)
    assert proc.returncode == 1
    assert "E-VERIFY-SIGNATURE" in proc.stderr and "altered" in proc.stderr

    stranger_home = tmp_path / "stranger"
    demo_farm.run("keys", "generate", env={"MANGOS_FARM_HOME": str(stranger_home)})
    proc = demo_farm.run("verify", str(fetch("untrusted")), check=False, env={"MANGOS_FARM_HOME": str(stranger_home)})
    assert proc.returncode == 1
    assert "E-VERIFY-UNTRUSTED-KEY" in proc.stderr and "not trusted" in proc.stderr
    # ...and trusting the farm's exported public key makes the same files verify
    pem = tmp_path / "farm.pem"
    demo_farm.run("keys", "export-public", "-o", str(pem))
    ok = demo_farm.run(
        "verify", "--key", str(pem), str(tmp_path / "untrusted"), env={"MANGOS_FARM_HOME": str(stranger_home)}
    )
    assert "OK" in ok.stdout


def test_fetch_unknown_commit_is_a_clear_error(demo_farm: Farm) -> None:
    proc = demo_farm.run("fetch", "--commit", "0" * 40, check=False)
    assert proc.returncode == 2
    assert "E-FETCH-NOTHING" in proc.stderr and "hint:" in proc.stderr


def test_failed_build_stops_only_its_dependents(demo_farm: Farm, make_repo: Any, tmp_path: Path) -> None:
    repo, commit = make_repo("x", {"f": "data\n"})
    recipes = tmp_path / "recipes"
    write_recipe(
        recipes, "broken", git_url=str(repo), commit=commit, steps=['echo "compiling..."', "false"], outputs=["f"]
    )
    write_recipe(
        recipes,
        "needs-broken",
        git_url=str(repo),
        commit=commit,
        steps=['cp f "$OUT/f"'],
        outputs=["f"],
        depends=("broken",),
    )
    write_recipe(recipes, "fine", git_url=str(repo), commit=commit, steps=['cp f "$OUT/f"'], outputs=["f"])
    proc = demo_farm.run("rebuild", str(recipes), check=False)
    assert proc.returncode == 1
    assert "1 built, 0 cached, 1 failed, 1 blocked" in proc.stdout
    assert "broken failed" in proc.stdout and "compiling..." in proc.stdout  # the log tail
    assert "needs-broken not built: blocked by failed dependency broken" in proc.stdout


def test_bad_recipes_exit_2_with_every_problem_and_no_traceback(demo_farm: Farm, tmp_path: Path) -> None:
    recipes = tmp_path / "bad"
    recipes.mkdir()
    (recipes / "a.toml").write_text(
        'name = "a"\nversion = "1"\noutputs = ["../x"]\nbuild-depends = ["b"]\ncolour = 1\n'
        '[source]\ngit = "r"\ncommit = "main"\n[build]\nsteps = ["make"]\n'
    )
    (recipes / "b.toml").write_text(
        'name = "b"\nversion = "1"\noutputs = ["x"]\nbuild-depends = ["c"]\n'
        f'[source]\ngit = "r"\ncommit = "{"a" * 40}"\n[build]\nsteps = ["make"]\n'
    )
    proc = demo_farm.run("recipes", "check", str(recipes), check=False)
    assert proc.returncode == 2
    for code, field in [
        ("E-RECIPE-UNKNOWN-KEY", "colour"),
        ("E-RECIPE-COMMIT", "source.commit"),
        ("E-RECIPE-OUTPUT-PATH", "outputs"),
        ("E-RECIPE-UNKNOWN-DEPENDENCY", "build-depends"),
    ]:
        assert re.search(rf"error\[{code}\]: .*\.toml: field '{re.escape(field)}'", proc.stderr), (
            code,
            proc.stderr,
        )
    assert proc.stderr.count("hint:") >= 4
