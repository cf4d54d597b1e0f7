"""farm.sources.dsc against the real archive: hello imported twice gives the same commit; bad input is refused.

Needs a deb-src entry ('make apt' writes one) and the archive reachable; a handful of seconds in all.
"""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from farm.errors import E, FarmError
from farm.sources import dsc
from tests.integration.apt_sources import require_deb_src

pytestmark = pytest.mark.integration

NAME = "hello"


@pytest.fixture(scope="module")
def version() -> str:
    require_deb_src()
    out = subprocess.run(["apt-cache", "showsrc", NAME], capture_output=True, text=True, check=True).stdout
    versions = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Version:")]
    assert versions, out
    return versions[0]


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), *args], capture_output=True, text=True, check=True).stdout


def test_same_dsc_same_commit(tmp_path: Path, version: str) -> None:
    first = dsc.import_dsc(NAME, version, tmp_path / "cache-a")
    second = dsc.import_dsc(NAME, version, tmp_path / "cache-b")
    assert first.commit == second.commit
    assert first.tree == second.tree
    assert first.repo != second.repo
    assert first.repo == tmp_path / "cache-a" / "dsc" / f"{NAME}_{dsc.dep14(version)}.git"
    assert first.tag == f"debian/{dsc.dep14(version)}"

    repo = first.repo
    assert _git(repo, "rev-parse", f"refs/tags/{first.tag}").strip() == first.commit
    assert _git(repo, "rev-parse", "refs/heads/main").strip() == first.commit
    files = _git(repo, "ls-tree", "-r", "--name-only", first.commit).splitlines()
    assert "debian/control" in files
    assert "debian/changelog" in files
    body = _git(repo, "cat-file", "commit", first.commit)
    assert "author MANGOS import <import@mangos.invalid>" in body
    assert "committer MANGOS import <import@mangos.invalid>" in body
    assert f"Import {NAME} {version} from " in body
    assert "gpgsig" not in body
    assert not (repo / "import.index").exists()
    assert [p.name for p in repo.parent.iterdir() if p.name.startswith(".")] == []  # no temp directory left

    again = dsc.import_dsc(NAME, version, tmp_path / "cache-a")  # cached: no download
    assert again == first


def test_concurrent_importers_share_one_import(tmp_path: Path, version: str) -> None:
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: dsc.import_dsc(NAME, version, tmp_path / "cache"), range(3)))
    assert len({r.commit for r in results}) == 1


def test_unknown_version(tmp_path: Path, version: str) -> None:
    with pytest.raises(FarmError) as err:
        dsc.import_dsc(NAME, "0.0.0-0", tmp_path / "cache")
    assert err.value.code == E.DSC_UNKNOWN
    assert f"{NAME}=0.0.0-0" in err.value.message
    assert f"apt-cache showsrc {NAME}" in err.value.hint
    assert not (tmp_path / "cache" / "dsc" / f"{NAME}_0.0.0-0.git").exists()
    with pytest.raises(FarmError) as err:  # the same answer straight from apt-get source
        dsc.fetch(NAME, "0.0.0-0", tmp_path / "dl")
    assert err.value.code == E.DSC_UNKNOWN


def test_tampered_download_is_refused(tmp_path: Path, version: str) -> None:
    downloaded = tmp_path / "dl"
    dsc_path = dsc.fetch(NAME, version, downloaded)
    orig = next(p for p in downloaded.iterdir() if ".orig.tar" in p.name and not p.name.endswith(".asc"))
    data = bytearray(orig.read_bytes())
    data[len(data) // 2] ^= 0xFF
    orig.write_bytes(bytes(data))
    with pytest.raises(FarmError) as err:
        dsc.import_dsc(NAME, version, tmp_path / "cache", downloaded=downloaded)
    assert err.value.code == E.DSC_CHECKSUM
    assert orig.name in err.value.message
    assert dsc.sha256_file(orig) in err.value.message
    assert not dsc.repo_path(tmp_path / "cache", NAME, version).exists()

    # a .dsc edited to match edited files: only the signed index catches it
    good = tmp_path / "good"
    shutil.copytree(downloaded, good)
    text = dsc_path.read_text()
    listed = dsc.sha256_file(orig)
    for line in text.splitlines():
        if line.endswith(f" {orig.name}") and len(line.split()) == 3 and len(line.split()[0]) == 64:
            text = text.replace(line, f" {listed} {orig.stat().st_size} {orig.name}")
    (good / dsc_path.name).write_text(text)
    dsc.check_dsc_files(good / dsc_path.name)  # self-consistent now
    with pytest.raises(FarmError) as err:
        dsc.import_dsc(NAME, version, tmp_path / "cache", downloaded=good)
    assert err.value.code == E.DSC_CHECKSUM
    assert dsc_path.name in err.value.message
