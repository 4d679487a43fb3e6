import json
import time

import pytest

from vplib.report import environment, save_results, status_table, write_status_page


def test_results_are_named_by_profile_and_carry_environment(tmp_path, monkeypatch):
    path = save_results("99_demo", {"acc": 0.5}, started=time.perf_counter(), results_dir=tmp_path)
    assert path.name == "99_demo.quick.json"  # tests run in the quick profile
    record = json.loads(path.read_text())
    assert record["results"] == {"acc": 0.5} and record["environment"]["profile"] == "quick"
    monkeypatch.setenv("VPLIB_PROFILE", "standard")
    assert save_results("99_demo", {}, started=0.0, results_dir=tmp_path).name == "99_demo.json"


def test_status_table_lists_only_standard_runs(tmp_path, monkeypatch):
    save_results("99_quick_only", {}, started=time.perf_counter(), results_dir=tmp_path)
    monkeypatch.setenv("VPLIB_PROFILE", "standard")
    save_results("98_demo", {}, started=time.perf_counter(), results_dir=tmp_path)
    table = status_table(tmp_path)
    assert "98_demo" in table and "99_quick_only" not in table
    assert "[98_demo](../notebooks/98_demo.ipynb)" in table  # each chapter links to its page
    page = tmp_path / "status.md"
    page.write_text("intro\n<!-- status-table:begin -->\nold\n<!-- status-table:end -->\nend\n")
    write_status_page(page, tmp_path)
    text = page.read_text()
    assert "old" not in text and "98_demo" in text and text.startswith("intro") and text.endswith("end\n")


def test_environment_names_versions_and_device():
    env = environment()
    assert {"device", "torch", "timm", "profile", "python"} <= set(env)


def test_importing_vplib_does_not_seed_or_style(tmp_path):
    import subprocess
    import sys

    code = ("import torch; torch.manual_seed(123); a = torch.rand(1); "
            "torch.manual_seed(123); import vplib, matplotlib as mpl; b = torch.rand(1); "
            "assert torch.equal(a, b); "
            "import sys; assert 'seaborn' not in sys.modules, 'seaborn imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_benchmarks_are_saved_with_their_device(tmp_path):
    from vplib.report import save_benchmark

    path = save_benchmark("demo", [{"x": 1}], results_dir=tmp_path)
    record = json.loads(path.read_text())
    assert path.name.startswith("demo_") and record["rows"] == [{"x": 1}]
    assert record["environment"]["device"]


def test_committed_results_come_from_the_course_and_say_what_exists(tmp_path, monkeypatch):
    from vplib import report

    assert report.IN_CHECKOUT  # the tests run from a checkout: book/results is the source
    assert report.committed_results("01_linear_probing.json")["chapter"] == "01_linear_probing"
    with pytest.raises(FileNotFoundError, match="01_linear_probing.json"):  # a typo: the list
        report.committed_results("01_linear_probing")
    monkeypatch.setattr(report, "COMMITTED_DIR", tmp_path / "none")  # installed without them
    with pytest.raises(FileNotFoundError, match="Reinstall vplib"):
        report.committed_results("01_linear_probing.json")


def test_own_results_go_to_the_readers_folder_outside_a_checkout(tmp_path, monkeypatch):
    from vplib import report

    monkeypatch.delenv("VPLIB_RESULTS_DIR", raising=False)
    assert report._own_results_dir() == report.COMMITTED_DIR  # a checkout: make execute's folder
    monkeypatch.setattr(report, "IN_CHECKOUT", False)
    monkeypatch.chdir(tmp_path)
    assert report._own_results_dir() == tmp_path / "vplib-results"  # never site-packages
    monkeypatch.setenv("VPLIB_RESULTS_DIR", str(tmp_path / "mine"))
    assert report._own_results_dir() == tmp_path / "mine"


def test_beats_chance_uses_three_binomial_standard_errors():
    from vplib.report import beats_chance

    # chance 0.1 on 900 images: se = 0.01, so the bar is 0.13
    assert beats_chance(0.131, 900, 10) and not beats_chance(0.129, 900, 10)
    assert not beats_chance(0.5, 4, 2)  # 2 of 4 right on a coin flip is chance
    assert beats_chance(0.121, 900, 10, z=2)
    with pytest.raises(ValueError):
        beats_chance(0.5, 0, 10)


def test_setup_returns_the_profile_and_finish_writes_the_chapter_record(tmp_path, monkeypatch,
                                                                         capsys):
    import json

    import vplib
    from vplib import report

    monkeypatch.setattr(report, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(report, "_STARTED", [])
    with pytest.raises(RuntimeError, match="vplib.setup"):
        report.save_results("xx_chapter", {})
    profile = vplib.setup(seed=0, style=False, profile="quick")
    assert profile.name == "quick"
    monkeypatch.setenv("VPLIB_PROFILE", "quick")
    assert report.finish("xx_chapter", {"acc": 0.5}) is None
    line = capsys.readouterr().out
    assert line.startswith(f"wrote {tmp_path.name}/xx_chapter.quick.json · ") and str(tmp_path) not in line
    record = json.loads((tmp_path / "xx_chapter.quick.json").read_text())
    assert record["results"] == {"acc": 0.5} and record["runtime_s"] >= 0
