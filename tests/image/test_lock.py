"""The image lock: its canonical text, its strict parser, its checks against the present, and ``image build --lock``.

The unit tests feed real lock texts to :func:`farm.image.lock.parse`; the integration tests drive the CLI against
the host's real apt archive: ``image lock`` then ``image build --check-inputs --lock`` installs exactly the locked
set, and a lock whose sha256 or version was edited is refused by the download check. The e2e test reuses the
session's built image (a farm-built ``hello``) to check farm entries and the build's own ``out/image.lock``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from farm.errors import FarmError
from farm.image import inputs, lock
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "mangos-farm")
SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64
COMMIT = "1" * 40


def _lock(**changes: Any) -> lock.ImageLock:
    base = lock.ImageLock(
        source_date_epoch=1700000000,
        requested=("hello", "bash"),
        packages=(
            lock.LockedPackage("libc6", "amd64", "2.36-9", SHA_A, lock.ARCHIVE),
            lock.LockedPackage("hello", "amd64", "2.10-3", SHA_B, lock.FARM, "hello", COMMIT),
        ),
        recipes=(("hello", COMMIT),),
        profile="docker",
        profile_requested=("docker.io",),
        profile_packages=(lock.LockedPackage("docker.io", "amd64", "20.10", SHA_C, lock.ARCHIVE),),
    )
    return replace(base, **changes)


def _parse_error(text: str, tmp_path: Path) -> FarmError:
    path = tmp_path / "image.lock"
    path.write_text(text)
    with pytest.raises(FarmError) as exc:
        lock.load(path)
    err = exc.value
    assert err.code == "E-IMAGE-LOCK" and err.file == str(path) and "mangos-farm image lock" in err.hint, err
    return err


# -- unit ---------------------------------------------------------------------------------------------------------
@pytest.mark.unit
def test_lock_text_is_canonical_and_round_trips(tmp_path: Path) -> None:
    made = _lock()
    text = lock.dumps(made)
    # the same lock in another order writes the same bytes: sorted requested lists, recipes and packages
    shuffled = _lock(requested=("bash", "hello"), packages=tuple(reversed(made.packages)))
    assert lock.dumps(shuffled) == text
    data = tomllib.loads(text)
    assert [p["name"] for p in data["package"]] == ["hello", "libc6"]
    assert data["package"][0] == {
        "name": "hello", "version": "2.10-3", "arch": "amd64", "origin": "farm", "sha256": SHA_B, "recipe": "hello",
        "commit": COMMIT,
    }  # fmt: skip
    assert "recipe" not in data["package"][1] and data["requested"] == ["bash", "hello"]
    path = tmp_path / "image.lock"
    path.write_text(text)
    back = lock.load(path)
    assert back.path == path and replace(back, path=None) == replace(
        made, packages=tuple(sorted(made.packages)), requested=("bash", "hello")
    )
    assert back.archive_pins()[0].spec == "libc6=2.36-9" and back.archive_pins()[0].sha256 == SHA_A
    assert [p.name for p in back.farm()] == ["hello"]
    assert lock.dumps(back) == text


@pytest.mark.unit
def test_inputs_lock_records_origin_recipe_and_commit(tmp_path: Path) -> None:
    got = inputs.Inputs(
        (
            inputs.Package("hello", "2.10-3", "amd64", SHA_B, inputs.FARM, tmp_path / "h.deb", "hello", COMMIT),
            inputs.Package("libc6", "2.36-9", "amd64", SHA_A, inputs.ARCHIVE, tmp_path / "l.deb"),
        ),
        ("hello",),
        (("hello", COMMIT),),
    )
    made = got.lock(1234)
    assert made.source_date_epoch == 1234 and made.recipes == (("hello", COMMIT),)
    assert {(p.name, p.origin, p.commit) for p in made.packages} == {
        ("hello", "farm", COMMIT),
        ("libc6", "archive", ""),
    }


@pytest.mark.unit
@pytest.mark.parametrize(
    ("old", "new", "field", "words"),
    [
        ('sha256 = "' + SHA_A + '"', "sha256 = 12", "package[1].sha256", "must be a string"),
        ('sha256 = "' + SHA_A + '"', 'sha256 = "' + "A" * 64 + '"', "package[1].sha256", "64 lowercase hex"),
        ('version = "2.36-9"', 'version = "2.36-9"\nsize = 3', "package[1].size", "unknown key"),
        ("lock-version = 1", "lock-version = 1\nextra = true", "extra", "unknown key"),
        ("lock-version = 1", "lock-version = 2", "lock-version", "reads 1"),
        ("source-date-epoch = 1700000000", 'source-date-epoch = "1700000000"', "source-date-epoch", "integer"),
        (
            'origin = "archive"\nsha256 = "' + SHA_A,
            'origin = "debian"\nsha256 = "' + SHA_A,
            "package[1].origin",
            "farm",
        ),
        ('commit = "' + COMMIT + '"', 'commit = "main"', "package[0].commit", "commit id"),
        ('sha256 = "' + SHA_A + '"', 'sha256 = "' + SHA_A + '"\nrecipe = "x"', "package[1].recipe", "archive"),
        ('requested = [\n  "bash",', "requested = [\n  1,", "requested", "list of strings"),
        ('"hello" = "' + COMMIT + '"', '"hello" = 1', "recipes", "commit strings"),
    ],
)
def test_a_bad_lock_names_the_file_the_field_and_the_fix(
    old: str, new: str, field: str, words: str, tmp_path: Path
) -> None:
    text = lock.dumps(_lock())
    assert text.count(old) == 1, old
    err = _parse_error(text.replace(old, new), tmp_path)
    assert err.field == field and words in err.message, (err.field, err.message)


@pytest.mark.unit
def test_a_lock_that_is_not_toml_or_locks_a_package_twice_is_refused(tmp_path: Path) -> None:
    assert "invalid TOML" in _parse_error("lock-version = [", tmp_path).message
    text = lock.dumps(_lock())
    block = text[text.index("[[package]]") : text.index("[[package]]", text.index("[[package]]") + 1)]
    assert "locked twice" in _parse_error(text + "\n" + block, tmp_path).message
    with pytest.raises(FarmError) as exc:
        lock.load(tmp_path / "missing.lock")
    assert exc.value.code == "E-IMAGE-LOCK" and "mangos-farm image lock" in exc.value.hint


@pytest.mark.unit
def test_a_stale_lock_names_the_recipe_and_the_package(tmp_path: Path) -> None:
    made = replace(_lock(), path=tmp_path / "image.lock")
    made.check_recipes({"hello": COMMIT})
    for current, words in (
        ({"hello": "2" * 40}, "locked at commit 111111111111 but the recipe now pins 222222222222"),
        ({"hello": COMMIT, "zlib": "3" * 40}, "recipe zlib"),
        ({}, "no longer in the recipes"),
    ):
        with pytest.raises(FarmError) as exc:
            made.check_recipes(current)
        assert exc.value.code == "E-IMAGE-LOCK" and words in exc.value.message, exc.value.message
        assert exc.value.file == str(tmp_path / "image.lock") and "mangos-farm image lock" in exc.value.hint

    made.check_farm({"hello": (SHA_B, "hello", COMMIT)})
    with pytest.raises(FarmError) as exc:
        made.check_farm({"hello": (SHA_C, "hello", COMMIT)})  # the verified build is other bytes than locked
    assert exc.value.field == "package[0].sha256" and SHA_C in exc.value.message
    with pytest.raises(FarmError) as exc:
        made.check_farm({"hello": (SHA_B, "hello", "4" * 40)})
    assert exc.value.field == "package[0].commit"
    with pytest.raises(FarmError) as exc:
        made.check_farm({})
    assert "no verified build" in exc.value.message and "rebuild" in exc.value.hint

    made.check_requested(["hello"])
    with pytest.raises(FarmError) as exc:
        made.check_requested(["hello", "systemd"])
    assert exc.value.field == "requested" and "systemd" in exc.value.message

    assert made.check_sde("") == 1700000000 and made.check_sde("1700000000") == 1700000000
    with pytest.raises(FarmError) as exc:
        made.check_sde("5")
    assert exc.value.field == "source-date-epoch" and "SOURCE_DATE_EPOCH=5 mangos-farm image lock" in exc.value.hint


# -- integration: the CLI against the host's apt archive ---------------------------------------------------------
def _cli(home: Path, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MANGOS_FARM_") and k != "SOURCE_DATE_EPOCH"}
    env["MANGOS_FARM_HOME"] = str(home)
    proc = subprocess.run([CLI, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert "Traceback" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _package_set(packages: list[dict[str, Any]]) -> set[tuple[str, str, str, str, str]]:
    return {(p["name"], p["version"], p["arch"], p["sha256"], p["origin"]) for p in packages}


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Any]]:
    """A fresh farm home with no farm builds (every package from the archive) and ``image lock`` run once."""
    require("apt-get")
    require("dpkg-deb")
    root = tmp_path_factory.mktemp("lock")
    (root / "recipes").mkdir()
    home = root / "home"
    data = json.loads(_cli(home, root, "image", "lock", "-o", "image.lock", "--json").stdout)
    return root, home, data


@pytest.mark.integration
def test_image_lock_then_locked_check_inputs_give_the_same_packages(locked: tuple[Path, Path, dict[str, Any]]) -> None:
    root, home, data = locked
    text = (root / "image.lock").read_text()
    assert lock.parse(text, root / "image.lock").to_json() == {
        k: v for k, v in data.items() if k not in ("lock", "digest")
    }
    names = {p["name"] for p in data["package"]}
    assert {"systemd", "linux-image-amd64", "hello", "libc6"} <= names and data["recipes"] == {}
    assert data["source-date-epoch"] == 1700000000

    got = json.loads(_cli(home, root, "image", "build", "--check-inputs", "--lock", "image.lock", "--json").stdout)
    assert _package_set(got["packages"]) == _package_set(data["package"])
    assert got["digest"] == data["digest"] and sorted(got["requested"]) == data["requested"]
    # unlocked, with the same apt lists, resolution gives the same set: the lock is what a build would take
    unlocked = json.loads(_cli(home, root, "image", "build", "--check-inputs", "--json").stdout)
    assert _package_set(unlocked["packages"]) == _package_set(data["package"])
    # locking again writes the same bytes
    _cli(home, root, "image", "lock", "-o", "again.lock")
    assert (root / "again.lock").read_text() == text


@pytest.mark.integration
def test_a_tampered_lock_is_refused(locked: tuple[Path, Path, dict[str, Any]]) -> None:
    root, home, data = locked
    text = (root / "image.lock").read_text()
    dash = next(p for p in data["package"] if p["name"] == "dash")

    # another sha256 for dash: it is downloaded by its pinned version and its bytes do not match
    flipped = dash["sha256"][:-1] + ("0" if dash["sha256"][-1] != "0" else "1")
    (root / "sha.lock").write_text(text.replace(dash["sha256"], flipped))
    proc = _cli(home, root, "image", "build", "--check-inputs", "--lock", "sha.lock", check=False)
    assert proc.returncode == 2 and "E-ARCHIVE-CHECKSUM" in proc.stderr, proc.stderr
    assert "sha.lock" in proc.stderr and f"dash={dash['version']}" in proc.stderr and flipped in proc.stderr
    assert "mangos-farm image lock" in proc.stderr

    # dash's real bytes under another version: the stored .deb is not the package the lock names
    entry = f'arch = "amd64"\norigin = "archive"\nsha256 = "{dash["sha256"]}"'
    edited = text.replace(f'version = "{dash["version"]}"\n{entry}', f'version = "9{dash["version"]}"\n{entry}')
    assert edited != text
    (root / "version.lock").write_text(edited)
    proc = _cli(home, root, "image", "build", "--check-inputs", "--lock", "version.lock", check=False)
    assert proc.returncode == 2 and "E-IMAGE-LOCK" in proc.stderr and "version.lock" in proc.stderr, proc.stderr

    # a version the archive does not have: the download fails and names the package and the fix
    missing = text.replace(f'sha256 = "{dash["sha256"]}"', f'sha256 = "{"e" * 64}"').replace(
        f'version = "{dash["version"]}"\narch', 'version = "0.0.1-mangos"\narch'
    )
    (root / "missing.lock").write_text(missing)
    proc = _cli(home, root, "image", "build", "--check-inputs", "--lock", "missing.lock", check=False)
    assert proc.returncode == 2 and "missing.lock" in proc.stderr and "dash" in proc.stderr, proc.stderr
    assert "mangos-farm image lock" in proc.stderr

    # a recipe added after locking makes the lock stale
    shutil.copy(REPO / "recipes" / "debian" / "hello.toml", root / "recipes" / "hello.toml")
    shutil.copytree(REPO / "patches", root / "patches", dirs_exist_ok=True)  # the recipe's patches/hello/...
    try:
        proc = _cli(home, root, "image", "build", "--check-inputs", "--lock", "image.lock", check=False)
    finally:
        (root / "recipes" / "hello.toml").unlink()
    assert proc.returncode == 2 and "E-IMAGE-LOCK" in proc.stderr and "recipe hello" in proc.stderr, proc.stderr


def _signed_deb(home: Path, dest: Path, sha256: str, name: str, commit: str) -> Path:
    """An archive .deb from the store, signed with the home's builder key as the farm's build of recipe hello."""
    from farm.store import open_store
    from farm.trust.keys import load_builder
    from farm.trust.provenance import sign, statement
    from farm.trust.verify import ENVELOPE_SUFFIX

    dest.mkdir(parents=True, exist_ok=True)
    deb = dest / name
    open_store(str(home / "store")).fetch_blob(sha256, deb)
    stmt = statement(
        subjects=[(name, sha256)], recipe={"name": "hello"}, recipe_digest="0" * 64, source_url="file:///src/hello",
        commit=commit, tree="0" * 40, environment="0" * 64, dependencies=[], builder_id="test-lock",
        build_key="lock-test", started="", finished="",
    )  # fmt: skip
    (dest / (name + ENVELOPE_SUFFIX)).write_text(json.dumps(sign(stmt, load_builder(home / "keys"))))
    return deb


@pytest.mark.integration
def test_a_farm_package_is_locked_to_its_signed_recipe_commit_and_digest(
    locked: tuple[Path, Path, dict[str, Any]], tmp_path: Path
) -> None:
    root, home, data = locked
    if not (home / "keys").exists():
        _cli(home, root, "keys", "generate")
    hello = next(p for p in data["package"] if p["name"] == "hello")
    deb = _signed_deb(home, tmp_path / "debs", hello["sha256"], "hello_2.10-3_amd64.deb", COMMIT)
    lock_path = tmp_path / "farm.lock"
    made = json.loads(_cli(home, root, "image", "lock", "--deb", str(deb), "-o", str(lock_path), "--json").stdout)
    entry = next(p for p in made["package"] if p["name"] == "hello")
    assert entry == hello | {"origin": "farm", "recipe": "hello", "commit": COMMIT}

    args = ("image", "build", "--check-inputs", "--lock", str(lock_path))
    got = json.loads(_cli(home, root, *args, "--deb", str(deb), "--json").stdout)
    assert _package_set(got["packages"]) == _package_set(made["package"])

    proc = _cli(home, root, *args, check=False)  # the farm build is not there
    assert proc.returncode == 2 and "farm package hello" in proc.stderr and "no verified build" in proc.stderr

    other = _signed_deb(home, tmp_path / "other", hello["sha256"], "hello_2.10-3_amd64.deb", "2" * 40)
    proc = _cli(home, root, *args, "--deb", str(other), check=False)  # signed for another commit than locked
    assert proc.returncode == 2 and "E-IMAGE-LOCK" in proc.stderr and "222222222222" in proc.stderr, proc.stderr

    lock_path.write_text(lock_path.read_text().replace(hello["sha256"], "f" * 64))
    proc = _cli(home, root, *args, "--deb", str(deb), check=False)  # the lock's digest is not the signed one
    assert proc.returncode == 2 and "E-IMAGE-LOCK" in proc.stderr and "farm.lock" in proc.stderr, proc.stderr
    assert "the verified build's sha256 is " + hello["sha256"] in proc.stderr
