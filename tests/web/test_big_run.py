"""A 35,000-build run a person can read, fast: seeded straight into the coordinator's state (:mod:`tests.web.bigrun`:
no builds) on SQLite and on a real redis-server, then ``mangos-farm status RUN --state failed`` (the command, a
process of its own), ``/api/runs/<id>?state=failed`` through ``mangos-farm serve`` (the real web server, a process
of its own) and the run page's first render in headless chromium each take at most a second.

Each of the three is timed end to end as a person meets it: the command from its start to its exit, the API from the
request to the last byte, the page from navigation start to the header and the first page of builds drawn
(``window.farmFirstRender``, a ``performance.now()`` time the page sets when it first shows a run). A try over the
bound is tried again, up to :data:`TRIES` times (the best counts: a burst of load elsewhere on the machine is not the
view's cost); a failure reports every try's time with the CPU time it took (the command's, or the server's) and the
load average, which tell a slow view from a busy machine.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import pytest

from farm.coordinator.kv import open_kv
from farm.coordinator.runs import RunStore, State
from tests.lib.cli import CLI, Farm
from tests.lib.redis_server import RedisServer
from tests.web.bigrun import Seeded, seed
from tests.web.browser import chromium

pytestmark = pytest.mark.integration

BUILDS = 35_000
SECONDS = 1.0  # the bound for each of the three
TRIES = 3


@dataclass
class Big:
    farm: Farm
    seeded: Seeded
    url: str  # of `mangos-farm serve` on this state
    server: int  # its process id
    state: str  # the coordinator state's URL

    @property
    def failed(self) -> list[str]:
        return self.seeded.named(State.FAILED)

    def counts(self) -> dict[str, int]:
        found = Counter(s.value for s in self.seeded.states.values())
        return {s.value: found.get(s.value, 0) for s in State}


def _flush(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def _cpu(pid: int) -> float:
    """CPU seconds (user and system) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(attempt: Callable[[], tuple[float, float, Any]], what: str) -> Any:
    """Run ``attempt`` (returning seconds taken, CPU seconds used, and what it got) until it takes at most
    :data:`SECONDS`, up to :data:`TRIES` times; what the first try got (for the caller's checks on it). Fails with
    every try's figures when none was fast enough."""
    tries: list[tuple[float, float]] = []
    first = None
    for _ in range(TRIES):
        took, cpu, got = attempt()
        first = got if first is None else first
        tries.append((took, cpu))
        if took <= SECONDS:
            return first
    figures = ", ".join(f"{took:.2f}s (cpu {cpu:.2f}s)" for took, cpu in tries)
    raise AssertionError(f"{what} took {figures}; load average {os.getloadavg()[0]:.1f}")


@contextmanager
def _serve(farm: Farm, log: Path) -> Iterator[tuple[str, int]]:
    """``mangos-farm serve --port 0`` on the farm's state; the URL it announces, and its process id."""
    out = log.with_suffix(".out")
    with out.open("wb") as stdout, log.open("ab") as stderr:
        proc = subprocess.Popen(
            [CLI, "serve", "--port", "0"], cwd=farm.root, env=farm.env, stdout=stdout, stderr=stderr,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"http://127\.0\.0\.1:\d+/", out.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield found.group(0), proc.pid
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def big(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Big]:
    root = tmp_path_factory.mktemp(f"big-{request.param}")
    home = root / "home"
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        state = server.url.removesuffix("/0") + "/7"  # a database of its own: the session's server is shared
        _flush(state)
    else:
        state = f"sqlite:///{home / 'state.sqlite'}"
    kv = open_kv(state)
    try:
        seeded = seed(kv, BUILDS)
    finally:
        kv.close()
    farm = Farm.at(root, home, MANGOS_FARM_STATE=state)
    try:
        with _serve(farm, root / "serve.log") as (url, pid):
            yield Big(farm, seeded, url, pid, state)
    finally:
        if request.param == "redis":
            _flush(state)


def test_seeded_run_is_a_distribution_rebuild_in_progress(big: Big) -> None:
    counts = big.counts()
    kv = open_kv(big.state)
    try:
        stored = RunStore(kv).counts(big.seeded.run_id)
    finally:
        kv.close()
    assert {s.value: n for s, n in stored.items()} == counts and sum(counts.values()) == BUILDS
    assert counts["built"] == 20_000 and counts["failed"] > 100 and counts["blocked"] > 50
    assert counts["running"] == 8 and counts["queued"] == 4 and counts["waiting"] > 10_000


def test_status_of_the_failed_builds_within_a_second(big: Big) -> None:
    def attempt() -> tuple[float, float, list[str]]:
        cpu, start = _children_cpu(), time.perf_counter()
        proc = big.farm.run("status", big.seeded.run_id, "--state", "failed")
        return time.perf_counter() - start, _children_cpu() - cpu, proc.stdout.splitlines()

    lines: list[str] = timed(attempt, "mangos-farm status --state failed")
    expected = big.counts()
    assert lines[0].startswith(f"run {big.seeded.run_id} (active, lane rebuild, arch amd64): ")
    for state, count in expected.items():
        assert (f" {count} {state}" in lines[0]) == (count > 0), (state, lines[0])
    assert lines[1].startswith(f"done {expected['built'] + expected['failed'] + expected['blocked']} of {BUILDS}; ")
    assert "critical path" in lines[1] and "no ETA: no worker for arch amd64" in lines[1]
    assert lines[2].startswith(f"builds 1-50 of {len(big.failed)} (state failed), page 1 of ")
    assert [ln.split()[:2] for ln in lines[3:53]] == [["failed", n] for n in big.failed[:50]]


def test_api_failed_builds_within_a_second(big: Big) -> None:
    def attempt() -> tuple[float, float, bytes]:
        cpu, start = _cpu(big.server), time.perf_counter()
        with urlopen(f"{big.url}api/runs/{big.seeded.run_id}?state=failed", timeout=60) as resp:
            body = resp.read()
        return time.perf_counter() - start, _cpu(big.server) - cpu, body

    data: dict[str, Any] = json.loads(timed(attempt, "/api/runs/<id>?state=failed"))
    assert [b["recipe"] for b in data["builds"]] == big.failed and data["matched"] == len(big.failed)
    assert data["summary"] == big.counts() and data["total"] == BUILDS
    assert data["critical_path"]["builds"] > 0 and data["eta"]["why"] == "no worker for arch amd64"
    assert all(b["error"]["code"] == "E-BUILD-FAILED" for b in data["builds"])


def test_run_page_first_render_within_a_second(big: Big, tmp_path: Path) -> None:
    from selenium.webdriver.support.wait import WebDriverWait

    with chromium(tmp_path / "chromium") as browser:

        def attempt() -> tuple[float, float, tuple[list[list[str]], str, str]]:
            browser.get("about:blank")
            cpu = _cpu(big.server)
            browser.get(f"{big.url}runs/{big.seeded.run_id}")
            rendered = WebDriverWait(browser, 60).until(lambda d: d.execute_script("return window.farmFirstRender"))
            used = _cpu(big.server) - cpu
            rows = browser.execute_script(
                "return [...document.querySelectorAll('#builds tr[data-recipe]')].map((tr) => [tr.dataset.recipe, "
                "tr.dataset.state])"
            )
            done = browser.execute_script("return document.getElementById('done').innerText")
            pager = browser.execute_script("return document.getElementById('pager').innerText")
            return float(rendered) / 1000, used, (rows, done, pager)

        rows, done, pager = timed(attempt, "the run page's first render")
    assert rows[:3] == [[n, "failed"] for n in big.failed[:3]] and len(rows) == 50
    assert done == f"{BUILDS - big.counts()['waiting'] - 12} of {BUILDS}"
    assert f"builds 1-50 of {BUILDS}" in pager
