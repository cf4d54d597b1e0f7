"""Debian builds on a worker that is not root: a real user with a subordinate id range runs ``mangos-farm rebuild``
of the repository's dash recipe and of a hostile Debian source package, through the real build path (a user
namespace with the user's map, the overlay mounted in it, chroot, dpkg-buildpackage as uid 1000 inside), started
in a cgroup delegated to it. The hostile package's debian/rules tries the sandbox attacks, and its .deb carries a
setuid file and a symlink to /etc/shadow: all contained, and nothing of it (mounts, processes, files owned by its
ids) is left after the failed build. The same user then runs the sandbox attack tests; without a delegated cgroup
the limits are rlimits, and they hold too. A user without subordinate ids is refused Debian work with
E-WORKER-SUBIDS; a root worker logs that it need not be root.

One non-root ``rebuild`` per session (module fixture); about 60-90 s here, most of it dash's build.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from farm.build import userns
from farm.envs.debian import save_record
from farm.errors import E
from farm.store import open_store
from tests.integration.conftest import Made
from tests.lib.git import commit_files
from tests.lib.rootless import (
    REPO,
    RootlessUser,
    as_user,
    chown_tree,
    delegated_cgroups,
    ensure_user,
    mounts_mentioning,
    nobody,
    own_dir,
    processes_of,
    python,
    reclaim,
)
from tests.lib.tools import require

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-AKIA-rootless-4b2e"
MARK = "98765431"  # a sleeper the hostile build leaves behind; no process with it may outlive the build

CONTROL = """\
Source: evil
Section: misc
Priority: optional
Maintainer: Farm Test <test@mangos.invalid>
Standards-Version: 4.6.2
Rules-Requires-Root: no

Package: evil
Architecture: all
Description: tries every sandbox attack
 Its build reads secrets, dials out, escapes, forks without end; its package carries a setuid file.
"""
CHANGELOG = """\
evil (1.0) unstable; urgency=medium

  * Attack the builder.

 -- Farm Test <test@mangos.invalid>  Tue, 03 Feb 2026 04:05:06 +0000
"""
RULES = """\
#!/usr/bin/make -f
build build-arch build-indep:
\t@true
binary binary-arch binary-indep:
\tsh debian/attack.sh
clean:
\trm -rf debian/tmp debian/files
"""
# Runs as the build user. Every attempt prints "ATTACK name: refused" when it fails, "LEAKED" when it works.
ATTACK = """\
try() {
  name=$1; shift
  if ( "$@" ) >/dev/null 2>&1; then echo "ATTACK $name: LEAKED"; else echo "ATTACK $name: refused"; fi
}
echo "uid $(id -u) caps $(grep CapEff /proc/self/status)"
env | sed 's/^/ENV /'
for f in @HOME@/.aws/credentials @HOME@/broker-password /root/.aws/credentials /proc/1/environ /etc/shadow; do
  echo "READ $f: $(cat "$f" 2>&1 | tr '\\0\\n' '  ')"
done
try network bash -c 'exec 3<>/dev/tcp/127.0.0.1/@PORT@'
try userns unshare -r true
try mount mount -t tmpfs none /mnt
try chroot chroot / true
try repo-write touch /build/repo/Packages
try root-write touch /etc/evil
try host-root ls @HOME@
try kill-init kill -9 1
try ptrace-init cat /proc/1/mem
mkdir -p debian/tmp/DEBIAN debian/tmp/usr/bin debian/tmp/usr/share/evil
cp /bin/true debian/tmp/usr/bin/evil-su
chmod 4755 debian/tmp/usr/bin/evil-su
ln -s /etc/shadow debian/tmp/usr/share/evil/shadow
dpkg-gencontrol -pevil -Pdebian/tmp
dpkg-deb --build debian/tmp ..
ls -l debian/tmp/usr/bin/evil-su debian/tmp/usr/share/evil/shadow ../evil_1.0_all.deb | sed 's/^/MADE /'
(setsid sleep @MARK@ &)
bomb() { bomb & bomb & wait; }
bomb
kill -9 -1
"""


@dataclass(frozen=True)
class Session:
    user: RootlessUser
    farm: Path
    result: dict[str, Any]
    stderr: str
    seconds: float
    cgroups: list[Path]


def farm_argv(user: RootlessUser) -> tuple[list[str], dict[str, str]]:
    py, env = python(user)
    code = "import sys; sys.argv[0] = 'mangos-farm'; from farm.cli.main import main; sys.exit(main())"
    return [*py, "-c", code], env


@pytest.fixture(scope="module")
def listener() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


@pytest.fixture(scope="module")
def session(made_env: Made, listener: int) -> Iterator[Session]:
    """As the non-root user, in a cgroup delegated to it: rebuild dash and the hostile package in a farm of its
    own, whose store holds the session's environment (made by root; the user unpacks it with its own map)."""
    for tool in ("unshare", "setpriv", "dpkg-deb"):
        require(tool)
    user = ensure_user()
    farm = own_dir(user)
    home = farm / "home"
    (home / "envs").mkdir(parents=True)
    store = open_store(str(home / "store"))
    made_env.store.fetch_blob(made_env.record.digest, farm / "env.tar")
    assert store.put_file(farm / "env.tar").digest == made_env.record.digest
    (farm / "env.tar").unlink()
    save_record(made_env.record, home / "envs")
    secrets_home = farm / "worker-home"
    (secrets_home / ".aws").mkdir(parents=True)
    (secrets_home / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {SECRET}\n")
    (secrets_home / "broker-password").write_text(SECRET)
    recipes = farm / "recipes"
    recipes.mkdir()
    shutil.copy(REPO / "recipes" / "debian" / "dash.toml", recipes / "dash.toml")
    shutil.copytree(REPO / "envs", farm / "envs")
    attack = ATTACK.replace("@HOME@", str(secrets_home)).replace("@PORT@", str(listener)).replace("@MARK@", MARK)
    files = {"debian/control": CONTROL, "debian/changelog": CHANGELOG, "debian/rules": RULES}
    files |= {"debian/source/format": "3.0 (native)\n", "debian/attack.sh": attack}
    commit = commit_files(farm / "evil", files, executable=("debian/rules",))
    (recipes / "evil.toml").write_text(
        'name = "evil"\nversion = "1.0"\noutputs = ["*.deb", "*.buildinfo"]\n\n'
        f'[source]\ngit = "{farm / "evil"}"\ncommit = "{commit}"\n\n'
        '[build]\nkind = "debian"\nenvironment = "bookworm-amd64"\n'
    )
    chown_tree(farm, user)
    argv, env = farm_argv(user)
    env |= {
        "MANGOS_FARM_HOME": str(home),
        "MANGOS_FARM_WORKERS": "1",
        "MANGOS_FARM_BUILD_PROCESSES": "256",
        "MANGOS_FARM_BUILD_MEMORY_MB": "1536",
        "HOME": str(secrets_home),
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": SECRET,
    }
    try:
        with delegated_cgroups(user) as cgroups:
            as_user(user, [*argv, "keys", "generate"], env=env, cwd=farm)
            start = time.monotonic()
            proc = as_user(user, [*argv, "rebuild", "recipes", "--json"], env=env, cwd=farm, cgroups=cgroups,
                           check=False, timeout=1200)  # fmt: skip
            seconds = time.monotonic() - start
        assert proc.stdout.strip(), proc.stderr
        yield Session(user, farm, json.loads(proc.stdout), proc.stderr, seconds, cgroups)
    finally:
        reclaim(user, farm)


def by_recipe(s: Session) -> dict[str, dict[str, Any]]:
    return {b["recipe"]: b for b in s.result["builds"]}


def build_log(s: Session, build: dict[str, Any]) -> str:
    """The build's whole log from the user's store (a failed build names its log)."""
    store = open_store(str(s.farm / "home" / "store"))
    record = store.get_record(build["build_key"])
    digest = record.log if record is not None else build["log"]
    return store.get_bytes(digest).decode(errors="replace")


def test_a_debian_recipe_builds_on_a_worker_that_is_not_root(session: Session) -> None:
    dash = by_recipe(session)["dash"]
    assert dash["ok"] if "ok" in dash else dash.get("state") == "built", (dash, session.stderr[-3000:])
    debs = {n for n in dash["artifacts"] or {} if n.endswith(".deb")}
    assert {"dash_0.5.12-2_amd64.deb", "ash_0.5.12-2_all.deb"} <= debs, dash
    log = build_log(session, dash)
    assert "dpkg-buildpackage" in log and "dpkg-deb: building package 'dash'" in log
    # the environment was unpacked by the user, with its map: the build root keeps real owners (subordinate ids)
    assert session.user.idmap is not None
    roots = list((session.farm / "home").rglob(f"root-{session.user.idmap.tag}"))
    assert roots, "the rootless worker unpacked its own copy of the environment"
    apt = roots[0] / "var/lib/apt/lists/partial"
    assert apt.stat().st_uid == session.user.idmap.outer_uid(42)  # _apt (uid 42 inside) owns it, not the worker
    assert not list((session.farm / "home" / "work").glob("*/*")), "the build's work directory is gone"


def test_a_hostile_debian_package_is_contained(session: Session, listener: int) -> None:
    evil = by_recipe(session)["evil"]
    assert evil.get("ok") is False or evil.get("state") == "failed", evil
    log = build_log(session, evil)
    made = [line for line in log.splitlines() if line.startswith("MADE ")]
    assert "dpkg-deb: building package 'evil'" in log and len(made) == 3, log[-4000:]
    assert any(m.startswith("MADE -rwsr-xr-x") and m.endswith("/evil-su") for m in made), made
    assert any(m.endswith("/shadow -> /etc/shadow") for m in made), made
    attacks = [line for line in log.splitlines() if line.startswith("ATTACK ")]
    assert len(attacks) == 9 and all(line.endswith(": refused") for line in attacks), attacks
    assert SECRET not in log, "a secret of the worker reached the build"
    env = [line for line in log.splitlines() if line.startswith("ENV ")]
    assert env and not [e for e in env if "AWS_" in e or "MANGOS_FARM" in e or SECRET in e], env
    assert f"uid 1000 caps CapEff:\t{'0' * 16}" in log
    host_shadow = Path("/etc/shadow").read_text().splitlines()[0]
    assert host_shadow not in log, "the build read the worker machine's /etc/shadow"
    assert evil["error"]["code"] in (E.SANDBOX_LIMIT, E.BUILD_FAILED), evil["error"]
    # nothing of it is left: no mount in any namespace, no process of its ids, no file (setuid or not) of them
    assert session.user.idmap is not None
    work = session.farm / "home" / "work"
    assert mounts_mentioning(str(session.farm)) == []
    subids = range(session.user.idmap.subuid, session.user.idmap.subuid + session.user.idmap.count)
    assert processes_of(subids) == []
    envs = session.farm / "home" / "cache" / "envs"  # the unpacked environment: owned by its map on purpose
    left = [p for p in (session.farm / "home").rglob("*") if p.lstat().st_uid in subids and envs not in p.parents]
    assert left == [], "files of the build's ids outlived it (its work directory and the trash included)"
    assert not list(work.glob("*/*"))
    assert running(MARK) == [], "the sleeper it left behind was killed with it"


def running(text: str) -> list[str]:
    """The pids of processes whose command line contains ``text``."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and text in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                found.append(pid)
        except OSError:
            continue
    return found


# -- the sandbox attack tests, and limits without a delegated cgroup, as the non-root user -----------------------
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
