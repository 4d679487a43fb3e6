"""The browser check's text rules and page list (the browser itself runs in `make browser`)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import browser_check  # noqa: E402


def _flags(text: str) -> set[str]:
    return {name for name, pattern in browser_check.TEXT_PATTERNS.items() if pattern.search(text)}


def test_text_rules_flag_what_a_reader_should_not_see():
    assert _flags("accuracy nan% over 3 seeds") == {"nan"}
    assert _flags("UserWarning: The given NumPy array is not writable") == {"warning text"}
    assert _flags("Warning: IProgress not found") == {"warning text"}
    assert _flags("saved to /work/main/book/results/x.json") == {"absolute local path"}
    assert _flags("written under /tmp/tmpab12/run") == {"absolute local path"}


def test_text_rules_pass_ordinary_prose():
    ok = ("A nanometre-thin frame; no warnings were raised; see https://example.org/work/x and "
          "vplib/results/08.json, or ./vplib-results.")
    assert _flags(ok) == set()


def test_pages_skip_redirects_search_and_static_files(tmp_path):
    for rel in ["index.html", "search.html", "genindex.html", "book/intro.html",
                "notebooks/00_x.html", "_static/x.html", "_sources/y.html"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("<html></html>")
    found = [p.relative_to(tmp_path).as_posix() for p in browser_check.pages(tmp_path)]
    assert found == ["book/intro.html", "notebooks/00_x.html"]
