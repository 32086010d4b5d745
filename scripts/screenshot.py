"""Screenshot an HTML page in headless Chromium with a 1280 x 900 window: the window at the top of
the page (for the report: its summary and the start of its leaderboard, README's picture), or
one element of it.

usage: python scripts/screenshot.py PAGE.html OUT.png [CSS selector of one element]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

WINDOW = {"width": 1280, "height": 900}


def main(page: Path, out: Path, selector: str | None = None) -> None:
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        sys.exit("no chromium on PATH (Debian: apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        # an element (a chart) at twice the pixels, so that it stays sharp when scaled
        tab = browser.new_page(viewport=WINDOW, device_scale_factor=2 if selector else 1)
        tab.goto(page.resolve().as_uri())
        if selector:
            tab.locator(selector).first.screenshot(path=str(out))
        else:
            tab.screenshot(path=str(out))
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
