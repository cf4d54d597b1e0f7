"""A Debian build as a binNMU gives ``Version: V+bN`` .debs naming their source version, of the architecture's own
packages only (``dpkg-buildpackage -B``, as Debian's buildds: the arch-all ones stay the archive's ``V``), and the
build root has ptys (a devpts of its own, as sbuild mounts one: expect/dejagnu test suites need them).

Real dpkg-buildpackage runs in the pinned bookworm environment (made once per session, ~30 s) of tiny native
packages (seconds each), through the worker's own build path.
"""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from farm.build.context import WorkerContext
from farm.build.execute import execute_build
from farm.store import BuildRecord
from farm.trust.keys import BuilderKey
from tests.conftest import require
from tests.integration.conftest import Made
from tests.lib.debsource import debian_recipe, debian_request, native_package
from tests.lib.recipes import worker_context

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ctx(made_env: Made, builder_key: BuilderKey, tmp_path_factory: pytest.TempPathFactory) -> WorkerContext:
    """One worker for the module: the environment is unpacked once into its cache."""
    require("unshare")
    require("dpkg-deb")
    root = tmp_path_factory.mktemp("binnmu")
    return replace(worker_context(root, builder_key, timeout=600), store=made_env.store)


def _record(
    ctx: WorkerContext,
    made_env: Made,
    repo: Path,
    name: str,
    build: list[str],
    *,
    extra: dict[str, str] | None = None,
    **recipe: object,
) -> BuildRecord:
    commit = native_package(repo, name, build, extra=extra)
    built = replace(debian_recipe(repo, name, commit), **recipe)  # type: ignore[arg-type]
    outcome = execute_build(debian_request(built, repo, made_env.record.digest), ctx)
    assert outcome.ok and outcome.record is not None, outcome.log_tail
    return BuildRecord.from_json(outcome.record)


# nmu (Architecture: any) and nmu-doc (Architecture: all): binary-arch builds the one, binary-indep the other.
ARCH_AND_ALL = {
    "debian/control": (
        "Source: nmu\nSection: misc\nPriority: optional\nMaintainer: T <t@example.org>\nStandards-Version: 4.6.2\n"
        "Rules-Requires-Root: no\n\nPackage: nmu\nArchitecture: any\nDescription: arch\n a\n\n"
        "Package: nmu-doc\nArchitecture: all\nDescription: all\n b\n"
    ),
    "debian/rules": (
        "#!/usr/bin/make -f\n"
        "build build-arch build-indep:\n\thead -n 3 debian/changelog | sed 's/^/probe: /'\n"
        "binary: binary-arch binary-indep\n"
        "binary-arch: build\n\t$(call deb,nmu)\n"
        "binary-indep: build\n\t$(call deb,nmu-doc)\n"
        "define deb\n"
        "rm -rf debian/$(1) && mkdir -p debian/$(1)/DEBIAN debian/$(1)/usr/share/$(1)\n"
        "\techo built > debian/$(1)/usr/share/$(1)/built && chmod -R u=rwX,go=rX debian/$(1)\n"
        "\tdpkg-gencontrol -p$(1) -Pdebian/$(1)\n"
        "\tdpkg-deb --root-owner-group --build debian/$(1) ..\n"
        "endef\n"
        "clean:\n\trm -rf debian/nmu debian/nmu-doc debian/files\n"
    ),
}


def test_a_binnmu_build_gives_debs_versioned_as_the_binnmu(ctx: WorkerContext, made_env: Made, tmp_path: Path) -> None:
    record = _record(
        ctx,
        made_env,
        tmp_path / "nmu",
        "nmu",
        [],
        extra=ARCH_AND_ALL,
        binnmu=1,
        binnmu_message="Rebuild for the farm's test",
    )
    debs = {n: d for n, d in record.outputs().items() if n.endswith(".deb")}
    # only the architecture's package, as a buildd builds a binNMU (-B): no nmu-doc 1.0+b1 the archive never has
    assert list(debs) == ["nmu_1.0+b1_amd64.deb"], record.outputs()
    deb = tmp_path / "nmu.deb"
    deb.write_bytes(ctx.store.get_bytes(debs["nmu_1.0+b1_amd64.deb"]))
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Version", "Source"], capture_output=True, check=True)
    assert fields.stdout.decode() == "Version: 1.0+b1\nSource: nmu (1.0)\n"
    log = ctx.store.get_bytes(record.log).decode()
    assert "==> binNMU 1: binaries versioned 1.0+b1\n" in log and "==> dpkg-buildpackage -B in " in log
    assert "probe: nmu (1.0+b1) unstable; urgency=low, binary-only=yes\n" in log
    assert "probe:   * Binary-only non-maintainer upload for amd64; no source changes.\n" in log
    assert [n for n in record.outputs() if n.endswith(".buildinfo") and n.startswith("nmu_1.0+b1_")], record.outputs()


def test_the_build_root_has_ptys(ctx: WorkerContext, made_env: Made, tmp_path: Path) -> None:
    build = [
        "test -c /dev/pts/ptmx && test -L /dev/ptmx",
        "script -qec 'test -t 0 && echo \"probe: pty=$$(tty)\"' /dev/null",
    ]
    record = _record(ctx, made_env, tmp_path / "pty", "pty", build)
    log = ctx.store.get_bytes(record.log).decode()
    assert "probe: pty=/dev/pts/0" in log, log[-3000:]
