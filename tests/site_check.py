"""Check a built book: every page has content, every internal link and image resolves, no
prose says "0 of 0", and no committed notebook output carries a glued NaN or infinity, warning
text, or an absolute local path.

Usage: python tests/site_check.py _build/html [notebooks]
Exit status 1 lists what is broken. Run by `make book`; `tests/test_site_check.py` runs the
notebook checks in `make test` too.
"""

from __future__ import annotations

import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.images = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("href"):
            self.refs.append(("link", attrs["href"]))
        elif tag == "img" and attrs.get("src"):
            self.images += 1
            self.refs.append(("image", attrs["src"]))
        elif tag in ("script", "link") and (attrs.get("src") or attrs.get("href")):
            self.refs.append(("asset", attrs.get("src") or attrs.get("href")))


class _Prose(HTMLParser):
    """The text of a page outside code, outputs, scripts and styles."""

    SKIP = {"pre", "code", "script", "style"}

    def __init__(self):
        super().__init__()
        self.depth, self.parts = 0, []

    def handle_starttag(self, tag, attrs):
        self.depth += tag in self.SKIP

    def handle_endtag(self, tag):
        self.depth -= tag in self.SKIP and self.depth > 0

    def handle_data(self, data):
        if not self.depth:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", "".join(self.parts))


EMPTY_COUNT = re.compile(r"\b0 (?:of|out of) 0\b")
NON_FINITE = re.compile(r"^(?:np\.float\d*\()?[-+]?(?:nan|inf)\)?$", re.IGNORECASE)
WARNING_TEXT = re.compile(r"\b\w*Warning\b|\bIProgress\b|\bwarnings\.warn\b")
LOCAL_PATH = re.compile(r"(?<![\w.])/(?:tmp|home|root|work|Users|private/var)/\S+")


def prose_problems(text: str) -> list[str]:
    """What a page's prose must not say."""
    return [f"an empty count {m.group(0)!r}" for m in EMPTY_COUNT.finditer(text)]


def output_problems(notebook: dict) -> list[str]:
    """Glued non-finite numbers, warning text and local paths in a notebook's outputs."""
    problems = []
    for i, cell in enumerate(notebook.get("cells", [])):
        for out in cell.get("outputs", []):
            name = out.get("metadata", {}).get("scrapbook", {}).get("name")
            data = out.get("data", {})
            texts = ["".join(out["text"])] if "text" in out else [
                "".join(v) if isinstance(v, list) else str(v) for k, v in data.items()
                if "text" in k or k.endswith("json")]
            for text in texts:
                if name is not None and NON_FINITE.match(text.strip().strip("'\"")):
                    problems.append(f"cell {i}: glued {name} = {text.strip()}")
                if m := WARNING_TEXT.search(text):
                    problems.append(f"cell {i}: warning text in an output: ...{m.group(0)}...")
                if m := LOCAL_PATH.search(text):
                    problems.append(f"cell {i}: a local path in an output: {m.group(0)[:60]}")
    return problems


def check_notebooks(folder: Path) -> list[str]:
    return [f"{path}: {problem}" for path in sorted(Path(folder).glob("*.ipynb"))
            for problem in output_problems(json.loads(path.read_text(encoding="utf-8")))]


def check(site: Path) -> list[str]:
    problems = []
    # _static holds the theme's Jinja templates, not pages
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)
    if not pages:
        return [f"no HTML pages under {site}"]
    for page in pages:
        parser, prose = _Refs(), _Prose()
        html = page.read_text(encoding="utf-8", errors="replace")
        parser.feed(html)
        prose.feed(html)
        problems += [f"{page.relative_to(site)}: {p}" for p in prose_problems(prose.text)]
        for kind, ref in parser.refs:
            url = urlparse(ref)
            if url.scheme or ref.startswith(("#", "mailto:", "//", "data:")):
                continue
            target = (page.parent / unquote(url.path)).resolve()
            if url.path and not target.exists():
                problems.append(f"{page.relative_to(site)}: broken {kind} {ref}")
    for chapter in site.glob("notebooks/*.html"):
        parser = _Refs()
        parser.feed(chapter.read_text(encoding="utf-8"))
        if parser.images == 0:
            problems.append(f"{chapter.relative_to(site)}: a chapter without a single figure")
    mathjax = site / "_static" / "mathjax" / "tex-chtml.js"
    if not mathjax.exists():
        problems.append("MathJax is not served locally (_static/mathjax/tex-chtml.js missing)")
    return problems


if __name__ == "__main__":
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "_build/html")
    found = check(root) + (check_notebooks(Path(sys.argv[2])) if len(sys.argv) > 2 else [])
    for line in found:
        print(line)
    n = len([p for p in root.rglob("*.html") if "_static" not in p.relative_to(root).parts])
    print(f"site check: {n} pages, {len(found)} problems")
    sys.exit(1 if found else 0)
