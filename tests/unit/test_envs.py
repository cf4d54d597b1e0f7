"""Build environment definitions: validation, the mmdebstrap command, the dpkg status parser, the CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from farm.cli.main import main
from farm.envs.debian import (
    HOSTNAME,
    RESOLV_CONF,
    EnvRecord,
    EnvSpec,
    find_spec,
    load_records,
    load_spec,
    mmdebstrap_argv,
    mmdebstrap_env,
    parse_dpkg_status,
    parse_spec,
    save_record,
)
from farm.errors import E, ErrorGroup, FarmError

REPO = Path(__file__).resolve().parents[2]

GOOD: dict[str, Any] = {
    "distribution": "debian",
    "suite": "bookworm",
    "mirror": "http://deb.debian.org/debian",
    "architecture": "amd64",
    "variant": "buildd",
    "source_date_epoch": 1704067200,
}


def spec(**changes: Any) -> EnvSpec:
    return parse_spec("test-env", GOOD | changes, "test-env.toml")


def problems(data: dict[str, Any], name: str = "test-env") -> list[FarmError]:
    with pytest.raises(ErrorGroup) as info:
        parse_spec(name, data, "envs/test-env.toml")
    assert all(e.code == E.ENV_SPEC and e.file == "envs/test-env.toml" for e in info.value.errors)
    return info.value.errors


def test_shipped_definition_loads() -> None:
    s = find_spec("bookworm-amd64", REPO / "envs")
    assert (s.name, s.distribution, s.suite, s.architecture, s.variant) == (
        "bookworm-amd64",
        "debian",
        "bookworm",
        "amd64",
        "buildd",
    )
    assert s.mirror == "http://deb.debian.org/debian"
    assert s.packages == ("fakeroot",) and s.components == ("main",) and s.keyring is None
    assert isinstance(s.source_date_epoch, int)


def test_defaults_and_json() -> None:
    s = spec()
    assert s.components == ("main",) and s.packages == ()
    assert s.to_json()["source_date_epoch"] == 1704067200 and s.to_json()["name"] == "test-env"


def test_missing_unknown_and_mistyped_fields_reported_together() -> None:
    data = dict(GOOD)
    del data["suite"]
    data["mirorr"] = "x"
    data["source_date_epoch"] = "1704067200"
    errs = problems(data)
    fields = {e.field for e in errs}
    assert fields == {"suite", "mirorr", "source_date_epoch"}
    by_field = {e.field: e for e in errs}
    assert "missing" in by_field["suite"].message and "suite =" in by_field["suite"].hint
    assert "allowed keys" in by_field["mirorr"].hint
    assert "must be a int" in by_field["source_date_epoch"].message


@pytest.mark.parametrize(
    ("changes", "field", "text"),
    [
        ({"variant": "fat"}, "variant", "not one of"),
        ({"mirror": "deb.debian.org/debian"}, "mirror", "URL"),
        ({"source_date_epoch": -1}, "source_date_epoch", "out of range"),
        ({"source_date_epoch": True}, "source_date_epoch", "must be a int"),
        ({"architecture": "AMD64"}, "architecture", "not an arch"),
        ({"suite": "book worm"}, "suite", "not a suite"),
        ({"packages": ["fakeroot", "Bad Name"]}, "packages", "not a package name"),
        ({"packages": ["fakeroot", "fakeroot"]}, "packages", "twice"),
        ({"packages": [1]}, "packages", "list of strings"),
        ({"components": []}, "components", "at least one"),
        ({"keyring": "keys/ubuntu.gpg"}, "keyring", "absolute"),
    ],
)
def test_bad_values(changes: dict[str, Any], field: str, text: str) -> None:
    errs = problems(GOOD | changes)
    assert [e.field for e in errs] == [field]
    assert text in errs[0].message
    assert errs[0].hint  # every problem says how to fix it


def test_bad_name() -> None:
    errs = problems(GOOD, name="Bad Name")
    assert "not a valid environment name" in errs[0].message


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(FarmError) as info:
        find_spec("nope", tmp_path)
    assert info.value.code == E.ENV_UNKNOWN and "--envs" in info.value.hint
    bad = tmp_path / "broken.toml"
    bad.write_text('suite = "bookworm\n')
    with pytest.raises(FarmError) as info:
        load_spec(bad)
    assert info.value.code == E.ENV_SPEC and info.value.file == str(bad) and "TOML" in info.value.message


def test_argv_debian(tmp_path: Path) -> None:
    out = tmp_path / "env.tar"
    argv = mmdebstrap_argv(spec(), out)
    assert argv[0] == "mmdebstrap"
    assert argv[1:6] == [
        "--variant=buildd",
        "--architectures=amd64",
        "--components=main",
        "--mode=root",
        "--format=tar",
    ]
    assert argv[-3:] == ["bookworm", str(out), "http://deb.debian.org/debian"]
    hooks = [a for a in argv if a.startswith("--customize-hook=")]
    assert len(hooks) == 2
    assert RESOLV_CONF in hooks[0] and '"$1/etc/resolv.conf"' in hooks[0]
    assert HOSTNAME in hooks[1] and '"$1/etc/hostname"' in hooks[1]
    assert not any(a.startswith(("--include", "--keyring")) for a in argv)


def test_argv_ubuntu_by_changing_the_file_only(tmp_path: Path) -> None:
    s = spec(
        distribution="ubuntu",
        suite="noble",
        mirror="http://archive.ubuntu.com/ubuntu",
        components=["main", "universe"],
        packages=["fakeroot", "debhelper=13.14.1ubuntu5"],
        keyring="/usr/share/keyrings/ubuntu-archive-keyring.gpg",
    )
    argv = mmdebstrap_argv(s, tmp_path / "n.tar", mode="unshare", tool="/usr/bin/mmdebstrap")
    assert argv[0] == "/usr/bin/mmdebstrap"
    assert "--components=main,universe" in argv and "--mode=unshare" in argv
    assert "--include=fakeroot,debhelper=13.14.1ubuntu5" in argv
    assert "--keyring=/usr/share/keyrings/ubuntu-archive-keyring.gpg" in argv
    assert argv[-3:] == ["noble", str(tmp_path / "n.tar"), "http://archive.ubuntu.com/ubuntu"]


def test_env_is_clean_and_pinned() -> None:
    env = mmdebstrap_env(spec(), {"HOSTNAME": "laptop", "TZ": "Europe/Paris", "http_proxy": "http://p:3128"})
    assert env["SOURCE_DATE_EPOCH"] == "1704067200"
    assert env["TZ"] == "UTC" and env["LC_ALL"] == "C.UTF-8"
    assert env["http_proxy"] == "http://p:3128" and "HOSTNAME" not in env


STATUS = """\
Package: zlib1g
Status: install ok installed
Architecture: amd64
Version: 1:1.2.13.dfsg-1
Description: compression library
 a continuation line: with a colon

Package: removed-one
Status: deinstall ok config-files
Architecture: amd64
Version: 1.0

Package: dpkg-dev
Status: install ok installed
Architecture: all
Version: 1.21.23
"""


def test_parse_dpkg_status() -> None:
    assert parse_dpkg_status(STATUS) == [
        {"name": "dpkg-dev", "version": "1.21.23", "arch": "all"},
        {"name": "zlib1g", "version": "1:1.2.13.dfsg-1", "arch": "amd64"},
    ]


def record(seconds: float = 1.5) -> EnvRecord:
    pkgs = ({"name": "dpkg-dev", "version": "1.21.23", "arch": "all"},)
    return EnvRecord("test-env", "a" * 64, 10, spec().to_json(), pkgs, record="b" * 64, seconds=seconds)


def test_record_content_excludes_this_making() -> None:
    assert record(1.0).content_bytes() == record(99.0).content_bytes()
    assert "seconds" not in record().content() and record().content()["digest"] == "a" * 64


def test_records_round_trip_and_cli_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MANGOS_FARM_HOME", str(tmp_path))
    assert main(["env", "list"]) == 0
    assert "no environments built yet" in capsys.readouterr().out
    path = save_record(record(), tmp_path / "envs")
    assert path == tmp_path / "envs" / "test-env.json"
    assert load_records(tmp_path / "envs") == [record()]
    assert main(["env", "list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["digest"] == "a" * 64 and rows[0]["package_count"] == 1
    assert main(["env", "list"]) == 0
    assert "test-env  " + "a" * 64 in capsys.readouterr().out


def test_cli_build_unknown_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--home", str(tmp_path), "env", "build", "nope", "--envs", str(tmp_path)]) == 2
    assert "error[E-ENV-UNKNOWN]" in capsys.readouterr().err
