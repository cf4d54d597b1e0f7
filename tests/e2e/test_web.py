"""The web view in a real browser, on a real fleet: ``mangos-farm serve`` as a process next to redis-server, moto
S3, a coordinator and a worker; Debian's headless chromium, driven through chromedriver with selenium, watches a
run's page change as builds go from waiting to running to built (without a reload), then downloads artifacts
through the page's links and checks their sha256. Screenshots go to $MANGOS_TEST_ARTIFACTS (default
test-artifacts/)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.request import urlopen

import pytest

from tests.conftest import MakeRepo, write_recipe
from tests.e2e.conftest import CLI, REPO
from tests.e2e.fleet import Fleet
from tests.web.browser import chromium

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("MANGOS_TEST_ARTIFACTS") or REPO / "test-artifacts")
DATA = "served by the web view\n"
ROW_STATES = """return Object.fromEntries([...document.querySelectorAll('#builds tr[data-recipe]')]
    .map((tr) => [tr.dataset.recipe, tr.dataset.state]))"""


@pytest.fixture
def web(fleet: Fleet) -> Iterator[str]:
    """``mangos-farm serve --port 0`` with the fleet's settings; the URL it announces."""
    out = fleet.root / "web.out"
    with out.open("wb") as stdout, (fleet.root / "web.log").open("ab") as stderr:
        proc = subprocess.Popen(
            [CLI, "-v", "serve", "--port", "0"],
            cwd=fleet.root,
            env=fleet.env(fleet.root / "web"),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        announced = fleet.wait_for(
            "the web view to listen", lambda: re.search(r"http://127\.0\.0\.1:\d+/", out.read_text()), timeout=30
        )
        yield announced.group(0)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium(tmp_path / "chromium", downloads) as driver:
        yield driver


def text(browser: WebDriver, css: str) -> str:
    """The text of the first element matching ``css``, or "" (read in one step: the page redraws as it polls)."""
    found: str = browser.execute_script("return document.querySelector(arguments[0])?.innerText ?? ''", css)
    return found


def downloaded(directory: Path, name: str) -> Path | None:
    path = directory / name
    if path.is_file() and not list(directory.glob("*.crdownload")):
        return path
    return None


def test_run_page_follows_a_fleet_run_live_and_downloads_verified_artifacts(
    fleet: Fleet, web: str, browser: WebDriver, make_repo: MakeRepo, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.wait import WebDriverWait

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    repo, commit = make_repo("web-src", {"data": DATA})
    recipes = tmp_path / "web-recipes"
    for name, sleep, deps in (("alpha", 2, ()), ("beta", 1, ("alpha",)), ("gamma", 3, ())):
        write_recipe(
            recipes,
            name,
            git_url=str(repo),
            commit=commit,
            steps=[f"sleep {sleep}", f'echo {name} > "$OUT/{name}.txt" && cat data >> "$OUT/{name}.txt"'],
            outputs=[f"{name}.txt"],
            depends=deps,
        )
    run = fleet.cli("rebuild", str(recipes)).stdout.strip()  # no worker yet: every build waits, and says why

    browser.get(f"{web}runs/{run}")

    def states() -> dict[str, str]:
        found: dict[str, str] = browser.execute_script(ROW_STATES)
        return found

    fleet.wait_for(
        "the page to list the waiting builds", lambda: states() == dict.fromkeys(("alpha", "beta", "gamma"), "waiting")
    )
    fleet.wait_for("the reasons", lambda: "no worker for arch" in text(browser, "#builds"))
    assert "waiting on alpha" in text(browser, 'tr[data-recipe="beta"]')
    browser.execute_script("window.farmSamePage = true")  # gone if the page were ever reloaded

    fleet.start_worker("w1", concurrency=2)
    history: dict[str, list[str]] = {}
    shot_running: list[bool] = []

    def observe() -> dict[str, str] | None:
        current = states()
        for recipe, state in current.items():
            if history.get(recipe, [""])[-1] != state:
                history.setdefault(recipe, []).append(state)
        if "running" in current.values() and not shot_running:
            browser.save_screenshot(str(ARTIFACTS / "web-run-page-running.png"))
            shot_running.append(True)
        return current if set(current.values()) == {"built"} else None

    fleet.wait_for("every build to show as built on the page", observe, timeout=90)
    assert browser.execute_script("return window.farmSamePage === true"), "the page was reloaded"
    assert all(h[0] == "waiting" and h[-1] == "built" for h in history.values()), history
    assert any("running" in h for h in history.values()), history
    fleet.wait_for(
        "the run to show as done",
        lambda: browser.execute_script("return document.getElementById('run')?.dataset.status") == "done",
    )
    assert "w1@fleet" in text(browser, 'tr[data-recipe="gamma"] td.worker')

    # what the API says the commit built, and what the worker wrote
    listing: list[dict[str, Any]] = json.loads(urlopen(f"{web}commits/{commit}", timeout=30).read())
    expected = {row["artifact"]: row["sha256"] for row in listing}
    assert sorted(expected) == ["alpha.txt", "beta.txt", "gamma.txt"]
    downloads = tmp_path / "downloads"

    # 1. the download link in a build's row of the run page
    link = WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.CSS_SELECTOR, 'tr[data-recipe="alpha"] a.artifact')
    )
    assert (link.get_attribute("href") or "").startswith(f"{web}commits/{commit}/alpha.txt")
    link.click()
    alpha = fleet.wait_for("alpha.txt to download", lambda: downloaded(downloads, "alpha.txt"), timeout=20)
    assert hashlib.sha256(alpha.read_bytes()).hexdigest() == expected["alpha.txt"]
    assert alpha.read_bytes() == f"alpha\n{DATA}".encode()

    # 2. the page's "artifacts by commit" form
    browser.find_element(By.ID, "commit-input").send_keys(commit)
    browser.find_element(By.CSS_SELECTOR, "#commit-form button").click()
    gamma_link = WebDriverWait(browser, 10).until(
        lambda d: d.find_element(By.CSS_SELECTOR, '#commit-artifacts tr[data-artifact="gamma.txt"] a.download')
    )
    assert f"?commit={commit}" in browser.current_url
    gamma_link.click()
    gamma = fleet.wait_for("gamma.txt to download", lambda: downloaded(downloads, "gamma.txt"), timeout=20)
    assert hashlib.sha256(gamma.read_bytes()).hexdigest() == expected["gamma.txt"]
    assert gamma.read_bytes() == f"gamma\n{DATA}".encode()

    browser.save_screenshot(str(ARTIFACTS / "web-run-page.png"))
    assert (ARTIFACTS / "web-run-page.png").stat().st_size > 10_000

    # the runs list and the workers panel show the same fleet
    browser.get(web)
    fleet.wait_for("the runs list", lambda: run in text(browser, "#runs"))
    fleet.wait_for("the worker", lambda: "w1@fleet" in text(browser, "#workers"))
    browser.save_screenshot(str(ARTIFACTS / "web-runs.png"))
    api_workers = json.loads(urlopen(f"{web}api/workers", timeout=30).read())
    assert [w["name"] for w in api_workers] == [w["name"] for w in fleet.json("workers")] == ["w1@fleet"]
