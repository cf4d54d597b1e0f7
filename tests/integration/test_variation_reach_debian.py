"""The variations reach a Debian build (chroot over overlay): a tiny native package that records its build path,
the directory order of its source and the locale's date format is caught by a varied recheck with each cause,
and dpkg-buildpackage succeeds with its source seen through disorderfs, as a uid other than the mounter's."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from farm.build import BuildRequest
from farm.build.execute import execute_build
from farm.build.variation import Variation
from farm.crossval.recheck import recheck_one
from farm.crossval.results import results_dir
from farm.identity import build_key
from farm.recipes import Recipe, Source
from farm.store import BuildRecord
from tests.conftest import require
from tests.crossval.helpers import make_org
from tests.integration.conftest import Made
from tests.lib.git import commit_files, git

pytestmark = pytest.mark.integration

CONTROL = """\
Source: probe
Section: misc
Priority: optional
Maintainer: Farm Test <test@mangos.invalid>
Standards-Version: 4.6.2
Rules-Requires-Root: no

Package: probe
Architecture: all
Description: records how it was built
 Its build path, the order of its source directory and a date in the build's locale.
"""
CHANGELOG = """\
probe (1.0) unstable; urgency=medium

  * Probe the build environment.

 -- Farm Test <test@mangos.invalid>  Tue, 03 Feb 2026 04:05:06 +0000
"""
RULES = """\
#!/usr/bin/make -f
D := debian/tmp/usr/share/probe
build build-arch build-indep:
\t@echo "probe: building in $$(pwd)"
binary binary-arch binary-indep: build
\trm -rf debian/tmp
\tmkdir -p debian/tmp/DEBIAN $(D)
\tpwd > $(D)/where
\tfind data -type f > $(D)/order
\tdate -u -d "@$$SOURCE_DATE_EPOCH" +%c > $(D)/when
\tchmod -R u=rwX,go=rX debian/tmp
\tdpkg-gencontrol -pprobe -Pdebian/tmp
\tdpkg-deb --root-owner-group --build debian/tmp ..
clean:
\trm -rf debian/tmp debian/files
"""


def test_build_path_order_and_locale_reach_a_debian_build(made_env: Made, tmp_path: Path) -> None:
    for tool in ("unshare", "disorderfs", "diffoscope", "localedef", "faketime"):
        require(tool)
    repo = tmp_path / "probe"
    files = {"debian/control": CONTROL, "debian/changelog": CHANGELOG, "debian/rules": RULES}
    files |= {"debian/source/format": "3.0 (native)\n"} | {f"data/f{i:02d}": f"{i}\n" for i in range(24)}
    commit = commit_files(repo, files, executable=("debian/rules",))
    recipe = Recipe(
        name="probe",
        version="1.0",
        source=Source(git=str(repo), commit=commit),
        steps=(),
        outputs=("*.deb", "*.buildinfo"),
        kind="debian",
        environment="bookworm-amd64",
    )
    tree = git(repo, "rev-parse", f"{commit}^{{tree}}")
    env = made_env.record.digest
    req = BuildRequest(
        build_key=build_key(recipe.content(), commit, tree, env, {}),
        recipe=recipe.content(),
        recipe_path=str(repo / "probe.toml"),
        fetch_url=str(repo),
        tree=tree,
        environment=env,
    )
    org = make_org(tmp_path, "alpha")
    ctx = replace(org.context(), store=made_env.store, timeout=1200)
    outcome = execute_build(req, ctx)
    assert outcome.ok, outcome.log_tail
    assert outcome.record is not None
    record = BuildRecord.from_json(outcome.record)
    normal_log = made_env.store.get_bytes(record.log)
    assert b"probe: building in /build/src\n" in normal_log

    variation = Variation()
    result = recheck_one(req, record, replace(ctx, variation=variation), org.settings)
    assert result.error in ("", None), result.error
    log = made_env.store.get_bytes(result.log)
    assert f"probe: building in {variation.build_dir}\n".encode() in log  # dpkg-buildpackage ran there
    assert not result.reproducible and result.differing == ["probe_1.0_all.deb"], result
    report = (results_dir(org.settings) / record.build_key / "probe_1.0_all.deb.diffoscope.txt").read_text()
    assert {"paths", "file order", "locale"} <= set(result.causes), (result.causes, report)
