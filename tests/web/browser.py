"""Debian's headless chromium, driven through chromedriver with selenium, for the tests of the web page.

Nothing is downloaded: selenium is given the driver's path, so Selenium Manager never runs, and the browser is
told not to talk to the outside. Downloads land in the directory given.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from tests.lib.tools import require
from tests.store.conftest import require_module

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

FLAGS = (
    "--headless",
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # no connections to the outside (refused here anyway)
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


@contextmanager
def chromium(workdir: Path, downloads: Path | None = None) -> Iterator[WebDriver]:
    """A headless chromium with its profile and driver log under ``workdir``; skipped (failed in CI) when chromium,
    chromedriver or selenium is missing."""
    binary = require("chromium")
    chromedriver = require("chromedriver")
    require_module("selenium", "selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={workdir / 'profile'}")
    workdir.mkdir(parents=True, exist_ok=True)
    if downloads is not None:
        options.add_experimental_option(
            "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
        )
    service = Service(executable_path=chromedriver, log_output=str(workdir / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        if downloads is not None:
            driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        driver.quit()
