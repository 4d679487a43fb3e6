"""The paper profile's code paths, run end to end on a CPU with no network.

Each chapter notebook executes (nbclient, a fresh kernel) with ``VPLIB_PROFILE=paper`` and:

* torchvision's downloads replaced by files in the real on-disk formats, at full size
  (``vplib.fake_data``: MNIST 60,000 + 10,000, CIFAR-10 and CIFAR-100 50,000 + 10,000 random
  images), so every loading and conversion path runs at the paper's scale;
* hub models (``timm.create_model(..., pretrained=True)``) built with random weights, seeded
  by the name so that every load gives the same ones, as a download would (same architecture,
  all 12 blocks);
* validation and test sets capped at ``MAX_EVAL`` images (the profile's ``max_eval``);
* every ``fit`` first measured at the size the chapter asked for (``vplib.measure.fit_cost``:
  FLOPs and activation memory, from two images), then run on ``MAX_TRAIN`` of its training
  images, for one epoch (``VPLIB_MAX_EPOCHS``), in batches of at most ``BATCH`` (on a CPU
  autograd's saved activations live in host memory: a MobileNetV2 step on 128 images of
  224 px holds about 9 GB);
* ``vplib.checks.beats_chance`` and ``vplib.checks.beats`` (a baseline) answering True, and
  counting their calls: the images are noise and the weights random, so no accuracy can beat
  chance or a baseline. Every other assert of a chapter runs as written.

The kernel's peak resident memory (``ru_maxrss``), the wall time and the measured fits are
recorded per chapter. :func:`data_path_peak` measures what the caps leave out: ``fit`` on the
whole of CIFAR-100 at 224 px (45,000 training images resized batch by batch), with a model too
small to add memory of its own.

    python tests/paper_dry_run.py [chapter ...]    # prints the table and writes
                                                   # book/results/paper_dry_run_<device>.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))
MAX_TRAIN, MAX_EVAL, BATCH = 32, 100, 32  # 100: one image per CIFAR-100 class

SETUP = f"""\
# paper-profile dry run (tests/paper_dry_run.py): fake downloads, random hub weights, small fits
import dataclasses, resource, time, zlib
import timm, torch
import vplib, vplib.checks, vplib.data, vplib.experiments, vplib.fake_data, vplib.measure
import vplib.pretrain, vplib.profiles, vplib.train

_dry = {{"start": time.perf_counter(), "chance_checks": 0}}
vplib.profiles.PROFILES["paper"] = dataclasses.replace(
    vplib.profiles.PROFILES["paper"], max_eval={MAX_EVAL})
_dry["offline"] = vplib.fake_data.offline_torchvision()  # kept: collected, it would restore
_dry["offline"].__enter__()
_create_model = timm.create_model


def _random_weights(name, pretrained=False, **kwargs):
    if not pretrained:
        return _create_model(name, pretrained=False, **kwargs)
    with torch.random.fork_rng():  # the same "pretrained" weights at every load, as a download
        torch.manual_seed(zlib.crc32(name.encode()))
        return _create_model(name, pretrained=False, **kwargs)


def _beats_chance(acc, n, num_classes, **kwargs):
    _dry["chance_checks"] += 1
    return True


timm.create_model, vplib.checks.beats_chance = _random_weights, _beats_chance
vplib.checks.beats = lambda acc, reference, n, **kwargs: _beats_chance(acc, n, 2)
_dry["fits"], _fit = [], vplib.train.fit


def _measured_fit(model, train, val, **kwargs):
    # what this fit costs at the paper profile's size, then a run on {MAX_TRAIN} of its images
    requested = {{"epochs": kwargs["epochs"], "batch_size": kwargs.get("batch_size", 64)}}
    cost = vplib.measure.fit_cost(model, train, val, **requested,
                                  cache_features=kwargs.get("cache_features", True))
    _dry["fits"].append({{"model": type(model).__name__, "n_train": len(train), "n_val": len(val),
                         "image_shape": list(train.shape), **requested, **cost}})
    kwargs["batch_size"] = min(requested["batch_size"], {BATCH})
    return _fit(model, vplib.data.stratified_subset(train, {MAX_TRAIN}, 0), val, **kwargs)


for _module in (vplib, vplib.train, vplib.experiments, vplib.pretrain):
    _module.fit = _measured_fit
"""

REPORT = """\
import json
print("DRY-RUN " + json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                               "seconds": time.perf_counter() - _dry["start"],
                               "chance_checks": _dry["chance_checks"], "fits": _dry["fits"]}))
"""


def write_downloads(root: Path) -> Path:
    """The full-size fake downloads under ``root`` (where ``$VPLIB_DATA`` will point)."""
    from vplib.fake_data import write_cifar, write_mnist

    if not (root / "done").exists():
        write_mnist(root, "MNIST")
        write_cifar(root, "CIFAR10")
        write_cifar(root, "CIFAR100")
        (root / "done").touch()
    return root


DATA_PATH = """
import json, resource, sys, torch
from torch import nn
import vplib
from vplib.fake_data import offline_torchvision

with offline_torchvision():
    data = vplib.load_dataset("cifar100", size=224, rgb=True, source="online")
model = nn.Sequential(nn.AvgPool2d(32), nn.Flatten(), nn.Linear(3 * 7 * 7, 100))
history = vplib.fit(model, data.train, data.val, epochs=1, batch_size=128, verbose=False)
print("DRY-RUN " + json.dumps({
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "n_train": len(data.train), "image_shape": list(data.image_shape),
    "stored_mb": sum(s.raw.untyped_storage().nbytes() for s in (data.train, data.val, data.test)) / 2**20}))
"""


def data_path_peak(data_root: Path) -> dict:
    """Peak resident memory of ``fit`` over all of (fake) CIFAR-100 at 224 px, one epoch, in a
    fresh process: what the paper profile's largest dataset costs in host memory."""
    import subprocess

    t0 = time.perf_counter()
    env = {**os.environ, "VPLIB_DATA": str(data_root), "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", DATA_PATH], env=env, capture_output=True,
                          text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"the CIFAR-100 data-path run failed:\n{done.stderr[-3000:]}")
    line = [x for x in done.stdout.splitlines() if x.startswith("DRY-RUN ")][-1]
    return {"chapter": "fit on all of CIFAR-100 at 224 px", "status": "ran",
            "seconds": time.perf_counter() - t0, **json.loads(line.split(" ", 1)[1])}


def run_chapter(chapter: str, data_root: Path, workdir: Path, timeout: int = 1800) -> dict:
    """Execute ``notebooks/<chapter>.ipynb`` as described above; returns its row (raises the
    cell's error if the chapter fails)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "notebooks" / f"{chapter}.ipynb", as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell(SETUP))
    notebook.cells.append(nbformat.v4.new_code_cell(REPORT))
    env = {**os.environ, "VPLIB_PROFILE": "paper", "VPLIB_DATA": str(data_root),
           "VPLIB_MAX_EPOCHS": "1", "VPLIB_RESULTS_DIR": str(workdir / "results"),
           "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT / "notebooks")}})
    client.execute(env=env)
    (line,) = [out["text"] for out in notebook.cells[-1].outputs if out.get("name") == "stdout"]
    return {"chapter": chapter, **json.loads(line.split("DRY-RUN ", 1)[1])}


def main(chapters: list[str]) -> None:
    from vplib.report import RESULTS_DIR, environment, save_benchmark

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_downloads(Path(tmp) / "data")
        if not chapters:
            rows.append(data_path_peak(data))
            print(rows[-1], flush=True)
        for chapter in chapters or CHAPTERS:
            t0 = time.perf_counter()
            try:
                row = {**run_chapter(chapter, data, Path(tmp)), "status": "ran"}
            except Exception as err:  # noqa: BLE001  (the table reports it)
                print(str(err)[-3000:], flush=True)
                row = {"chapter": chapter, "status": f"failed: {type(err).__name__}",
                       "seconds": time.perf_counter() - t0, "peak_rss_mb": None}
            rows.append(row)
            print(f"{row['chapter']:<34} {row['status']:<22} {row['seconds']:>7.0f} s "
                  f"{row['peak_rss_mb'] or float('nan'):>8.0f} MB", flush=True)
    settings = {"max_train": MAX_TRAIN, "max_eval": MAX_EVAL, "batch_size": BATCH}
    rows = [{**row, **settings} for row in rows]
    if chapters:  # keep the other rows of an earlier run on this device
        device = environment()["device"]
        for earlier in RESULTS_DIR.glob("paper_dry_run_*.json"):
            record = json.loads(earlier.read_text())
            if record["environment"]["device"] == device:
                rows = [r for r in record["rows"] if r["chapter"] not in chapters] + rows
    rows.sort(key=lambda r: (r["chapter"] in CHAPTERS, r["chapter"]))  # the data path first
    path = save_benchmark("paper_dry_run", rows)
    print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
