"""Recording runs: the environment a notebook ran in, its results JSON, and the status page.

Every chapter ends with :func:`save_results`, which writes ``book/results/<chapter>.json``
(standard profile) or ``book/results/<chapter>.<profile>.json`` (other profiles) with the
chapter's numbers, its runtime and :func:`environment`. ``python -m vplib.report`` turns the
standard-profile files into ``book/status.md``, the book's execution table.
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

RESULTS_DIR = Path(__file__).resolve().parents[1] / "book" / "results"
# Where committed results live when vplib is installed without the repository (e.g. in Colab).
RESULTS_URL = ("https://raw.githubusercontent.com/visual-prompting-hands-on/"
               "visual-prompting-hands-on/main/book/results/")


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
    repository checkout, or downloaded from the course repository when vplib was installed
    with pip (e.g. in Colab, which has internet).

    Raises:
        FileNotFoundError: neither available, with what to do.
    """
    import urllib.request

    path = RESULTS_DIR / name
    if path.exists():
        return json.loads(path.read_text())
    try:
        with urllib.request.urlopen(RESULTS_URL + name, timeout=30) as response:
            return json.loads(response.read())
    except Exception as err:
        raise FileNotFoundError(
            f"{name} is not in {RESULTS_DIR} (vplib is installed without the course "
            f"repository) and could not be downloaded from {RESULTS_URL} "
            f"({type(err).__name__}: {err}). Clone the repository and run from it, or connect "
            "to the internet.") from err


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
    print(f"wrote book/results/{path.name} · {record['runtime_s']:.0f} s · "
          f"{record['environment']['device']} · profile {record['environment']['profile']}")


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
    """A Markdown table of every standard-profile chapter run found in ``results_dir``."""
    folder = Path(results_dir) if results_dir is not None else RESULTS_DIR
    rows = ["| chapter | date | runtime | device | torch | timm |",
            "|---|---|---|---|---|---|"]
    for path in sorted(folder.glob("*.json")):
        if path.stem.count("."):
            continue  # other profiles
        rec = json.loads(path.read_text())
        if "chapter" not in rec:
            continue  # benchmarks, training histories: not chapter runs
        env = rec["environment"]
        rows.append(f"| {rec['chapter']} | {rec['date']} | {rec['runtime_s']:.0f} s | "
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
    write_status_page(RESULTS_DIR.parent / "status.md")
    print(f"updated {RESULTS_DIR.parent / 'status.md'}")
