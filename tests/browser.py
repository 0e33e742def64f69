"""Headless Chromium (through Selenium and Debian's chromedriver) driving the heke-serve page,
for the page's tests and ``scripts/serve_screenshot.py``; the server itself is
``tests.servers.Server``.

>>> with chromium() as driver:
...     upload_in_page(driver, server.url, clip)
...     scores = wait_for_scores(driver)            # {"ensemble": "0.079", ...}

Debian's ``chromium`` and ``chromium-driver`` packages are used, never a browser fetched at
run time (``.ci/run`` installs them). ``chromium_missing()`` says what is missing, so a test
can skip, or fail under ``CI``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# The machines that run the tests have no network: without the background-networking,
# component-update, sync and QUIC switches Chromium keeps trying to reach Google's services
# and stalls. The sandbox cannot start as root (CI containers) and there is no GPU to use.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",  # containers give /dev/shm a few MB; Chromium crashes there
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
)


def chromium_missing() -> str | None:
    """Why the browser cannot run here, or None."""
    lacking = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        lacking.append("the selenium package (the dev extra)")
    if not lacking:
        return None
    return f"missing {', '.join(lacking)} (apt-get install chromium chromium-driver)"


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium WebDriver with a fresh profile, closed (and its profile deleted)
    on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="heke-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    # Both paths given: Selenium Manager (which downloads drivers) is never asked.
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def in_ci() -> bool:
    """CI sets ``CI`` (to ``true``): there a missing browser fails instead of skipping."""
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def upload_in_page(driver: Any, base_url: str, video: Path) -> None:
    """Open the page and submit ``video`` through its file input (the page then polls the
    job it made)."""
    from selenium.webdriver.common.by import By

    driver.get(base_url + "/")
    driver.find_element(By.ID, "video-file").send_keys(str(Path(video).resolve()))
    driver.find_element(By.ID, "upload-button").click()


def wait_for_scores(driver: Any, timeout_s: float = 120) -> dict[str, str]:
    """The score texts the page shows, by head, once they appear (or the error it shows,
    raised as AssertionError)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d: Any) -> bool:
        return bool(d.find_elements(By.ID, "score-ensemble")) or _error_text(d) is not None

    WebDriverWait(driver, timeout_s).until(shown)
    error = _error_text(driver)
    if error is not None:
        raise AssertionError(f"the page shows an error: {error}")
    cards = driver.find_elements(By.CSS_SELECTOR, "#scores [data-head]")
    return {
        c.get_attribute("data-head"): c.find_element(By.CLASS_NAME, "value").text for c in cards
    }


def wait_for_error(driver: Any, timeout_s: float = 60) -> str:
    """The one-line error the page shows, once it shows one."""
    from selenium.webdriver.support.ui import WebDriverWait

    text: str = WebDriverWait(driver, timeout_s).until(_error_text)
    return text


def _error_text(driver: Any) -> str | None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "error")
    return box.text if box.is_displayed() and box.text else None
