"""Recording runs: the environment a notebook ran in, its results JSON, and the status page.

Every chapter ends with :func:`save_results`, which writes ``<chapter>.json`` (standard
profile) or ``<chapter>.<profile>.json`` (other profiles) with the chapter's numbers, its
runtime and :func:`environment` into :data:`RESULTS_DIR` (``book/results`` in a checkout,
``./vplib-results`` otherwise, or ``$VPLIB_RESULTS_DIR``). Chapters read the course's committed
numbers with :func:`committed_results`. ``python -m vplib.report`` turns the standard-profile
files into ``book/status.md``, the book's execution table.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from datetime import datetime, timezone
from pathlib import Path

from .checks import beats_chance  # noqa: F401  (re-exported: vplib.report.beats_chance)
from .profiles import get_profile

_ROOT = Path(__file__).resolve().parents[1]
# Run from a checkout of the course, the committed results are book/results; an installed
# vplib (pip, Colab) carries a copy of them as package data, vplib/results.
IN_CHECKOUT = (_ROOT / "pyproject.toml").is_file() and (_ROOT / "book" / "results").is_dir()
COMMITTED_DIR = _ROOT / "book" / "results" if IN_CHECKOUT else Path(__file__).resolve().parent / "results"


def _own_results_dir() -> Path:
    """Where this process writes its results: ``$VPLIB_RESULTS_DIR`` if set; else, in a
    checkout, ``book/results`` (``make execute`` regenerates the committed files there);
    else ``./vplib-results`` in the working directory, never inside the installed package."""
    if os.environ.get("VPLIB_RESULTS_DIR"):
        return Path(os.environ["VPLIB_RESULTS_DIR"])
    return COMMITTED_DIR if IN_CHECKOUT else Path.cwd() / "vplib-results"


RESULTS_DIR = _own_results_dir()


def _cpu_model() -> str:
    try:  # Linux names the processor model here; platform.processor() is often empty
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions, device and profile of the running process."""
    import timm
    import torch
    import torchvision

    from . import __version__

    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        threads = torch.get_num_threads()
        device = f"CPU: {_cpu_model()}, {threads} thread{'s' if threads != 1 else ''}"
    return {
        "profile": get_profile().name,
        "device": device,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "vplib": __version__,
    }


def committed_results(name: str) -> dict:
    """A results JSON committed with the course, ``book/results/<name>``: read from the
    checkout, or from the copy an installed vplib carries. A reader's own runs (written to
    :data:`RESULTS_DIR`) are never read here, so they cannot pass for the committed numbers
    outside a checkout.

    Raises:
        FileNotFoundError: no such file, with the names that exist.
    """
    path = COMMITTED_DIR / name
    if path.is_file():
        return json.loads(path.read_text())
    known = sorted(p.name for p in COMMITTED_DIR.glob("*.json")) if COMMITTED_DIR.is_dir() else []
    if not known:
        raise FileNotFoundError(
            f"vplib has no committed results at {COMMITTED_DIR}: this installation was built "
            "without them. Reinstall vplib from the course repository (pip install "
            "'vplib @ git+<repository URL>'), which ships book/results as package data, or run "
            "from a clone of the repository.")
    raise FileNotFoundError(f"no committed result named {name!r}; the course commits: "
                            f"{', '.join(known)}")


_STARTED: list[float] = []  # when vplib.setup() last ran (time.perf_counter())


def mark_start() -> None:
    """Note now as the start of a chapter's run (``vplib.setup`` calls it)."""
    _STARTED[:] = [time.perf_counter()]


def save_results(chapter: str, results: dict, *, started: float | None = None,
                 results_dir: str | os.PathLike | None = None) -> Path:
    """Write ``results`` for ``chapter`` with runtime (since ``started``, a
    ``time.perf_counter()`` value, default: the last ``vplib.setup()``) and environment;
    returns the path written."""
    if started is None:
        if not _STARTED:
            raise RuntimeError("save_results needs started=... or a vplib.setup() call first")
        started = _STARTED[0]
    profile = get_profile().name
    folder = Path(results_dir) if results_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{chapter}.json" if profile == "standard" else f"{chapter}.{profile}.json"
    record = {
        "chapter": chapter,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "runtime_s": round(time.perf_counter() - started, 1),
        "environment": environment(),
        "results": results,
    }
    path = folder / name
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def finish(chapter: str, results: dict) -> None:
    """A chapter's last cell: :func:`save_results`, then one line with the file's name (not
    a local path), the runtime since ``vplib.setup()``, the device and the profile."""
    path = save_results(chapter, results)
    record = json.loads(path.read_text())
    print(f"wrote {_shown(path)} · {record['runtime_s']:.0f} s · "
          f"{record['environment']['device']} · profile {record['environment']['profile']}")


def _shown(path: Path) -> str:
    """``path`` relative to the checkout or the working directory; else its last two parts."""
    for base in ([_ROOT] if IN_CHECKOUT else []) + [Path.cwd()]:
        if path.resolve().is_relative_to(base.resolve()):
            return path.resolve().relative_to(base.resolve()).as_posix()
    return f"{path.parent.name}/{path.name}"


def save_benchmark(name: str, rows: list[dict],
                   results_dir: str | os.PathLike | None = None) -> Path:
    """Write benchmark ``rows`` with the environment to ``<name>_<device>.json``; returns it."""
    env = environment()
    tag = re.sub(r"[^a-z0-9]+", "_", env["device"].lower()).strip("_")[:40]
    folder = Path(results_dir) if results_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{tag}.json"
    path.write_text(json.dumps({"environment": env, "date": time.strftime("%Y-%m-%d"),
                                "rows": rows}, indent=2) + "\n")
    return path


def status_table(results_dir: str | os.PathLike | None = None) -> str:
    """A Markdown table of every standard-profile chapter run found in ``results_dir``, each
    chapter linked to its page (the table lives in ``book/status.md``)."""
    folder = Path(results_dir) if results_dir is not None else COMMITTED_DIR
    rows = ["| chapter | date | runtime | device | torch | timm |",
            "|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.json")):
        if path.stem.count("."):
            continue  # other profiles
        rec = json.loads(path.read_text())
        if "chapter" not in rec:
            continue  # benchmarks, training histories: not chapter runs
        env = rec["environment"]
        chapter = f"[{rec['chapter']}](../notebooks/{rec['chapter']}.ipynb)"  # from book/status.md
        rows.append(f"| {chapter} | {rec['date']} | {rec['runtime_s']:.0f} s | "
                    f"{env['device']} | {env['torch']} | {env['timm']} |")
    return "\n".join(rows)


def write_status_page(path: str | os.PathLike, results_dir=None) -> None:
    """Regenerate the table between the markers in the status page at ``path``."""
    page = Path(path)
    text = page.read_text()
    begin, end = "<!-- status-table:begin -->", "<!-- status-table:end -->"
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    page.write_text(f"{head}{begin}\n{status_table(results_dir)}\n{end}{tail}")


if __name__ == "__main__":
    if not IN_CHECKOUT:
        raise SystemExit("python -m vplib.report regenerates book/status.md: run it in a checkout")
    write_status_page(COMMITTED_DIR.parent / "status.md")
    print(f"updated {COMMITTED_DIR.parent / 'status.md'}")
