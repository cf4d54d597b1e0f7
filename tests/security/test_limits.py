"""Build limits: the argv that applies them (pure), the cgroups on this machine, and the broker's TLS settings."""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

import pytest

from farm.build import sandbox
from farm.build.cgroups import own_cgroups
from farm.build.sandbox import MIB, Cgroup, Limits
from farm.settings import Settings
from tests.conftest import IN_CI, require

pytestmark = pytest.mark.unit

LIMITS = Limits(memory=100 * MIB, processes=32, scratch=50 * MIB, output=10 * MIB, tmp=5 * MIB, open_files=256)


def test_rlimits_set_file_size_open_files_and_processes() -> None:
    args = sandbox.rlimit_args(LIMITS, memory_cgroup=True)
    assert args == ["-f", str(50 * MIB // 512), "-n", "256", "-p", "32"]
    assert sandbox.rlimit_args(LIMITS, memory_cgroup=False)[-2:] == ["-v", str(100 * MIB // 1024)]  # the fallback


def test_limited_argv_joins_cgroups_then_sets_rlimits_then_execs_the_command(tmp_path: Path) -> None:
    group = Cgroup([tmp_path / "pids" / "g", tmp_path / "memory" / "g"], v2=False, has_memory=True)
    argv = sandbox.limited_argv(LIMITS, group, ["bwrap", "--", "/bin/sh", "-c", "echo; rm -rf /"])
    assert argv[:3] == ["/bin/dash", "-c", sandbox._LIMITS]
    i = argv.index("--")
    assert argv[4:i] == [str(tmp_path / "pids/g/tasks"), str(tmp_path / "memory/g/tasks")]  # v1: one thread, 0
    v2 = Cgroup([tmp_path / "g"], v2=True, has_memory=True)
    assert sandbox.limited_argv(LIMITS, v2, ["x"])[4] == str(tmp_path / "g/cgroup.procs")
    rlimits = sandbox.rlimit_args(LIMITS, memory_cgroup=True, pids_cgroup=True)
    assert argv[i + 1 : i + 1 + len(rlimits)] == rlimits and "-p" not in rlimits  # the cgroup counts
    assert argv[i + 1 + len(rlimits)] == "--"
    assert argv[-5:] == ["bwrap", "--", "/bin/sh", "-c", "echo; rm -rf /"]  # recipe text stays one argv element
    bare = sandbox.limited_argv(LIMITS, None, ["x"])
    assert bare[4] == "--" and bare[-1] == "x"


def test_the_limits_shell_really_sets_the_limits_and_stops_when_it_cannot(tmp_path: Path) -> None:
    require("dash")
    out = subprocess.run(
        sandbox.limited_argv(LIMITS, None, ["cat", "/proc/self/limits"]), capture_output=True, text=True, check=True
    ).stdout
    rows = {line[:26].strip(): line[26:].split()[:2] for line in out.splitlines()[1:]}
    assert rows["Max file size"] == [str(50 * MIB)] * 2
    assert rows["Max open files"] == ["256"] * 2
    assert rows["Max processes"] == ["32"] * 2
    assert rows["Max address space"] == [str(100 * MIB)] * 2
    group = Cgroup([tmp_path / "nosuch" / "g"], v2=True, has_memory=True)
    failed = subprocess.run(sandbox.limited_argv(LIMITS, group, ["true"]), capture_output=True, check=False)
    assert failed.returncode == 125, "a cgroup it cannot join stops it"


def test_a_step_and_its_children_are_in_the_build_cgroup_of_every_controller() -> None:
    """The limits shell's join (v1: ``0`` into ``tasks``, one thread moved without the global threadgroup lock) puts
    the step in the build's cgroup of each controller, and what the step forks stays there: the pids limit counts it
    and the memory limit charges it."""
    require("dash")
    group = Cgroup.create(LIMITS)
    if group is None:
        if IN_CI:
            pytest.fail("this process may not create cgroups (not root, or no pids controller)")
        pytest.skip("this process may not create cgroups")
    try:
        script = "cat /proc/self/cgroup; sh -c 'cat /proc/self/cgroup'"
        out = subprocess.run(
            sandbox.limited_argv(LIMITS, group, ["sh", "-c", script]), capture_output=True, text=True, check=True
        ).stdout
        lines = out.splitlines()
        half = len(lines) // 2
        assert lines[:half] == lines[half:], "a child stays in its parent's cgroups"
        for i, d in enumerate(group.dirs):
            key = "" if group.v2 else group.controller_of(i)
            own = own_cgroups("\n".join(lines[:half]))[key]
            assert d.as_posix().endswith(own), f"{key or 'v2'}: the step is in {own}, not in {d}"
    finally:
        group.destroy()


def test_bwrap_bounds_tmp_and_starts_clean(tmp_path: Path) -> None:
    spec = sandbox.SandboxSpec(src=tmp_path, out=tmp_path, home=tmp_path, limits=LIMITS)
    argv = sandbox.bwrap_argv(spec, ["true"])
    i = argv.index("--size")
    assert argv[i : i + 6] == ["--size", str(5 * MIB), "--perms", "1777", "--tmpfs", "/tmp"]
    assert sandbox.launcher_env() == {"PATH": sandbox.PATH, "LC_ALL": "C.UTF-8"}


def test_a_cgroup_on_this_machine_is_limited_and_removed() -> None:
    require("bwrap")
    group = Cgroup.create(LIMITS)
    if group is None:
        message = "this process may not create cgroups (not root, or no pids controller)"
        if IN_CI:  # CI runs as root: the limits must be really exercised there
            pytest.fail(message)
        pytest.skip(message)
    try:
        pids = next(d for d in group.dirs if group.v2 or "pids" in d.parts)
        assert (pids / "pids.max").read_text().strip() == "32"
        assert group.hit() == []
    finally:
        group.destroy()
    assert not any(d.exists() for d in group.dirs)


def test_rediss_broker_verifies_the_server_and_sends_a_client_certificate() -> None:
    from workers.app import celery_config

    s = Settings(broker="rediss://farm:pw@redis.example:6380/0", broker_tls_ca="/ca.pem",
                 broker_tls_cert="/c.pem", broker_tls_key="/c.key")  # fmt: skip
    conf = celery_config(s)
    want = {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/ca.pem", "ssl_certfile": "/c.pem",
            "ssl_keyfile": "/c.key"}  # fmt: skip
    assert conf["broker_use_ssl"] == want and conf["redis_backend_use_ssl"] == want
    assert conf["broker_url"] == s.broker
    plain = celery_config(Settings(broker="redis://farm:pw@redis.example:6379/0"))
    assert "broker_use_ssl" not in plain


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("redis://farm:s3cret@redis:6379/0", "redis://farm:***@redis:6379/0"),
        ("rediss://:s3cret@redis:6380/0", "rediss://:***@redis:6380/0"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("/var/lib/mangos", "/var/lib/mangos"),
    ],
)
def test_config_never_shows_a_broker_password(value: str, shown: str) -> None:
    from farm.settings import redact

    assert redact(value) == shown


# -- without root: a delegated cgroup, the subordinate-id map --------------------------------------------------
def test_own_cgroups_reads_v1_and_v2_lines() -> None:
    text = "12:pids:/a\n4:memory:/b/c\n3:cpu,cpuacct:/\n0::/user.slice/w.service\n"
    assert own_cgroups(text) == {
        "pids": "/a",
        "memory": "/b/c",
        "cpu": "/",
        "cpuacct": "/",
        "": "/user.slice/w.service",
    }


def _v2_tree(root: Path, own: str) -> Path:
    for d, controllers in ((root, "pids memory io"), (root / own.lstrip("/"), "pids memory")):
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.controllers").write_text(controllers + "\n")
        (d / "cgroup.procs").write_text("")
        (d / "cgroup.subtree_control").write_text("")
    return root / own.lstrip("/")


def test_a_delegated_v2_cgroup_moves_the_worker_into_a_leaf_and_holds_the_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's Delegate=yes hands the worker its own cgroup: the worker moves into mangos-worker/, enables pids and
    memory for the children, and each build cgroup is made beside it with its limits."""
    from farm.build import cgroups

    own = _v2_tree(tmp_path, "/system.slice/mangos-worker@1.service")
    (tmp_path / "self").write_text("0::/system.slice/mangos-worker@1.service\n")
    monkeypatch.setattr(cgroups, "PROC_SELF_CGROUP", tmp_path / "self")
    group = Cgroup._delegated(LIMITS, tmp_path, "build-x")
    assert group is not None and group.v2 and group.has_memory
    assert (own / "mangos-worker" / "cgroup.procs").read_text() == str(os.getpid())
    assert (own / "cgroup.subtree_control").read_text() == "+pids +memory"
    assert group.dirs == [own / "build-x"]
    assert (own / "build-x" / "pids.max").read_text() == "32"
    assert (own / "build-x" / "memory.max").read_text() == str(100 * MIB)
    # once there, the worker's cgroup is the leaf: the builds still go beside it, nothing moves again
    (tmp_path / "self").write_text("0::/system.slice/mangos-worker@1.service/mangos-worker\n")
    (own / "cgroup.subtree_control").write_text("pids memory\n")
    again = Cgroup._delegated(LIMITS, tmp_path, "build-y")
    assert again is not None and again.dirs == [own / "build-y"]


def test_the_root_cgroup_is_never_taken_as_delegated(tmp_path: Path) -> None:
    from farm.build.cgroups import delegated_v1, delegated_v2

    _v2_tree(tmp_path, "/")
    assert delegated_v2(tmp_path, {"": "/"}, 1) is None
    assert delegated_v1(tmp_path, {"pids": "/"}) == {}


def test_delegated_v1_cgroups_are_found_per_controller_and_read_by_their_controller(tmp_path: Path) -> None:
    from farm.build.cgroups import delegated_v1

    for c in ("pids", "memory"):
        (tmp_path / c).mkdir()
        (tmp_path / c / "cgroup.procs").write_text("")
    for c, own in (("pids", "x"), ("memory", "y/z")):
        (tmp_path / c / own).mkdir(parents=True)
        (tmp_path / c / own / "cgroup.procs").write_text("")
    dirs = delegated_v1(tmp_path, {"pids": "/x", "memory": "/y/z", "cpu": "/"})
    assert dirs == {"pids": tmp_path / "pids/x", "memory": tmp_path / "memory/y/z"}
    group = Cgroup._v1(dirs, "build-1", LIMITS)
    assert group.controllers == ("pids", "memory") and group.has_memory
    (group.dirs[0] / "pids.events").write_text("max 3\n")
    (group.dirs[1] / "memory.oom_control").write_text("oom_kill 1\n")
    assert group.counters() == {"processes": 3, "memory": 1}
    assert (tmp_path / "memory/y/z/build-1/memory.limit_in_bytes").read_text() == str(100 * MIB)


def test_subordinate_ranges_map_the_build_user_away_from_the_worker() -> None:
    from farm.build.userns import IdMap, parse_subids

    text = "other:200000:65536\nw:100000:1000\nw:300000:65536\n1001:400000:65536\n"
    assert parse_subids(text, "w", 1234) == 300000  # the first range big enough
    assert parse_subids(text, "someone", 1001) == 400000  # by uid
    assert parse_subids(text, "nobody", 65534) is None
    m = IdMap(uid=1001, gid=1001, subuid=300000, subgid=300000)
    assert m.unshare_args() == ["--map-user=0", "--map-group=0", "--map-users=300000,1,65536",
                                "--map-groups=300000,1,65536"]  # fmt: skip
    assert m.outer_uid(0) == 1001 and m.outer_uid(1000) == 300999 and m.outer_uid(42) == 300041


def test_a_rootless_debian_build_mounts_in_its_user_namespace() -> None:
    from farm.build import debian
    from farm.build.userns import IdMap

    m = IdMap(uid=1001, gid=1001, subuid=300000, subgid=300000)
    argv = debian.unshare_argv("true", m)
    assert argv[: 1 + len(m.unshare_args())] == ["unshare", *m.unshare_args()]
    assert {"--mount", "--pid", "--net", "--uts", "--ipc", "--fork", "--kill-child"} <= set(argv)
    assert debian.unshare_argv("true")[1] == "--mount"  # a root worker: no user namespace
    script = debian.outer_script(lower=Path("/l"), layer=Path("/w"), src=Path("/s"), repo=Path("/r"),
                                 out=Path("/o"), inner="true", userxattr=True)  # fmt: skip
    assert "mount -t overlay overlay -o userxattr,lowerdir=/l," in script
    assert debian.unpack_argv(Path("/e.tar"), Path("/d"), m)[-1] == "--exclude=./dev/*"
    assert debian.unpack_argv(Path("/e.tar"), Path("/d"), None)[0] == "tar"
