"""Check the report in a real headless browser: no horizontal overflow at a given width, every image loads.

``python -m mergeflow.report.browser reports/report.html --screenshot reports/report.png`` prints the
measurements as JSON and exits 1 when a check fails. Chromium (Debian's ``chromium`` package) does the
rendering; the page is checked as written, from a copy that only adds a script reporting what the
browser laid out.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from mergeflow.errors import MergeflowError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# runs after layout and image decoding; writes its findings into the DOM that --dump-dom prints
PROBE = """<script>window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const out = {scroll_width: document.documentElement.scrollWidth, viewport_width: window.innerWidth,
               height: document.documentElement.scrollHeight, images: imgs.length,
               broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40))};
  const pre = document.createElement("pre"); pre.id = "mergeflow-probe"; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def find_chromium() -> str | None:
    """The path of a Chromium-like browser on PATH, or None."""
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    return None


def _chromium(binary: str, *args: str) -> str:
    cmd = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-dev-shm-usage", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise MergeflowError(f"{binary} failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    return out.stdout


def check_page(page: Path, width: int = 1280, screenshot: Path | None = None, binary: str | None = None) -> dict:
    """Lay ``page`` out at ``width`` px; the measurements and ``ok`` (no overflow, no broken image).

    Args:
        page: the HTML file (self-contained: images as data URIs).
        width: the window width in CSS pixels.
        screenshot: where to write a PNG of the whole page, if given.
        binary: the browser (default: the first of ``CANDIDATES`` on PATH).
    """
    binary = binary or find_chromium()
    if binary is None:
        raise MergeflowError(f"no headless browser found (looked for {', '.join(CANDIDATES)}); on Debian: "
                             "apt-get install chromium")
    page = Path(page).resolve()
    if not page.is_file():
        raise MergeflowError(f"{page}: no such report (run `mergeflow report` first)")
    html = page.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / page.name
        probe.write_text(html.replace("</body>", PROBE + "</body>", 1) if "</body>" in html else html + PROBE)
        dom = _chromium(binary, f"--window-size={width},900", "--virtual-time-budget=10000", "--dump-dom",
                        probe.as_uri())
    found = re.search(r'<pre id="mergeflow-probe">(.*?)</pre>', dom, re.S)
    if not found:
        raise MergeflowError(f"{binary} rendered {page} but the probe did not run")
    result = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    result["width"] = width
    result["ok"] = result["scroll_width"] <= width and not result["broken"]
    if screenshot is not None:
        screenshot = Path(screenshot).resolve()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        _chromium(binary, f"--window-size={width},{min(int(result['height']) + 20, 30000)}",
                  f"--screenshot={screenshot}", "--virtual-time-budget=10000", page.as_uri())
        result["screenshot"] = str(screenshot)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", nargs="?", default="reports/report.html")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        result = check_page(Path(args.page), args.width, args.screenshot)
    except MergeflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
