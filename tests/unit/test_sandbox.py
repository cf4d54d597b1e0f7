"""The bubblewrap command line, checked as data (nothing is run)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from farm.build import sandbox
from farm.build.sandbox import SandboxSpec, base_env, bwrap_argv, step_command
from farm.recipes import RESERVED_ENV

pytestmark = pytest.mark.unit


@pytest.fixture
def spec(tmp_path: Path) -> SandboxSpec:
    dirs = {name: tmp_path / name for name in ("src", "out", "home", "deps", "host-ro")}
    for d in dirs.values():
        d.mkdir()
    return SandboxSpec(
        src=dirs["src"],
        out=dirs["out"],
        home=dirs["home"],
        deps=dirs["deps"],
        env={"B_VAR": "two words", "A_VAR": "1", "EMPTY": ""},
        host_ro=(str(dirs["host-ro"]), str(tmp_path / "does-not-exist")),
    )


def contains(argv: Sequence[str], seq: Sequence[str]) -> bool:
    """Whether ``seq`` occurs in ``argv`` as consecutive elements."""
    n = len(seq)
    return any(list(argv[i : i + n]) == list(seq) for i in range(len(argv) - n + 1))


def options(argv: Sequence[str]) -> list[str]:
    """The bwrap options: everything before the '--' that starts the command."""
    return list(argv[: argv.index("--")])


def test_starts_with_bwrap_and_isolates_everything(spec: SandboxSpec) -> None:
    argv = bwrap_argv(spec, ["true"])
    assert argv[0] == "bwrap"
    opts = options(argv)
    for flag in ("--unshare-all", "--clearenv", "--die-with-parent", "--new-session"):
        assert flag in opts
    assert contains(opts, ["--cap-drop", "ALL"])
    assert "--share-net" not in opts


def test_runs_as_the_build_uid(spec: SandboxSpec) -> None:
    opts = options(bwrap_argv(spec, ["true"]))
    assert contains(opts, ["--uid", "1000"])
    assert contains(opts, ["--gid", "1000"])
    assert contains(opts, ["--hostname", "mangos-build"])
    assert sandbox.BUILD_UID == 1000


def test_binds_the_build_directories_at_fixed_paths(spec: SandboxSpec) -> None:
    opts = options(bwrap_argv(spec, ["true"]))
    assert contains(opts, ["--bind", str(spec.src), "/build/src"])
    assert contains(opts, ["--bind", str(spec.out), "/build/out"])
    assert contains(opts, ["--bind", str(spec.home), "/build/home"])
    assert contains(opts, ["--chdir", "/build/src"])


def test_dependencies_are_read_only(spec: SandboxSpec) -> None:
    opts = options(bwrap_argv(spec, ["true"]))
    assert contains(opts, ["--ro-bind", str(spec.deps), "/build/deps"])
    assert not contains(opts, ["--bind", str(spec.deps), "/build/deps"])


def test_no_dependencies_no_deps_mount(spec: SandboxSpec) -> None:
    opts = options(bwrap_argv(SandboxSpec(src=spec.src, out=spec.out, home=spec.home), ["true"]))
    assert "/build/deps" not in opts


def test_host_paths_are_read_only_and_only_if_they_exist(spec: SandboxSpec) -> None:
    opts = options(bwrap_argv(spec, ["true"]))
    existing, missing = spec.host_ro
    assert contains(opts, ["--ro-bind", existing, existing])
    assert missing not in opts
    # writable binds are exactly the three build directories
    writable = [opts[i + 1] for i, a in enumerate(opts) if a == "--bind"]
    assert writable == [str(spec.src), str(spec.out), str(spec.home)]


def test_default_host_paths_never_include_private_places() -> None:
    for private in ("/root", "/home", "/var", "/run", "/etc"):
        assert private not in sandbox.HOST_RO


def test_fresh_proc_dev_and_tmp(spec: SandboxSpec) -> None:
    opts = options(bwrap_argv(spec, ["true"]))
    assert contains(opts, ["--proc", "/proc"])
    assert contains(opts, ["--dev", "/dev"])
    assert contains(opts, ["--perms", "1777", "--tmpfs", "/tmp"])


def test_environment_is_cleared_then_set(spec: SandboxSpec) -> None:
    opts = options(bwrap_argv(spec, ["true"]))
    setenvs = [i for i, a in enumerate(opts) if a == "--setenv"]
    assert [opts[i + 1 : i + 3] for i in setenvs] == [["A_VAR", "1"], ["B_VAR", "two words"], ["EMPTY", ""]]
    # bwrap applies these in order: --clearenv must come first or it would wipe the variables set before it
    assert opts.index("--clearenv") < min(setenvs)


def test_base_env_passed_through(spec: SandboxSpec) -> None:
    env = base_env(1700000000, jobs=4)
    opts = options(bwrap_argv(SandboxSpec(src=spec.src, out=spec.out, home=spec.home, env=env), ["true"]))
    for key, value in env.items():
        assert contains(opts, ["--setenv", key, value])


def test_ends_with_the_command(spec: SandboxSpec) -> None:
    command = step_command('make install DESTDIR="$OUT"')
    argv = bwrap_argv(spec, command)
    assert argv[-len(command) - 1 :] == ["--", *command]
    assert argv.count("--") == 1


def test_command_arguments_are_not_split_or_quoted(spec: SandboxSpec) -> None:
    command = ["prog", "a b", "--", "$X", "'q'"]
    assert bwrap_argv(spec, command)[-len(command) :] == command


def test_is_pure(spec: SandboxSpec) -> None:
    first = bwrap_argv(spec, ["true"])
    assert bwrap_argv(spec, ["true"]) == first
    assert all(isinstance(a, str) for a in first)


def test_step_command_wraps_in_sh_e() -> None:
    assert step_command("make && make check") == ["/bin/sh", "-e", "-c", "make && make check"]
    script = "line one\nline 'two' \"$X\""
    assert step_command(script)[-1] == script


def test_base_env() -> None:
    env = base_env(1234567890, jobs=3)
    assert env == {
        "PATH": "/usr/local/bin:/usr/bin:/usr/sbin",
        "HOME": "/build/home",
        "SRC": "/build/src",
        "OUT": "/build/out",
        "DEPS": "/build/deps",
        "SOURCE_DATE_EPOCH": "1234567890",
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
        "LANG": "C.UTF-8",
        "JOBS": "3",
    }


def test_base_env_defaults_to_one_job() -> None:
    assert base_env(0)["JOBS"] == "1"
    assert base_env(0)["SOURCE_DATE_EPOCH"] == "0"


def test_recipes_cannot_override_the_fixed_variables() -> None:
    """Every variable the sandbox fixes is reserved in recipes (JOBS alone is a recipe's to pin)."""
    assert set(base_env(0)) - {"JOBS"} <= RESERVED_ENV


def test_a_varied_build_dir_moves_the_source_and_the_start(spec: SandboxSpec) -> None:
    varied = replace(spec, build_dir="/build/elsewhere/src")
    opts = options(bwrap_argv(varied, ["true"]))
    assert contains(opts, ["--bind", str(spec.src), "/build/elsewhere/src"])
    assert contains(opts, ["--chdir", "/build/elsewhere/src"])
    assert "/build/src" not in opts


def test_extra_binds_are_read_only_and_come_after_the_host_paths(spec: SandboxSpec) -> None:
    varied = replace(spec, binds=(("/layer/locale", "/usr/lib/locale"),))
    opts = options(bwrap_argv(varied, ["true"]))
    assert contains(opts, ["--ro-bind", "/layer/locale", "/usr/lib/locale"])
    host = opts.index(spec.host_ro[0])
    assert opts.index("/layer/locale") > host


def test_a_domain_name_runs_bwrap_in_its_own_uts_namespace(spec: SandboxSpec) -> None:
    argv = bwrap_argv(replace(spec, domainname="recheck.invalid"), ["true"])
    start = argv.index("bwrap")
    assert argv[:2] == ["unshare", "--uts"] and argv[start - 1] == "recheck.invalid"
    assert 'domainname "$0" && exec "$@"' in argv[:start]
    assert argv[start:] == bwrap_argv(spec, ["true"])
    assert bwrap_argv(spec, ["true"])[0] == "bwrap"  # no domain: bwrap itself, as always
