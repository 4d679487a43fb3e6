"""The book's Sphinx adjustments (``_config.yml`` loads this file as a local extension).

- The bibliography's style: entries labelled "Author et al. Year" (as the text cites them),
  sorted by author, each with its arXiv, DOI or web link. Registered with pybtex as the
  formatting style ``vpbib``; ``_config.yml`` selects it with ``bibtex_default_style``.
- Each script tag once per page: sphinx-thebe 0.3.1 registers its configuration script twice
  under Jupyter Book 1, and the second copy's ``const`` declarations throw a SyntaxError on
  every page.
- A colour mode on every page: with none set, the theme's script logs "Got invalid theme mode"
  as a console error on each load; "auto" follows the reader's system setting.
- Tables in the PDF: a styled table's output carries a LaTeX tabular
  (``vplib.tables.styler_latex``) beside its HTML, and myst-nb renders any ``text/latex``
  output as display maths. In the LaTeX build such a block is passed through as raw LaTeX.
"""

from docutils import nodes
from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.transforms.post_transforms import SphinxPostTransform


class AuthorYearLabels(BaseLabelStyle):
    """"Sandler et al. 2018", "Ba et al. 2016", "Deng et al. 2009"; "a", "b" on a clash."""

    def format_labels(self, sorted_entries):
        labels = [self._label(entry) for entry in sorted_entries]
        seen: dict[str, int] = {}
        for label in labels:
            seen[label] = seen.get(label, 0) + 1
        counts: dict[str, int] = {}
        for label in labels:
            if seen[label] > 1:
                counts[label] = counts.get(label, 0) + 1
                yield label + "abcdefghij"[counts[label] - 1]
            else:
                yield label

    @staticmethod
    def _label(entry) -> str:
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        year = entry.fields.get("year", "n.d.")
        if not people:
            return f"{entry.key} {year}"
        first = _surname(people[0])
        if len(people) == 1:
            return f"{first} {year}"
        if len(people) == 2:
            return f"{first} and {_surname(people[1])} {year}"
        return f"{first} et al. {year}"


def _surname(person) -> str:
    """"van der Maaten", "Sandler": the name a citation shows, without BibTeX's braces."""
    return " ".join(person.prelast_names + person.last_names).replace("{", "").replace("}", "")


class Style(UnsrtStyle):
    default_label_style = "vpbib"
    default_sorting_style = "author_year_title"


def _each_script_once(app, pagename, templatename, context, doctree):
    if not context.get("default_mode"):
        context["default_mode"] = "auto"
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for script in scripts:
        # Sphinx keeps inline scripts with a filename of None or "": the same script either way.
        name = getattr(script, "filename", script) or ""
        key = (str(name), tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


class RawLatexTables(SphinxPostTransform):
    """In the LaTeX build, a maths block that holds a tabular is a table: emit it as is."""

    default_priority = 5
    builders = ("latex",)

    def run(self, **kwargs):
        for node in list(self.document.findall(nodes.math_block)):
            if "\\begin{tabular}" in node.astext():
                node.replace_self(nodes.raw("", node.astext(), format="latex"))


def setup(app):
    app.add_post_transform(RawLatexTables)
    register_plugin("pybtex.style.labels", "vpbib", AuthorYearLabels)
    register_plugin("pybtex.style.formatting", "vpbib", Style)
    app.connect("html-page-context", _each_script_once)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
