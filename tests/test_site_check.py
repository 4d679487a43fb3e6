"""The book's output checks (tests/site_check.py) catch what they are meant to, and the
committed notebooks pass them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import site_check  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _glue(name, text):
    return {"output_type": "display_data", "metadata": {"scrapbook": {"name": name}},
            "data": {"application/papermill.record/text/plain": text}}


def test_glued_non_finite_numbers_are_caught_and_finite_ones_pass():
    cells = [{"outputs": [_glue("a", "nan"), _glue("b", "np.float64(-inf)"), _glue("c", "0.93"),
                          _glue("d", "'features.8'"), _glue("e", "inf")]}]
    problems = site_check.output_problems({"cells": cells})
    assert [p.split("glued ")[1].split(" =")[0] for p in problems] == ["a", "b", "e"]


def test_warning_text_and_local_paths_in_outputs_are_caught():
    stream = {"output_type": "stream", "name": "stderr",
              "text": ["/tmp/x/vplib/train.py:12: UserWarning: something\n"]}
    plain = {"output_type": "execute_result", "data": {"text/plain": "IProgress not found"}}
    ok = {"output_type": "stream", "name": "stdout", "text": "accuracy 93.1 % on 1,000 images\n"}
    problems = site_check.output_problems({"cells": [{"outputs": [stream, plain, ok]}]})
    assert sum("warning text" in p for p in problems) == 2
    assert sum("local path" in p for p in problems) == 1


def test_an_empty_count_in_prose_is_caught_but_code_is_not_prose():
    prose = site_check._Prose()
    prose.feed("<p>AP wins in 0 of 0 pairs</p> <pre>in 0 of 0</pre><p>and 3 of 4, 10 of 0</p>")
    assert prose.text == "AP wins in 0 of 0 pairs and 3 of 4, 10 of 0"
    assert site_check.prose_problems(prose.text) == ["an empty count '0 of 0'"]


def test_the_committed_notebooks_pass_the_output_checks():
    assert site_check.check_notebooks(ROOT / "notebooks") == []
