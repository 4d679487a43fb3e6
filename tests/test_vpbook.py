"""The book's Sphinx extension (book/_ext/vpbook.py): what it changes in the built pages."""

import sys
from pathlib import Path

from docutils import nodes
from docutils.frontend import get_default_settings
from docutils.parsers.rst import Parser
from docutils.utils import new_document

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "book" / "_ext"))
import vpbook  # noqa: E402


def test_pdf_build_passes_table_maths_blocks_through_as_raw_latex():
    document = new_document("test", get_default_settings(Parser))
    table = "{\\small\n\\begin{tabular}{lr}\n\\toprule\na & 1 \\\\\n\\bottomrule\n\\end{tabular}\n}"
    document += nodes.math_block(table, table)
    document += nodes.math_block("x^2", "x^2")  # a real equation stays maths
    vpbook.RawLatexTables(document).run()
    raws = list(document.findall(nodes.raw))
    assert len(raws) == 1 and raws[0]["format"] == "latex" and raws[0].astext() == table
    assert [m.astext() for m in document.findall(nodes.math_block)] == ["x^2"]
    assert vpbook.RawLatexTables.builders == ("latex",)  # the web pages keep the HTML table
