"""The built book in a real headless browser, as a reader on a phone and offline sees it.

Run by ``make browser`` after ``make book-strict`` (so by CI); not a pytest module.  At
phone and desktop widths it opens a chapter, checks the chapter drawer: on the phone the
visible toggle opens the chapter list, on the desktop it hides and shows the sidebar, and
that a formula is typeset by MathJax with every request outside the local server refused.
Needs the ``playwright`` package and a Chromium (``CHROMIUM`` or ``/usr/bin/chromium``).
"""

from __future__ import annotations

import functools
import http.server
import os
import sys
import threading
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import sync_playwright

PHONE, DESKTOP = 420, 1280
CHAPTER = "notebooks/00_tour.html"


def serve(root: Path) -> http.server.ThreadingHTTPServer:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # the page's requests are not the test's output
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def page_with_math(root: Path) -> str:
    for page in sorted(root.glob("notebooks/*.html")):
        if 'class="math' in page.read_text(encoding="utf-8"):
            return page.relative_to(root).as_posix()
    raise AssertionError("no page of the book has a formula to check")


def offline_page(browser, base: str, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    # Offline: anything not served by the local server is refused.
    page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(base) else r.abort())
    return page, errors


def visible_links(page) -> int:
    links = page.locator("nav.bd-docs-nav a.reference")
    return sum(links.nth(i).is_visible() for i in range(links.count()))


def visible_toggle(page):
    toggles = page.locator(".primary-toggle")
    shown = [toggles.nth(i) for i in range(toggles.count()) if toggles.nth(i).is_visible()]
    assert shown, "no visible chapter-drawer button"
    return shown[0]


def check(root: Path, chromium: str) -> list[str]:
    server = serve(root)
    base = f"http://127.0.0.1:{server.server_port}/"
    report = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        # the phone: the chapter list is closed, and the drawer opens it
        page, errors = offline_page(browser, base, PHONE)
        page.goto(base + CHAPTER, wait_until="load")
        assert visible_links(page) == 0, "on a phone the chapter list should start closed"
        visible_toggle(page).click()
        try:
            page.wait_for_function(
                "document.getElementById('pst-primary-sidebar-modal').open", timeout=5_000
            )
        except PlaywrightTimeout:
            raise AssertionError(
                f"at {PHONE}px the chapter-drawer button did not open it"
            ) from None
        opened = visible_links(page)
        assert opened > 0, "the chapter drawer opened empty"
        page.keyboard.press("Escape")
        page.wait_for_function("!document.getElementById('pst-primary-sidebar-modal').open")
        assert not errors, f"script errors at {PHONE}px: {errors}"
        report.append(f"{PHONE}px: the drawer opens with {opened} chapter links and closes")
        # the desktop: the sidebar is shown, and the button hides it and shows it again
        page, errors = offline_page(browser, base, DESKTOP)
        page.goto(base + CHAPTER, wait_until="load")
        shown = visible_links(page)
        assert shown > 0, "on a desktop the chapter list should be shown"
        visible_toggle(page).click()
        assert visible_links(page) == 0, "the button did not hide the sidebar"
        visible_toggle(page).click()
        assert visible_links(page) == shown, "the button did not show the sidebar again"
        assert not errors, f"script errors at {DESKTOP}px: {errors}"
        report.append(f"{DESKTOP}px: the button hides and shows the {shown} chapter links")
        # code fits the column: no code block scrolls sideways
        wide = page.locator("div.cell_input pre").evaluate_all(
            "blocks => blocks.filter(b => b.scrollWidth > b.clientWidth + 1).length"
        )
        assert wide == 0, f"{wide} code blocks of {CHAPTER} scroll sideways at {DESKTOP}px"
        # every figure says what it shows, not where its file is
        alts = page.locator("main img").evaluate_all("images => images.map(i => i.alt)")
        bare = [a for a in alts if not a or a.endswith((".png", ".svg", ".jpg"))]
        assert alts and not bare, f"{len(bare)} of {len(alts)} figures have no alt text: {bare[:3]}"
        report.append(f"{CHAPTER}: {len(alts)} figures, each with alt text")
        # a formula, typeset offline
        math = page_with_math(root)
        page, errors = offline_page(browser, base, PHONE)
        page.goto(base + math, wait_until="load")
        page.wait_for_selector("mjx-container", timeout=20_000)
        typeset = page.locator("mjx-container").count()
        assert not errors, f"script errors on {math}: {errors}"
        report.append(f"{math}: {typeset} formulas typeset offline")
        browser.close()
    server.shutdown()
    return report


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "book/_build/html")
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    if not (root / CHAPTER).is_file():
        print(f"book_in_browser: no built book at {root}; run `make book-strict` first")
        return 1
    for line in check(root, chromium):
        print(f"book_in_browser: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
