"""Open an HTML page in headless Chromium (Selenium + chromedriver): check it loaded, take a screenshot.

Used by the experiment page's test (every image loaded, no console error, each section present) and by
``benchmarks/page_screenshot.py``. Nothing is downloaded: the browser and driver are the local
``chromium`` and ``chromedriver`` (Debian: ``apt-get install chromium chromium-driver``), or the
executables named by ``NEONET_CHROMIUM`` / ``NEONET_CHROMEDRIVER``.
"""

from __future__ import annotations

import base64
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neonet.errors import NeonetError
from neonet.run.atomic import atomic_path

#: Executable names tried for the browser, in order.
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
REMEDY = (
    "Install Selenium (`pip install selenium`, in the `dev` extras) and a local Chromium with its driver "
    "(Debian/Ubuntu: `apt-get install chromium chromium-driver`), or name them with NEONET_CHROMIUM and "
    "NEONET_CHROMEDRIVER."
)


@dataclass
class PageCheck:
    """What the browser saw on a page.

    Attributes:
        title: the document title.
        images: every ``<img>``: its ``src``, whether it finished loading and its natural width.
        console: browser log entries (level, message) of the load.
        section_ids: the ``id`` of every ``<section>``.
    """

    title: str
    images: list[dict[str, Any]] = field(default_factory=list)
    console: list[dict[str, Any]] = field(default_factory=list)
    section_ids: list[str] = field(default_factory=list)

    @property
    def broken_images(self) -> list[str]:
        """``src`` of the images that did not load (incomplete, or no pixels)."""
        return [i["src"] for i in self.images if not i["complete"] or not i["naturalWidth"]]

    @property
    def errors(self) -> list[str]:
        """Console messages of level SEVERE (failed loads, script errors)."""
        return [str(e.get("message")) for e in self.console if e.get("level") == "SEVERE"]


def find_browser() -> tuple[Path, Path] | None:
    """(browser, chromedriver) executables, or None when either is missing (or Selenium is not installed)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    browser = os.environ.get("NEONET_CHROMIUM") or next((p for b in BROWSERS if (p := shutil.which(b))), None)
    driver = os.environ.get("NEONET_CHROMEDRIVER") or shutil.which("chromedriver")
    if not browser or not driver or not Path(browser).is_file() or not Path(driver).is_file():
        return None
    return Path(browser), Path(driver)


@contextmanager
def headless(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium WebDriver with the browser log enabled; closed on exit.

    Raises:
        NeonetError: Selenium, the browser or its driver is missing (the message says how to install them).
    """
    found = find_browser()
    if found is None:
        raise NeonetError(f"no headless browser to open the page with. {REMEDY}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = str(browser)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(driver_path)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver: Any, page: Path) -> None:
    if not page.is_file():
        raise NeonetError(f"{page}: no such page. Write it with `neonet report --experiment NAME` first.")
    driver.get(page.resolve().as_uri())
    driver.execute_async_script(  # wait until every image has loaded or failed
        "const done = arguments[arguments.length - 1];"
        "Promise.all(Array.from(document.images).map(i => i.complete ? null :"
        " new Promise(r => { i.onload = i.onerror = r; }))).then(() => done());"
    )


def _screenshot(driver: Any, out: Path) -> Path:
    """A full-page PNG of the open page (all of its height, not just the window)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_bytes(base64.b64decode(shot["data"]))
    return out


def check_page(page: str | os.PathLike, screenshot: str | os.PathLike | None = None, width: int = 1280) -> PageCheck:
    """Open ``page`` in headless Chromium and report what loaded; optionally save a full-page screenshot.

    Args:
        page: the HTML file.
        screenshot: where to write a full-page PNG (written atomically), or None.
        width: the window width in CSS pixels.

    Raises:
        NeonetError: the page does not exist, or no browser is available.
    """
    with headless(width) as driver:
        _open(driver, Path(page))
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,"
            " naturalWidth: i.naturalWidth}));"
        )
        sections = driver.execute_script("return Array.from(document.querySelectorAll('section[id]')).map(s => s.id);")
        console = list(driver.get_log("browser"))
        check = PageCheck(title=driver.title, images=list(images), console=console, section_ids=list(sections))
        if screenshot is not None:
            _screenshot(driver, Path(screenshot))
    return check


def screenshot_page(page: str | os.PathLike, out: str | os.PathLike, width: int = 1280) -> Path:
    """Write a full-page PNG screenshot of ``page`` to ``out``.

    Raises:
        NeonetError: the page does not exist, or no browser is available.
    """
    check_page(page, out, width)
    return Path(out)
