"""The build's limits as a build uses them (farm.build.sandbox.LimitedRunner): one cgroup for all the steps of a
build, each step judged by its own limit events, nothing of a step left for the next, a step's end noticed when
it happens (not at the next poll), a step over its time killed. Real processes and, as root, real cgroups."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from farm.build import sandbox
from farm.build.sandbox import MIB, Cgroup, LimitedRunner, Limits
from farm.run import spawn
from tests.conftest import IN_CI

pytestmark = pytest.mark.integration

LIMITS = Limits(memory=256 * MIB, processes=16, scratch=64 * MIB, output=8 * MIB, tmp=8 * MIB)
ENV = sandbox.launcher_env()


@pytest.fixture
def cgroups() -> None:
    """Skip (fail in CI, which runs as root) where this process may not make cgroups."""
    group = Cgroup.create(LIMITS)
    if group is None:
        if IN_CI:
            pytest.fail("this process may not create cgroups: the limits are not exercised")
        pytest.skip("this process may not create cgroups (not root, or no pids controller)")
    group.destroy()


def sh(script: str) -> list[str]:
    return ["/bin/sh", "-c", script]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@pytest.mark.usefixtures("cgroups")
def test_one_cgroup_serves_every_step_of_a_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Cgroup] = []
    create = Cgroup.create

    def counting(limits: Limits, root: Path = sandbox.CGROUP_ROOT) -> Cgroup | None:
        group = create(limits, root)
        made.extend([group] if group else [])
        return group

    monkeypatch.setattr(Cgroup, "create", staticmethod(counting))
    with (tmp_path / "log").open("wb") as log, LimitedRunner(LIMITS) as runner:
        for i in range(3):
            result, hit = runner.run(sh(f"cat /proc/self/cgroup > {tmp_path}/step{i}"), logfh=log, timeout=30, env=ENV)
            assert result.returncode == 0 and hit == []
    assert len(made) == 1
    (group,) = made
    seen = {(tmp_path / f"step{i}").read_text() for i in range(3)}
    assert len(seen) == 1 and group.dirs[0].name in seen.pop(), "every step ran in the build's cgroup"
    assert not any(d.exists() for d in group.dirs), "the cgroup is removed with the build"


@pytest.mark.usefixtures("cgroups")
def test_each_step_is_judged_by_its_own_limit_events(tmp_path: Path) -> None:
    bomb = "for i in $(seq 1 40); do sleep 5 & done; wait"
    with (tmp_path / "log").open("wb") as log, LimitedRunner(LIMITS) as runner:
        _, hit = runner.run(sh(bomb), logfh=log, timeout=30, env=ENV)
        assert hit == ["processes"]
        result, hit = runner.run(sh("true"), logfh=log, timeout=30, env=ENV)
        assert result.returncode == 0 and hit == [], "the step before ran into the limit, not this one"


@pytest.mark.usefixtures("cgroups")
def test_nothing_of_a_step_is_left_for_the_next(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    with (tmp_path / "log").open("wb") as log, LimitedRunner(LIMITS) as runner:
        result, _ = runner.run(sh(f"setsid sleep 600 & echo $! > {pidfile}"), logfh=log, timeout=30, env=ENV)
        assert result.returncode == 0
        pid = int(pidfile.read_text())
        assert not alive(pid), "a process the step left behind outlived it"
        assert runner.cgroup is not None and all(
            not (d / "cgroup.procs").read_text().strip() for d in runner.cgroup.dirs
        )


def test_the_end_of_a_step_is_noticed_without_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sleep(seconds: float) -> None:
        raise AssertionError(f"slept {seconds}s while waiting for a step")

    proc = spawn(["sleep", "1"])  # still running when the wait starts, whatever the machine's load
    monkeypatch.setattr(time, "sleep", no_sleep)  # the stock Popen.wait(timeout) polls with time.sleep
    assert sandbox._wait(proc, 30)
    assert proc.returncode == 0


def test_a_step_over_its_time_is_killed(tmp_path: Path) -> None:
    start = time.monotonic()
    with (tmp_path / "log").open("wb") as log, LimitedRunner(LIMITS) as runner:
        result, _ = runner.run(["sleep", "600"], logfh=log, timeout=0.3, env=ENV)
    assert result.timed_out and result.returncode == -1
    assert time.monotonic() - start < 10


def test_limit_events_are_counted_per_step_from_the_cgroup_files(tmp_path: Path) -> None:
    """A v1 layout faked under ``tmp_path``: the counters come from pids.events and memory.oom_control."""
    for controller in ("pids", "memory"):
        (tmp_path / controller).mkdir()
        (tmp_path / controller / "cgroup.procs").write_text("")
    group = Cgroup.create(LIMITS, root=tmp_path)
    assert group is not None and not group.v2 and group.has_memory
    pids, memory = group.dirs
    assert (pids / "pids.max").read_text() == "16"
    assert (memory / "memory.limit_in_bytes").read_text() == str(256 * MIB)
    (pids / "pids.events").write_text("max 0\n")
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    before = group.counters()
    assert before == {"processes": 0, "memory": 2}
    assert group.hit(before) == [] and group.hit() == ["memory"]
    (pids / "pids.events").write_text("max 5\n")
    assert group.hit(before) == ["processes"]
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert group.hit(before) == ["processes", "memory"]
    assert os.path.isdir(pids) and os.path.isdir(memory)
