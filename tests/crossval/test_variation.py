"""The variation table drives the Variation and the README, reaches the sandbox command lines it is meant to
change, and nothing changes without one."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from farm.build import debian as debian_build
from farm.build import sandbox
from farm.build.variation import (
    TABLE,
    VARIATIONS_VERSION,
    Variation,
    clamp_mtimes,
    disorderfs_argv,
    locale_parts,
    readme_table,
)
from farm.crossval.diffreport import CAUSES
from farm.crossval.dispatch import variation_from_json

pytestmark = pytest.mark.unit

V = Variation()
U = Variation.unvaried()
README = Path(__file__).resolve().parents[2] / "README.md"
PATHS = (Path("/l"), Path("/y"), Path("/s"), Path("/r"), Path("/o"))


def _spec(**kw: object) -> sandbox.SandboxSpec:
    return sandbox.SandboxSpec(src=Path("/s"), out=Path("/o"), home=Path("/h"), **kw)  # type: ignore[arg-type]


def _outer(**kw: object) -> str:
    lower, layer, src, repo, out = PATHS
    return debian_build.outer_script(lower=lower, layer=layer, src=src, repo=repo, out=out, inner="x", **kw)  # type: ignore[arg-type]


def test_readme_table_is_the_code_table() -> None:
    text = README.read_text()
    found = re.search(r"<!-- variations:begin -->\n(.*?)<!-- variations:end -->", text, re.DOTALL)
    assert found is not None, "README.md has no generated variations table"
    assert found.group(1) == readme_table(), "regenerate: python -c 'from farm.build.variation import *; ...'"
    assert f"version {VARIATIONS_VERSION}" in found.group(1)


def test_table_drives_both_variations_and_every_row_differs() -> None:
    by_field = {d.field: d for d in TABLE}
    assert len(by_field) == len(TABLE)
    for d in TABLE:
        assert getattr(V, d.field) == d.varied != d.normal == getattr(U, d.field), d.name
        assert d.cause in CAUSES, d.cause
    assert {f.name for f in fields(Variation)} == set(by_field) | {"build_path"}
    assert V.clock_shift_days == 398 and V.locale in ("de_CH.UTF-8", "tr_TR.UTF-8")
    assert V.build_dir != sandbox.SRC and len(V.build_dir) > 40 and U.build_dir == sandbox.SRC
    assert variation_from_json(V.to_json()) == V and variation_from_json(U.to_json()) == U


def test_bwrap_follows_a_varied_spec_and_a_plain_one_is_unchanged() -> None:
    plain = sandbox.bwrap_argv(_spec(), ["true"])
    assert plain[0] == "bwrap" and plain[plain.index("--hostname") + 1] == sandbox.HOSTNAME
    assert plain[plain.index("--chdir") + 1] == sandbox.SRC and "/etc/passwd" not in plain
    spec = _spec(
        hostname=V.hostname,
        uid=V.uid,
        build_dir=V.build_dir,
        domainname=V.domain,
        binds=(("/v/locale", "/usr/lib/locale"), ("/v/passwd", "/etc/passwd")),
    )
    varied = sandbox.bwrap_argv(spec, ["true"])
    start = varied.index("bwrap")
    assert varied[:3] == ["unshare", "--uts", "--"] and V.domain in varied[:start]
    assert varied[varied.index("--hostname") + 1] == V.hostname
    assert varied[varied.index("--uid") + 1] == varied[varied.index("--gid") + 1] == str(V.uid)
    assert varied[varied.index("--chdir") + 1] == V.build_dir
    at = varied.index(V.build_dir)
    assert varied[at - 2 : at] == ["--bind", "/s"]
    usr = varied.index("/usr") if "/usr" in varied else start
    assert varied.index("/v/locale") > usr  # bound over the host's /usr, not under it
    assert varied[varied.index("/v/passwd") - 1 : varied.index("/v/passwd") + 2] == [
        "--ro-bind",
        "/v/passwd",
        "/etc/passwd",
    ]
    assert V.env()["SRC"] == V.build_dir and V.env()["USER"] == V.user and "USER" not in U.env()


def test_wrap_varies_kernel_cpus_and_clock() -> None:
    wrapped = V.wrap(["/bin/sh", "-c", "x"])
    assert wrapped[:2] == ["setarch", "--uname-2.6"] and wrapped[2:4] == ["taskset", "-c"]
    assert wrapped[5:] == ["faketime", "-f", "+398d", "/bin/sh", "-c", "x"]
    assert U.wrap(["/bin/sh"]) == ["/bin/sh"]


def test_debian_scripts_carry_the_variation() -> None:
    assert debian_build.inner_script(5, 1) == debian_build.inner_script(5, 1, None)
    plain = debian_build.inner_script(5, 1)
    assert "cd /build/src" in plain and "localedef" not in plain and "setarch" not in plain
    inner = debian_build.inner_script(5, 1, V)
    assert f"umask {V.umask:03o}" in inner and "umask 022" not in inner
    assert f"--reuid={V.uid}" in inner and f"TZ={V.tz}" in inner and f"LC_ALL={V.locale}" in inner
    assert f"FAKETIME=+{V.clock_shift_days}d" in inner and f"LD_PRELOAD={debian_build.FAKETIME_LIB}" in inner
    assert f"parallel={V.jobs}" in inner and "setarch --uname-2.6 taskset -c" in inner
    assert f"cd {V.build_dir}" in inner and "/build/src" not in inner
    assert "localedef -i de_CH -f UTF-8 de_CH.UTF-8" in inner and "rechecker:x:1234:1234:" in inner
    outer = _outer(variation=V, src_mount=Path("/tmp/m"))
    assert f"hostname {V.hostname}" in outer and f"domainname {V.domain}" in outer
    assert f"mount --bind -o ro {debian_build.FAKETIME_LIB}" in outer and "/usr/share/i18n" in outer
    assert "mount --bind /s /tmp/m\ndisorderfs --shuffle-dirents=yes --multi-user=yes --quiet /tmp/m " in outer
    assert f"/y/merged{V.build_dir}" in outer
    plain_outer = _outer()
    assert f"hostname {debian_build.HOSTNAME}" in plain_outer and "faketime" not in plain_outer
    assert "domainname" not in plain_outer and "disorderfs" not in plain_outer
    assert "mount --bind /s /y/merged/build/src" in plain_outer


def test_file_order_variation_mounts_a_shuffled_view() -> None:
    argv = disorderfs_argv(Path("/w/src"), Path("/w/src-disordered"))
    assert argv[0] == "disorderfs" and "--shuffle-dirents=yes" in argv and argv[-2:] == ["/w/src", "/w/src-disordered"]
    assert V.file_order and not U.file_order


def test_locale_parts() -> None:
    assert locale_parts("de_CH.UTF-8") == ("de_CH", "UTF-8", "de_CH.utf8")
    assert locale_parts("tr_TR.UTF-8") == ("tr_TR", "UTF-8", "tr_TR.utf8")
    assert locale_parts("C.UTF-8") is None and locale_parts("POSIX") is None


def test_clamp_mtimes_only_lowers_newer_files(tmp_path: Path) -> None:
    import os

    (tmp_path / "old").write_text("a")
    (tmp_path / "patched").write_text("b")
    os.utime(tmp_path / "old", (100, 100))
    clamp_mtimes(tmp_path, 1000)
    assert (tmp_path / "old").stat().st_mtime == 100 and (tmp_path / "patched").stat().st_mtime == 1000
    assert tmp_path.stat().st_mtime == 1000
