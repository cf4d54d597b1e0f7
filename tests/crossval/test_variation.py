"""A variation reaches the sandbox command lines it is meant to change, and nothing changes without one."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.build import debian as debian_build
from farm.build import sandbox
from farm.build.variation import Variation

pytestmark = pytest.mark.unit

V = Variation()


def _spec(**kw: object) -> sandbox.SandboxSpec:
    return sandbox.SandboxSpec(src=Path("/s"), out=Path("/o"), home=Path("/h"), **kw)  # type: ignore[arg-type]


def test_bwrap_hostname_and_uid_follow_the_spec() -> None:
    plain = sandbox.bwrap_argv(_spec(), ["true"])
    varied = sandbox.bwrap_argv(_spec(hostname=V.hostname, uid=V.uid), ["true"])
    assert plain[plain.index("--hostname") + 1] == sandbox.HOSTNAME
    assert varied[varied.index("--hostname") + 1] == V.hostname
    assert varied[varied.index("--uid") + 1] == varied[varied.index("--gid") + 1] == str(V.uid)


def test_debian_scripts_carry_the_variation() -> None:
    assert debian_build.inner_script(5, 1) == debian_build.inner_script(5, 1, None)
    inner = debian_build.inner_script(5, 1, V)
    assert f"umask {V.umask:03o}" in inner and "umask 022" not in inner
    assert f"--reuid={V.uid}" in inner and f"TZ={V.tz}" in inner and "LC_ALL=C " in inner
    assert f"FAKETIME=+{V.clock_shift_days}d" in inner and f"LD_PRELOAD={debian_build.FAKETIME_LIB}" in inner
    assert f"parallel={V.jobs}" in inner
    paths = (Path("/l"), Path("/y"), Path("/s"), Path("/r"), Path("/o"))

    def outer_script(**kw: object) -> str:
        lower, layer, src, repo, out = paths
        return debian_build.outer_script(lower=lower, layer=layer, src=src, repo=repo, out=out, inner="x", **kw)  # type: ignore[arg-type]

    outer = outer_script(hostname=V.hostname, faketime=True)
    assert f"hostname {V.hostname}" in outer and f"mount --bind -o ro {debian_build.FAKETIME_LIB}" in outer
    plain = outer_script()
    assert f"hostname {debian_build.HOSTNAME}" in plain and "faketime" not in plain


def test_file_order_variation_mounts_a_shuffled_view() -> None:
    from farm.build.variation import disorderfs_argv

    argv = disorderfs_argv(Path("/w/src"), Path("/w/src-disordered"))
    assert argv[0] == "disorderfs" and "--shuffle-dirents=yes" in argv and argv[-2:] == ["/w/src", "/w/src-disordered"]
    assert V.file_order and not Variation.unvaried().file_order
