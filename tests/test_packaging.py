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
