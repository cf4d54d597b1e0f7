"""Build limits: the argv that applies them (pure), the cgroups on this machine, and the broker's TLS settings."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from farm.build import sandbox
from farm.build.sandbox import MIB, Cgroup, Limits
from farm.settings import Settings
from tests.conftest import IN_CI, require

pytestmark = pytest.mark.unit

LIMITS = Limits(memory=100 * MIB, processes=32, scratch=50 * MIB, output=10 * MIB, tmp=5 * MIB, open_files=256)


def test_prlimit_sets_file_size_open_files_and_processes() -> None:
    argv = sandbox.prlimit_argv(LIMITS, memory_cgroup=True)
    assert argv == ["prlimit", f"--fsize={50 * MIB}", "--nofile=256", "--nproc=32", "--"]
    assert f"--as={100 * MIB}" in sandbox.prlimit_argv(LIMITS, memory_cgroup=False)  # the fallback


def test_limited_argv_joins_cgroups_then_execs_prlimit_then_the_command(tmp_path: Path) -> None:
    group = Cgroup([tmp_path / "pids" / "g", tmp_path / "memory" / "g"], v2=False, has_memory=True)
    argv = sandbox.limited_argv(LIMITS, group, ["bwrap", "--", "/bin/sh", "-c", "echo; rm -rf /"])
    assert argv[:3] == ["/bin/sh", "-c", sandbox._JOIN]
    i = argv.index("--")
    assert argv[4:i] == [str(tmp_path / "pids/g/cgroup.procs"), str(tmp_path / "memory/g/cgroup.procs")]
    assert argv[i + 1 : i + 6] == sandbox.prlimit_argv(LIMITS, memory_cgroup=True)
    assert argv[-5:] == ["bwrap", "--", "/bin/sh", "-c", "echo; rm -rf /"]  # recipe text stays one argv element
    assert sandbox.limited_argv(LIMITS, None, ["x"])[0] == "prlimit"


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
