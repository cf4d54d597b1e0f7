"""Every variation of the table really reaches a git recipe's build (bubblewrap), and a recipe that depends on the
build path, the locale's date format or directory order is caught by a varied recheck with that cause."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from farm.build.variation import Variation
from farm.crossval.recheck import recheck_one
from farm.store import open_store
from tests.conftest import require
from tests.crossval.helpers import Org, make_org, request, source_repo

pytestmark = pytest.mark.integration

V = Variation()
FILES = {f"data/part{i:02d}.txt": f"part {i}\n" for i in range(24)} | {"README": "probe\n"}
PROBE = (
    "{ echo pwd=$(pwd); echo src=$SRC; echo kernel=$(uname -r); echo cpus=$(nproc); echo host=$(hostname);"
    " echo domain=$(domainname); echo user=$(id -un 2>/dev/null); echo uid=$(id -u):$(id -g);"
    " echo umask=$(umask); echo tz=$TZ; echo zone=$(date +%Z); echo locale=$LC_ALL;"
    ' echo when=$(date -u -d "@$SOURCE_DATE_EPOCH" +%c); echo year=$(date +%Y);'
    ' echo order=$(find data -type f | tr "\\n" " "); } > "$OUT/probe.txt"'
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, Org]:
    for tool in ("bwrap", "faketime", "diffoscope", "disorderfs", "localedef", "setarch", "taskset"):
        require(tool)
    root = tmp_path_factory.mktemp("reach")
    commit = source_repo(root / "src", FILES)
    return root / "src", commit, make_org(root, "alpha")


def _values(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines())


def test_every_variation_reaches_the_sandbox(setup: tuple[Path, str, Org]) -> None:
    repo, commit, org = setup
    req = request(repo, commit, "probe", [PROBE], ["probe.txt"])
    normal_record = org.build(req)
    store = open_store(org.settings.store_url)
    normal = _values(store.get_bytes(normal_record.outputs()["probe.txt"]).decode())
    result = recheck_one(req, normal_record, replace(org.context(), variation=V), org.settings)
    assert not result.reproducible, result
    varied = _values(store.get_bytes(result.varied["probe.txt"]).decode())
    # the normal build: exactly what it always was
    assert normal["pwd"] == normal["src"] == "/build/src" and normal["host"] == "mangos-build"
    assert normal["uid"] == "1000:1000" and normal["user"] in ("", "1000") and normal["umask"] == "0022"
    assert normal["tz"] == "UTC" and normal["locale"] == "C.UTF-8" and normal["when"] == "Tue Feb 3 04:05:06 2026"
    # the varied build: every row of the table
    assert varied["pwd"] == varied["src"] == V.build_dir
    assert varied["kernel"].startswith("2.6.") and not normal["kernel"].startswith("2.6.")
    if (os.cpu_count() or 1) > 1:
        assert varied["cpus"] == "1" and normal["cpus"] != "1"
    assert (varied["host"], varied["domain"]) == (V.hostname, V.domain) and normal["domain"] != V.domain
    assert varied["user"] == V.user and varied["uid"] == f"{V.uid}:{V.uid}" and varied["umask"] == "0002"
    assert varied["tz"] == V.tz and varied["zone"] == "+14" and varied["locale"] == V.locale
    assert varied["when"].startswith("Di 03 Feb 2026"), varied["when"]  # de_CH's date format: really compiled
    assert int(varied["year"]) - int(normal["year"]) >= 1  # 398 days ahead
    assert varied["order"] != normal["order"] and sorted(varied["order"].split()) == sorted(normal["order"].split())


@pytest.mark.parametrize(
    ("name", "step", "cause"),
    [
        ("embeds-pwd", 'echo "built in $PWD" > "$OUT/out.txt"', "paths"),
        ("embeds-date-format", 'date -u -d "@$SOURCE_DATE_EPOCH" +%c > "$OUT/out.txt"', "locale"),
        ("depends-on-order", 'find data -type f > "$OUT/out.txt"', "file order"),
    ],
)
def test_recipe_is_caught_with_its_cause(setup: tuple[Path, str, Org], name: str, step: str, cause: str) -> None:
    repo, commit, org = setup
    req = request(repo, commit, name, [step], ["out.txt"])
    record = org.build(req)
    result = recheck_one(req, record, replace(org.context(), variation=V), org.settings)
    assert not result.reproducible and result.differing == ["out.txt"], result
    assert result.causes == [cause], result
    # and the normal environment rebuilds it identically: the difference is the variation's
    same = recheck_one(req, record, replace(org.context(), variation=Variation.unvaried()), org.settings)
    assert same.reproducible, same
