"""vplib as a reader in Colab gets it: built into a wheel, installed outside the checkout, a
chapter run from another folder. Its committed numbers come with the wheel, and the reader's own
results land in their folder, not in the installed package."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel of this checkout installed (without dependencies: they are this venv's) into a
    folder of its own; returns that folder."""
    tmp = tmp_path_factory.mktemp("install")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--no-build-isolation", "--wheel-dir", tmp / "wheel", ROOT],
                   check=True, timeout=600, cwd=tmp)
    (wheel,) = (tmp / "wheel").glob("vplib-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--target", tmp / "site", wheel], check=True, timeout=600)
    return tmp / "site"


def _env(site: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "VPLIB_RESULTS_DIR"}
    return {**env, "PYTHONPATH": str(site), "VPLIB_PROFILE": "quick", "TQDM_DISABLE": "1"}


def test_the_wheel_carries_the_committed_results(installed, tmp_path):
    code = ("import json, vplib, vplib.report as r; "
            "print(json.dumps([vplib.__file__, r.IN_CHECKOUT, str(r.RESULTS_DIR), "
            "sorted(p.name for p in r.COMMITTED_DIR.glob('*.json')), "
            "r.committed_results('08_benchmark_grid.json')['commands']]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=_env(installed),
                         capture_output=True, text=True, check=True, timeout=300).stdout
    where, in_checkout, results_dir, names, commands = json.loads(out.splitlines()[-1])
    assert Path(where).is_relative_to(installed) and not in_checkout
    assert Path(results_dir) == tmp_path / "vplib-results"
    assert names == sorted(p.name for p in (ROOT / "book" / "results").glob("*.json"))
    assert commands == json.loads((ROOT / "book/results/08_benchmark_grid.json").read_text())["commands"]


def test_a_chapter_runs_from_outside_the_checkout(installed, tmp_path):
    """Chapter 08 (it reads several committed grids and trains live) in the quick profile."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / "08_benchmark.ipynb", as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell("import vplib; print(vplib.__file__)"))
    before = sorted(p.relative_to(installed) for p in installed.rglob("*"))
    saved = dict(os.environ)
    os.environ.update(_env(installed))  # the kernel inherits this process's environment
    try:
        NotebookClient(notebook, timeout=1200, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert Path(notebook.cells[-1].outputs[0]["text"].strip()).is_relative_to(installed)
    record = json.loads((tmp_path / "vplib-results" / "08_benchmark.quick.json").read_text())
    assert record["environment"]["profile"] == "quick"
    assert sorted(p.relative_to(installed) for p in installed.rglob("*")
                  if "__pycache__" not in p.parts) == [p for p in before if "__pycache__" not in p.parts]
