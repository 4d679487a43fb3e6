"""environment.yml must install what pyproject.toml's dependencies and extras install."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _norm(req: str) -> str:
    return re.sub(r"\s+", "", req.split("#")[0]).lower().replace("_", "-")


def _pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in ("book", "test"):
        reqs += meta["optional-dependencies"][extra]
    return reqs


def _environment_pip():
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = []
    for line in lines[start + 1:]:
        m = re.match(r"\s+- (.+)$", line)
        if not m:
            break
        reqs.append(m.group(1))
    return reqs


def test_environment_pip_section_matches_pyproject():
    assert sorted(map(_norm, _environment_pip())) == sorted(map(_norm, _pyproject()))


def test_no_deps_assets_agree_between_makefile_and_environment():
    makefile = (ROOT / "Makefile").read_text()
    nodeps = re.search(r"^NODEPS := (.+)$", makefile, re.M).group(1).split()
    env_text = (ROOT / "environment.yml").read_text()
    assert nodeps and all(pkg in env_text for pkg in nodeps)


def test_no_tight_pins():
    assert not [r for r in _pyproject() if "==" in r]


def test_every_colab_cell_installs_vplib_from_the_configured_repository():
    """One setting names the repository: `_config.yml`'s `repository.url` (the book's links).
    Each chapter's Colab cell installs vplib (with the `colab` extra) from it, and the assets
    that install without dependencies, as the Makefile does."""
    import yaml

    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    nodeps = re.search(r"^NODEPS := (.+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    for md in sorted((ROOT / "notebooks").glob("[0-9A-Z]*_*.md")):
        cell = next(c for c in md.read_text().split("```{code-cell}") if "google.colab" in c)
        assert f'"vplib[colab] @ git+{url}"' in cell, md.name
        assert f"--no-deps {nodeps}" in cell, md.name


def test_mlxtend_does_not_upgrade_colabs_numpy():
    """mlxtend 0.24+ requires numpy>=2.3.5 and pandas>=2.3.3, which replaces Colab's; the
    pinned range keeps an mlxtend that accepts the numpy already there."""
    from importlib.metadata import requires, version

    numpy_req = [r for r in requires("mlxtend") if r.startswith("numpy")]
    assert version("mlxtend").startswith("0.23") and numpy_req == ["numpy>=1.16.2"], numpy_req
