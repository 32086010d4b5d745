"""Screenshot one element of an HTML page in headless Chromium (the report's main chart for README).

usage: python scripts/screenshot.py PAGE.html OUT.png [CSS selector, default: the first chart]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright


def main(page: Path, out: Path, selector: str = "figure:has(svg.chart)") -> None:
    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser_path is None:
        sys.exit("no chromium on PATH (Debian: apt-get install chromium)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(device_scale_factor=2)
        tab.goto(page.resolve().as_uri())
        tab.locator(selector).first.screenshot(path=str(out))
        browser.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *sys.argv[3:4])
