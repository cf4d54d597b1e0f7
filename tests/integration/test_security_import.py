"""recipes import takes the source of what the image would install, security suite included, and never an older one.

Against a local archive served to the real apt (tests/lib/debarchive.py: x 1.0-1 in bookworm, x 1.0-1+deb12u1 in
bookworm-security, real dpkg-source packages) and against this machine's archive, whose security pool serves the
Sources index but answers 404 for the files. Each import runs through the CLI on a real environment record.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import pytest

from farm.archive.versions import ArchiveVersions
from farm.cli.main import main
from farm.run import run
from farm.sources.apt import archive_label, configured_lists, source_lists
from tests.conftest import require
from tests.integration.apt_sources import require_deb_src
from tests.integration.conftest import Made
from tests.lib.debarchive import LocalArchive

pytestmark = pytest.mark.integration

SECURITY = "1.0-1+deb12u1"


@pytest.fixture
def home(made_env: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A farm home with the environment's record (its own source cache), the environment's store configured."""
    home = tmp_path / "home"
    (home / "envs").mkdir(parents=True)
    shutil.copy(made_env.records_dir / "bookworm-amd64.json", home / "envs")
    monkeypatch.setenv("MANGOS_FARM_STORE", made_env.store.url)
    return home


@pytest.fixture
def archive(made_env: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LocalArchive:
    """x 1.0-1 (bookworm), x 1.0-1+deb12u1 (bookworm-security), y 2.0-1 (bookworm, two binaries), published and
    made the apt every farm call sees (after the environment was made with the host's apt)."""
    del made_env
    for tool in ("apt-get", "dpkg-source", "dpkg-scansources", "dpkg-scanpackages", "git"):
        require(tool)
    local = LocalArchive(tmp_path / "archive")
    local.add(name="x", version="1.0-1", suite="bookworm")
    local.add(name="x", version=SECURITY, suite="bookworm-security", changes="Fix CVE-2099-0001.")
    local.add(name="y", version="2.0-1", suite="bookworm", binaries=("y", "liby1"))
    local.publish()
    local.use(monkeypatch)
    return local


def import_json(home: Path, out: Path, *specs: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    rc = main(["--home", str(home), "recipes", "import", *specs, "--dir", str(out), "--json"])
    captured = capsys.readouterr()
    assert captured.out, f"exit {rc}, no JSON; stderr:\n{captured.err}"
    return rc, json.loads(captured.out)


def test_local_archive_is_what_apt_and_the_farm_see(archive: LocalArchive) -> None:
    assert configured_lists() == archive.lists_dir
    labels = sorted(archive_label(p) for p in source_lists(archive.lists_dir))
    assert labels == ["Debian bookworm", "Debian bookworm-security"]
    policy = run(["apt-cache", "policy", "x"]).text  # farm.run inherits os.environ: APT_CONFIG included
    assert f"Candidate: {SECURITY}" in policy
    found = ArchiveVersions.load({"x"}, archive.lists_dir).source_candidate("x", ["x"], "amd64")
    assert found is not None and found.source_version == SECURITY and found.archive == "Debian bookworm-security"


def test_import_pins_the_security_version(
    archive: LocalArchive, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del archive
    out = tmp_path / "recipes"
    rc, result = import_json(home, out, "x", "y", capsys=capsys)
    assert rc == 0, result
    assert result["ok"] is True and result["failed"] == []
    by_name = {r["name"]: r for r in result["recipes"]}
    assert by_name["x"]["version"] == SECURITY and by_name["x"]["candidate"] == SECURITY
    assert by_name["x"]["older_than_candidate"] is False
    data = tomllib.loads((out / "x.toml").read_text())
    assert data["version"] == SECURITY
    assert data["source"]["dsc"] == f"x={SECURITY}"
    assert data["build"]["archive"] == []  # build-essential only: the environment has it all
    assert tomllib.loads((out / "y.toml").read_text())["version"] == "2.0-1"
    log = run(["git", "--git-dir", str(home / "cache" / "dsc" / "x_1.0-1+deb12u1.git"), "log", "-1"]).text
    assert "from Debian bookworm-security" in log


def test_explicit_older_version_is_honoured_and_said_older(
    archive: LocalArchive, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    del archive
    rc, result = import_json(home, tmp_path / "recipes", "x=1.0-1", capsys=capsys)
    assert rc == 0, result
    (x,) = result["recipes"]
    assert (x["version"], x["candidate"], x["older_than_candidate"]) == ("1.0-1", SECURITY, True)
    assert tomllib.loads((tmp_path / "recipes" / "x.toml").read_text())["version"] == "1.0-1"


def test_unavailable_security_source_is_reported_not_downgraded(
    archive: LocalArchive, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert archive.remove_source_files("x", SECURITY)  # the index still lists it; the pool no longer serves it
    out = tmp_path / "recipes"
    rc, result = import_json(home, out, "x", "y", capsys=capsys)
    assert rc == 1
    assert result["ok"] is False
    (failed,) = result["failed"]
    assert (failed["status"], failed["name"], failed["version"]) == ("unavailable", "x", SECURITY)
    assert failed["error"]["code"] == "E-SOURCE-UNAVAILABLE"
    assert "explicitly" in failed["error"]["hint"] and "--allow-archive-fallback" in failed["error"]["hint"]
    assert [r["name"] for r in result["recipes"]] == ["y"]  # the batch went on
    assert sorted(p.name for p in out.iterdir()) == ["y.toml"]  # no x.toml, and not 1.0-1 in its place


def test_real_archive_zlib_is_unavailable_at_its_security_version(
    made_env: Made, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """This machine's archive: zlib1g's candidate comes from bookworm-security, whose pool answers 404 for sources.

    An existing zlib recipe (at the older version) is left exactly as it was."""
    del made_env
    require_deb_src()
    found = ArchiveVersions.load({"zlib1g"}).source_candidate("zlib", ["zlib1g"], "amd64")
    if found is None or not found.security:
        pytest.skip(f"zlib1g's candidate is not from a security suite here ({found})")
    out = tmp_path / "recipes"
    out.mkdir()
    existing = '# kept\nname = "zlib"\nversion = "1:1.2.13.dfsg-1"\n[build]\nkind = "debian"\n'
    (out / "zlib.toml").write_text(existing)
    rc, result = import_json(home, out, "zlib", capsys=capsys)
    assert rc == 1, result
    (failed,) = result["failed"]
    assert (failed["name"], failed["version"], failed["status"]) == ("zlib", found.source_version, "unavailable")
    assert failed["version"] == "1:1.2.13.dfsg-1+deb12u1"
    assert failed["error"]["code"] == "E-SOURCE-UNAVAILABLE" and "404" in failed["error"]["message"]
    assert result["recipes"] == []
    assert (out / "zlib.toml").read_text() == existing
