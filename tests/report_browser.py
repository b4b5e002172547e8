"""Open an HTML report in headless Chromium and say which plots it drew (PLATFORM.md recipe)."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    *("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"),
    *("--disable-background-networking", "--disable-component-update", "--disable-sync"),
]

# Each figure's title, its drawn width in pixels and how many SVG marks (paths, uses) it holds.
SCRIPT = """[...document.querySelectorAll('figure.plot')].map(f => {
  const svg = f.querySelector('svg');
  return [f.dataset.title, svg ? svg.getBoundingClientRect().width : 0,
          svg ? svg.querySelectorAll('path, use').length : 0];
})"""


def figures_drawn(page: Path) -> list[tuple[str, float, int]]:
    # Required, not skipped: .ci/run installs Chromium, the dev extra playwright.
    assert importlib.util.find_spec("playwright") is not None, "pip install playwright (dev)"
    assert Path(CHROMIUM).is_file(), "apt-get install -y chromium (.ci/run does)"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        context = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS
        )
        try:
            tab = context.new_page()
            tab.goto(page.resolve().as_uri())
            return [(str(t), float(w), int(n)) for t, w, n in tab.evaluate(SCRIPT)]
        finally:
            context.close()
