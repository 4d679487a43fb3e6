"""Open every page of the built book in headless Chromium and fail on what a reader would see.

    python tests/browser_check.py _build/html [--screenshots DIR]

Serves the site on localhost (as a host would: fonts and scripts load over HTTP, not file://),
opens each page at 1,400 px wide and reports, per page:
- a console error or an uncaught script error;
- an image that did not load;
- a table, figure, code block or output wider than the content column (it would be cut off or
  scroll sideways), and a display equation cut off at the column's edge;
- "nan", warning text ("UserWarning", "Warning:") or an absolute local path in the page's text.
Widths and text are checked with every fold opened (folded cells, solutions), so what a reader
can unfold is covered too. Each page's line also gives the share of its height taken by code
and outputs, the part of it that is numbered figures and captioned tables, and the share of
code alone, as a reader first sees it (folds closed).
With --screenshots, it also saves each page at 1,400 px and at 400 px (a phone) for a person
to look at. Needs Chromium (Debian's ``chromium`` package) and Playwright (``pip install
playwright``; it drives the system Chromium, it downloads no browser). `make browser` installs
both and runs this.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import sys
import threading
from pathlib import Path

DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 400, "height": 800}
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
]
# Text a page must not show: NaN glued into prose, warnings printed by a cell, a path on the
# machine that executed the notebooks.
TEXT_PATTERNS = {
    "nan": re.compile(r"\bnan\b", re.IGNORECASE),
    "warning text": re.compile(r"\b\w*Warning\b(?!s)|Warning:"),
    "absolute local path": re.compile(r"(?<![\w.:/])/(?:work|home|root|tmp|usr|opt|content|mnt)/[\w.-]+"),
}
# Runs first, with the page as a reader first sees it: the share of the article's height taken
# by code and outputs, and by code alone (a folded cell counts only its toggle; Chromium lays
# out a folded cell's content though nobody sees it until they open it).
SHARE_JS = """
() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  const folded = (el) => el.closest('details:not([open]), .admonition.toggle-hidden') !== null;
  // how much of the page is code and its output (a folded cell counts only its toggle)
  const height = (els) => [...els].reduce((h, el) => h + el.getBoundingClientRect().height, 0);
  const blocks = [...article.querySelectorAll('div.cell div.cell_input, div.cell div.cell_output')]
    .filter(el => !folded(el));
  blocks.push(...article.querySelectorAll('div.cell details:not([open]) > summary'));
  for (const el of article.querySelectorAll('div[class*="highlight-"]')) {
    if (!el.closest('div.cell') && !folded(el)) blocks.push(el);  // a code block in the prose
  }
  const code = height(blocks);
  const inputs = blocks.filter(el => !el.matches('div.cell_output'));
  // of the outputs: numbered, captioned figures and captioned tables (what a book shows)
  const captioned = [...article.querySelectorAll(
      'div.cell_output figure:has(figcaption), div.cell_output table:has(> caption)')]
    .filter(el => !folded(el));
  const total = article.getBoundingClientRect().height;
  return {share: code / total, codeShare: height(inputs) / total,
          captionedShare: height(captioned) / total};
}
"""
# Then every fold is opened (cells, solutions), so the checks below cover what a reader can
# unfold as well as what they see first.
OPEN_JS = """
() => {
  document.querySelectorAll('details').forEach(d => { d.open = true; });
  document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
}
"""
# Runs in the page: every element wider than the article column, every display equation cut
# off, every image that failed to load.
MEASURE_JS = """
() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  const col = article.getBoundingClientRect();
  const describe = (el) => {
    const text = (el.innerText || el.getAttribute('alt') || el.getAttribute('src') || '')
      .trim().replace(/\\s+/g, ' ').slice(0, 70);
    return `${el.tagName.toLowerCase()}${el.id ? '#' + el.id : ''} "${text}"`;
  };
  const wide = [];
  const selector = 'table, img, figure, pre, div.cell_output, div.output';
  for (const el of article.querySelectorAll(selector)) {
    const box = el.getBoundingClientRect();
    if (box.width === 0) continue;
    const overflowRight = box.right - col.right;
    const scrolls = el.scrollWidth - el.clientWidth;
    if (overflowRight > 1 || scrolls > 1) {
      wide.push(`${describe(el)}: ${Math.round(Math.max(box.width, el.scrollWidth))} px `
        + `in a ${Math.round(col.width)} px column`);
    }
  }
  const cut = [];
  for (const el of article.querySelectorAll('mjx-container[display="true"], div.math')) {
    const inner = el.querySelector('mjx-math') || el;
    const box = inner.getBoundingClientRect();
    if (box.right - col.right > 1 || el.scrollWidth - el.clientWidth > 1) cut.push(describe(el));
  }
  const broken = [...document.images].filter(i => i.complete && i.naturalWidth === 0)
    .map(i => i.getAttribute('src'));
  // the text a reader is told: prose and outputs, not code (where `np.nan` is fine) nor the
  // API reference
  const prose = article.cloneNode(true);
  for (const el of prose.querySelectorAll('.cell_input, div[class*="highlight-python"], '
      + 'div[class*="highlight-ipython"], div[class*="highlight-bash"], code, '
      + 'dl.py')) el.remove();  // dl.py: the API reference, whose docstrings may say "NaN"
  document.body.appendChild(prose);
  prose.style.position = 'absolute'; prose.style.left = '-10000px';
  const text = prose.innerText;
  prose.remove();
  return {wide, cut, broken, text};
}
"""


def serve(root: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    """Serve ``root`` on a free localhost port in a daemon thread; returns (server, base URL)."""
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/"


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # one line per request would bury the report
        pass


def pages(root: Path) -> list[Path]:
    skip = {"_static", "_sources", "_images", "_sphinx_design_static", "_panels_static"}
    found = [p for p in sorted(root.rglob("*.html")) if not skip & set(p.relative_to(root).parts)]
    # index.html is only a redirect; search.html and genindex.html hold no prose
    return [p for p in found if p.name not in {"index.html", "search.html", "genindex.html"}]


def check_page(page, url: str) -> tuple[list[str], dict]:
    """The problems a reader would see on ``url``, and the page's code shares (SHARE_JS)."""
    messages: list[str] = []
    page.on("console", lambda m: m.type == "error" and messages.append(f"console error: {m.text}"))
    page.on("pageerror", lambda e: messages.append(f"script error: {e}"))
    page.on("requestfailed", lambda r: messages.append(f"failed to load {r.url}"))
    page.goto(url, wait_until="load")
    page.wait_for_function("() => !window.MathJax || !MathJax.startup || MathJax.startup.promise",
                           timeout=10_000)
    page.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise : null")
    page.wait_for_timeout(200)
    shares = page.evaluate(SHARE_JS)
    page.evaluate(OPEN_JS)
    page.wait_for_timeout(100)
    found = page.evaluate(MEASURE_JS)
    problems = list(dict.fromkeys(messages))
    problems += [f"wider than the column: {w}" for w in found["wide"]]
    problems += [f"display equation cut off: {c}" for c in found["cut"]]
    problems += [f"image did not load: {b}" for b in found["broken"]]
    for name, pattern in TEXT_PATTERNS.items():
        for match in pattern.finditer(found["text"]):
            start = max(match.start() - 40, 0)
            context = found["text"][start:match.end() + 40].replace("\n", " ")
            problems.append(f"{name} in the text: ...{context}...")
    return problems, shares


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="the built site, e.g. _build/html")
    parser.add_argument("--screenshots", type=Path, help="also save each page at 1,400 and 400 px")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sys.exit("browser_check needs Playwright: pip install playwright (or run `make browser`)")
    if not Path(args.chromium).exists():
        sys.exit(f"browser_check needs Chromium at {args.chromium}: "
                 "sudo apt-get install chromium (or run `make browser`)")
    site = args.site.resolve()
    todo = pages(site)
    if not todo:
        sys.exit(f"no pages under {site}: build the book first (make book)")
    server, base = serve(site)
    failures: dict[str, list[str]] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        for path in todo:
            rel = path.relative_to(site).as_posix()
            context = browser.new_context(viewport=DESKTOP)
            page = context.new_page()
            problems, shares = check_page(page, base + rel)
            if args.screenshots:  # as a reader first sees it: folds closed again
                page.reload(wait_until="load")
                page.wait_for_timeout(500)
                stem = rel.removesuffix(".html").replace("/", "__")
                args.screenshots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=args.screenshots / f"{stem}__1400.png", full_page=True)
                page.set_viewport_size(PHONE)
                page.wait_for_timeout(300)
                page.screenshot(path=args.screenshots / f"{stem}__400.png", full_page=True)
            context.close()
            print(f"{'ok  ' if not problems else 'FAIL'} {rel}  (code and output: "
                  f"{shares['share']:.0%} of the page's height, of which captioned figures and "
                  f"tables {shares['captionedShare']:.0%}; code alone: {shares['codeShare']:.0%})")
            if problems:
                failures[rel] = problems
        browser.close()
    server.shutdown()
    for rel, problems in failures.items():
        print(f"\n{rel}:")
        for problem in problems:
            print(f"  - {problem}")
    if failures:
        print(f"\n{len(failures)} of {len(todo)} pages have problems a reader would see.")
        return 1
    print(f"\nall {len(todo)} pages passed the browser check.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
