"""``recipes import --image``: every source behind the image's packages imported, kept, reused or reported unavailable.

A local archive (tests/lib/debarchive.py) served over HTTP on loopback from two roots, as Debian serves its main and
security suites: bookworm from /archive/, bookworm-security from /security/ (a copy). The image's packages:
p and libp1 (source p, build-depends q) and q (build-depends libp1): a cycle; r, whose security version's files
neither root serves; s, whose security version only the bookworm root still serves; y, which another recipe set
already has. The import runs through the CLI, on a real environment record, with the image resolution replaced
by those pins (the resolution itself is ``image lock``'s).
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from farm.archive import Pin
from farm.cli.main import main
from farm.recipes import load_dir
from tests.conftest import require
from tests.integration.conftest import Made
from tests.lib.debarchive import LocalArchive

pytestmark = pytest.mark.integration

SEC = "1.0-1+deb12u1"
PINS = [
    Pin("p", "1.0-1", "amd64"),
    Pin("libp1", "1.0-1", "amd64"),
    Pin("q", "1.0-1", "amd64"),
    Pin("r", SEC, "amd64"),
    Pin("s", SEC, "amd64"),
    Pin("y", "2.0-1", "amd64"),
]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        del format, args


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """An HTTP server on 127.0.0.1 serving tmp_path/www."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield www, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


@pytest.fixture
def archive(made_env: Made, served: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalArchive:
    del made_env
    for tool in ("apt-get", "dpkg-source", "dpkg-scansources", "dpkg-scanpackages", "git"):
        require(tool)
    www, url = served
    local = LocalArchive(tmp_path / "local")
    local.add(name="p", version="1.0-1", binaries=("p", "libp1"), build_depends=("q",))
    local.add(name="q", version="1.0-1", binaries=("q",), build_depends=("libp1",))
    for name in ("r", "s"):
        local.add(name=name, version="1.0-1", binaries=(name,))
        local.add(name=name, version=SEC, suite="bookworm-security", binaries=(name,))
    local.add(name="y", version="2.0-1", binaries=("y",))
    (www / "archive").symlink_to(local.archive_dir)
    (www / "security").symlink_to(local.archive_dir)
    (local.apt_dir / "etc" / "sources.list").write_text(
        "".join(
            f"deb [trusted=yes] {url}/{root}/ {suite} main\ndeb-src [trusted=yes] {url}/{root}/ {suite} main\n"
            for root, suite in (("archive", "bookworm"), ("security", "bookworm-security"))
        )
    )
    local.publish()
    (www / "security").unlink()  # the security root becomes a mirror of its own that lacks r's and s's files
    shutil.copytree(local.archive_dir, www / "security")
    for name in ("r", "s"):
        for path in (www / "security" / "pool" / "bookworm-security" / "main" / name).glob(f"{name}_{SEC}*"):
            path.unlink()
    for path in local.pool("bookworm-security", "r").glob(f"r_{SEC}*"):
        path.unlink()  # r: no root serves it
    local.use(monkeypatch)
    monkeypatch.setattr("farm.cli.recipes.image_pins", lambda profile, work: list(PINS))
    return local


@pytest.fixture
def home(made_env: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / "envs").mkdir(parents=True)
    shutil.copy(made_env.records_dir / "bookworm-amd64.json", home / "envs")
    monkeypatch.setenv("MANGOS_FARM_STORE", made_env.store.url)
    return home


def run_import(home: Path, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    rc = main(["--home", str(home), "recipes", "import", "--image", "--dir", str(out), "--json", *extra])
    captured = capsys.readouterr()
    assert captured.out, f"exit {rc}, no JSON; stderr:\n{captured.err}"
    return rc, json.loads(captured.out)


def snapshot(directory: Path) -> dict[str, bytes | str]:
    return {
        p.name: (f"-> {p.readlink()}" if p.is_symlink() else p.read_bytes())
        for p in sorted(directory.iterdir())
        if p.is_file() or p.is_symlink()
    }


def test_image_closure_import(
    archive: LocalArchive, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del archive
    recipes = tmp_path / "recipes"
    (recipes / "debian").mkdir(parents=True)
    y = (
        '# kept\nname = "y"\nversion = "2.0-1"\noutputs = ["*.deb"]\n[source]\ndsc = "y=2.0-1"\n'
        f'commit = "{"0" * 40}"\n[build]\nkind = "debian"\nenvironment = "bookworm-amd64"\n'
    )
    (recipes / "debian" / "y.toml").write_text(y)
    out = recipes / "base"

    rc, result = run_import(home, out, capsys)
    assert rc == 1 and result["ok"] is False  # r could not be had
    by_name = {p["name"]: p for p in result["packages"]}
    assert {n: p["status"] for n, p in by_name.items()} == {
        "p": "imported", "q": "imported", "r": "unavailable", "s": "imported", "y": "kept",
    }  # fmt: skip
    assert result["counts"] == {"imported": 3, "kept": 1, "unavailable": 1}
    # r: every suite's root tried, each answering 404; never the older 1.0-1 in its place
    r = by_name["r"]
    assert r["version"] == SEC and r["http_status"] == 404
    assert [a["http_status"] for a in r["attempts"]] == [404, 404]
    assert [a["url"].split("/")[3] for a in r["attempts"]] == ["security", "archive"]
    assert all(a["url"].endswith(f"pool/bookworm-security/main/r/r_{SEC}.dsc") for a in r["attempts"])
    # s: the security root lacks it, the bookworm root serves the same pool directory
    s = by_name["s"]
    assert s["version"] == SEC and [a["http_status"] for a in s["attempts"]] == [404, 200]
    assert s["url"].split("/")[3] == "archive" and s["http_status"] == 200
    # y: reused from the other set, not duplicated
    assert (out / "y.toml").is_symlink() and (out / "y.toml").read_text() == y
    # the cycle p <-> q: one edge stays, the other takes the archive's binary
    assert result["bootstrap_edges"] == [["p", "q", "1.0-1"]]
    assert (by_name["p"]["build_depends"], by_name["q"]["build_depends"]) == ([], ["p"])
    p_toml, q_toml = (out / "p.toml").read_text(), (out / "q.toml").read_text()
    assert 'bootstrap = [\n  { recipe = "q", version = "1.0-1" },\n]' in p_toml
    assert '{ package = "q", version = "1.0-1"' in p_toml  # q's binary pinned from the archive
    assert '"libp1"' not in q_toml  # p is a farm edge of q: libp1 comes from the farm's build of p
    unavailable = json.loads((out / "unavailable.json").read_text())["unavailable"]
    assert [(u["name"], u["version"]) for u in unavailable] == [("r", SEC)]
    assert "404" in unavailable[0]["reason"]

    # recipes check passes on the set: no unknown recipe, no cycle
    loaded = load_dir(out)
    assert sorted(loaded.recipes) == ["p", "q", "s", "y"]
    assert loaded.recipes["p"].bootstrap == (("q", "1.0-1"),)

    # a second run writes the same files (it keeps what is there)
    before = snapshot(out)
    rc, again = run_import(home, out, capsys)
    assert rc == 1 and {p["status"] for p in again["packages"] if p["name"] != "r"} == {"kept"}
    assert snapshot(out) == before
    # and a recipe imported again comes out byte for byte the same
    (out / "p.toml").unlink()
    rc, third = run_import(home, out, capsys)
    assert {p["name"]: p["status"] for p in third["packages"]}["p"] == "imported"
    assert third["bootstrap_edges"] == [["p", "q", "1.0-1"]]
    assert snapshot(out) == before
    # re-importing one recipe by name (as `recipes update` does) keeps its cycle cut where it was
    capsys.readouterr()
    assert main(["--home", str(home), "recipes", "import", "p", "--dir", str(out), "--json"]) == 0
    assert snapshot(out) == before


def test_bad_input_exits_2(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--home", str(home), "recipes", "import", "--dir", str(tmp_path / "out")]
    assert main([*base, "--image", "hello"]) == 2
    assert main([*base, "--profile", "docker", "hello"]) == 2
    assert main(base) == 2
    assert "--image" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse: an unknown profile is a usage error
        main([*base, "--image", "--profile", "nosuch"])
    assert exc.value.code == 2
