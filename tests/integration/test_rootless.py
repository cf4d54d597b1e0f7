"""A worker that is not root, beside the fleet test (:mod:`tests.integration.test_rootless_fleet`, which builds dash
and the hostile Debian package on a non-root fleet worker): the same user runs the #8 sandbox attack tests in a
cgroup delegated to it; without a delegated cgroup the limits are rlimits, and they hold too. A user without
subordinate ids is refused Debian work with E-WORKER-SUBIDS; a root worker logs that it need not be root.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from farm.build import userns
from farm.errors import E
from tests.lib.hostile_debian import running
from tests.lib.rootless import (
    REPO,
    as_user,
    delegated_cgroups,
    ensure_user,
    nobody,
    own_dir,
    python,
    reclaim,
)
from tests.lib.tools import require

pytestmark = pytest.mark.integration

ATTACK_TESTS = ("tests/security/test_attacks_sandbox.py", "tests/security/test_limits.py",
                "tests/integration/test_limited_runner.py")  # fmt: skip


def test_the_sandbox_attack_tests_pass_as_a_non_root_worker() -> None:
    """The #8 attack tests (bubblewrap, limits, hostile outputs) run by the non-root user in its delegated cgroup:
    every one passes, none is skipped (their limits are the delegated cgroup's)."""
    require("bwrap")
    user = ensure_user()
    work = own_dir(user)
    py, env = python(user)
    argv = [*py, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={work / 'tmp'}", "-rs", *ATTACK_TESTS]
    try:
        with delegated_cgroups(user) as cgroups:
            proc = as_user(user, argv, env=env | {"CI": "true"}, cwd=REPO, cgroups=cgroups, check=False, timeout=900)
    finally:
        reclaim(user, work)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in summary and "skipped" not in summary and "failed" not in summary, summary


LIMITS_PROBE = """
import json, sys, tempfile, time
from pathlib import Path
from farm.build.sandbox import MIB, LimitedRunner, Limits, SandboxSpec, bwrap_argv, launcher_env, step_command
limits = Limits(memory=256 * MIB, processes=64, scratch=64 * MIB, output=8 * MIB, tmp=8 * MIB)
tmp = Path(tempfile.mkdtemp(dir=sys.argv[1]))
for d in ("src", "out", "home"):
    (tmp / d).mkdir()
spec = SandboxSpec(src=tmp / "src", out=tmp / "out", home=tmp / "home", limits=limits)
steps = {"bomb": "bomb() { bomb & bomb & wait; }; bomb", "hog": "python3 -c 'x = b\\"x\\" * (1024 ** 3)'",
         "fine": "echo fine"}
found = {}
with LimitedRunner(limits) as runner, (tmp / "log").open("wb") as log:
    found["cgroup"] = runner.cgroup is not None
    for name, script in steps.items():
        start = time.monotonic()
        result, hit = runner.run(bwrap_argv(spec, step_command(script)), logfh=log, timeout=60, env=launcher_env())
        found[name] = {"rc": result.returncode, "timed_out": result.timed_out, "hit": hit,
                       "seconds": round(time.monotonic() - start, 2)}
found["log"] = (tmp / "log").read_text(errors="replace")[-3000:]
print(json.dumps(found))
"""


def test_limits_without_a_delegated_cgroup_are_rlimits() -> None:
    """The same user with no cgroup of its own: no build cgroup is made, and the rlimits stop a fork bomb and a
    memory hog (the step fails, quickly, with the kernel's refusal in its log); an ordinary step still runs."""
    require("bwrap")
    user = ensure_user()
    work = own_dir(user)
    py, env = python(user)
    try:
        proc = as_user(user, [*py, "-c", LIMITS_PROBE, str(work)], env=env, cwd=work, timeout=300)
    finally:
        reclaim(user, work)
    found = json.loads(proc.stdout)
    assert found["cgroup"] is False, found
    # RLIMIT_NPROC refuses the bomb's forks at once (the shell goes on: its exit status says nothing)
    assert not found["bomb"]["timed_out"] and found["bomb"]["seconds"] < 30, found
    assert "Cannot fork" in found["log"], found["log"]
    assert found["hog"]["rc"] != 0 and "MemoryError" in found["log"], found
    assert found["fine"]["rc"] == 0 and "fine" in found["log"]
    assert running("bomb()") == [], "nothing of the bomb outlives its step"


# -- who may do Debian work ------------------------------------------------------------------------------------
PROBE = """
import json
from farm.build.capabilities import probe_debian
from farm.errors import FarmError
from farm.build.debian import build_id_map
p = probe_debian()
try:
    build_id_map()
    refused = None
except FarmError as exc:
    refused = exc.to_json()
print(json.dumps({"ok": p.ok, "reason": p.reason, "error": p.error.to_json() if p.error else None,
                  "refused": refused}))
"""


def test_a_user_without_subordinate_ids_is_refused_debian_work() -> None:
    """nobody has no subordinate range: the start-up probe says so with E-WORKER-SUBIDS and the usermod hint,
    and a Debian build refuses the same way; the user with a range passes the probe (a real overlay mount in its
    user namespace)."""
    for tool in ("setpriv", "newuidmap", "unshare"):
        require(tool)
    refused = nobody()
    assert refused.idmap is None
    py, env = python(ensure_user())
    got = json.loads(as_user(refused, [*py, "-c", PROBE], env=env, cwd=Path("/tmp")).stdout)
    assert got["ok"] is False and got["error"]["code"] == E.WORKER_SUBIDS, got
    assert "usermod --add-subuids" in got["error"]["hint"] and "nobody" in got["error"]["hint"], got
    assert got["refused"]["code"] == E.WORKER_SUBIDS, got
    user = ensure_user()
    fine = json.loads(as_user(user, [*py, "-c", PROBE], env=env, cwd=Path("/tmp")).stdout)
    assert fine["ok"] is True and fine["refused"] is None, fine


def test_a_root_worker_still_builds_and_logs_that_it_need_not_be_root(caplog: pytest.LogCaptureFixture) -> None:
    if os.geteuid() != 0:
        pytest.skip("runs as root (CI does)")
    from farm.build.capabilities import probe_debian

    userns.note_root.cache_clear()
    with caplog.at_level(logging.WARNING, logger="farm.build.userns"):
        probe = probe_debian()
    assert probe.ok, probe.reason
    assert "runs as root; it need not" in caplog.text and "usermod --add-subuids" in caplog.text
