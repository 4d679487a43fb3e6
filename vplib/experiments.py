"""Grids of training runs through ``fit``: one JSON record per run, resumable.

The chapters' heavy experiments (ablations, sweeps, several seeds) are grids of
``method x backbone x dataset x options x seed``. This module runs such a grid with the same
``vplib.build`` / ``vplib.train.fit`` code as the chapters' live cells and writes one JSON file
per finished run, so a grid can run once (on a GPU, or as a long CPU job), be committed, and be
read back by the chapter. A run whose JSON exists is skipped; a run that was killed resumes
from its last epoch checkpoint (``fit(resume=True)``).

From Python::

    from vplib import experiments
    runs = experiments.grid(["linear", "vp-pad"], ["mobilenet_v2"], ["mnist"], seeds=[0, 1, 2])
    records = experiments.run_grid(runs, "runs/vp_demo")
    experiments.summarize(records)      # mean and sd over seeds, one row per setting

From the shell (options as JSON; each dict in ``--options`` is one setting)::

    python -m vplib.experiments --out runs/vp_demo --methods linear vp-pad \\
        --backbones mobilenet_v2 --datasets mnist --seeds 0 1 2 \\
        --options '{"prompt_size": 4}' '{"prompt_size": 8}'

Each record holds the run's identity (method, backbone, dataset, options, seed), test and
validation accuracy, trainable parameters (absolute and as % of the backbone), seconds per
epoch, images/s, peak GPU memory, the profile, device, versions, git commit and date.

Option keys that are ``fit`` settings (``FIT_KEYS``: ``epochs``, ``lr``, ``batch_size``, ...)
go to ``fit``; ``DATA_KEYS`` (``image_size``, ``max_train``: a stratified cap on training
images, never above the profile's) shape the data; every other key goes to ``vplib.build``.
Unset learning rates come from ``DEFAULT_LR``: per-method starting points for AdamW, not
tuned values. The course's grids tune them instead: ``--lr-grid`` (:func:`select_then_seed`
with :func:`lr_grid`) trains each setting at its base rate times ``LR_FACTORS`` with the first
seed (extending the grid while the best lies at an end of it), keeps the rate with the best
validation accuracy and runs the other seeds at it; with
``{"patience": P, "schedule": "plateau"}`` every run divides its rate by 10 whenever
validation accuracy has not improved for ``P`` epochs, twice, and stops at the next such
plateau (its record says ``stopped_early`` and ``lr_drops``). ``--save`` refuses records
trained from a modified checkout; each record also carries ``vplib_source``, a hash of
vplib's code.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import subprocess
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .backbones import SCRATCH, load
from .data import load_dataset
from .model import METHODS, REGISTRY, build
from .profiles import Profile, get_profile
from .report import RESULTS_DIR, environment
from .train import _atomic_write_json, evaluate, fit

FIT_KEYS = ("epochs", "lr", "weight_decay", "batch_size", "augment", "warmup_epochs",
            "label_smoothing", "compile", "precision", "patience", "schedule")

DATA_KEYS = ("image_size", "max_train")



def _default_lrs() -> dict[str, float]:

    return {name: spec.default_lr for name, spec in REGISTRY.items()}


DEFAULT_LR = _default_lrs()  # per-method starting points (vplib.model.REGISTRY), not tuned

# A learning-rate grid as multiples of a base rate (a run's own "lr" option, else DEFAULT_LR):
# 16x from end to end, so a base rate a factor of 4 off either way is still inside the grid.
LR_FACTORS = (0.25, 1.0, 4.0)
EDGE_EXTENSIONS = 2  # a choice at an end of the grid adds up to this many rates beyond it


def lr_grid(method: str, options: dict | None = None, factors=LR_FACTORS) -> list[float]:
    """The learning rates to choose from on validation for ``method`` with ``options``: the
    base rate (``options["lr"]`` if set, else ``DEFAULT_LR[method]``) times each factor,
    rounded to three significant digits."""
    base = (options or {}).get("lr", DEFAULT_LR.get(method, 1e-3))
    return [float(f"{base * f:.3g}") for f in factors]


@dataclass(frozen=True)
class Run:
    """One cell of a grid."""

    method: str
    backbone: str
    dataset: str
    seed: int = 0
    options: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A file-name-safe, stable identifier (options hashed, so any values are allowed)."""
        opts = json.dumps(self.options, sort_keys=True)
        digest = hashlib.sha1(opts.encode()).hexdigest()[:8] if self.options else "default"
        return f"{self.dataset}__{self.backbone}__{self.method}__{digest}__seed{self.seed}"


def grid(methods, backbones, datasets, *, seeds=(0,), options=({},)) -> list[Run]:
    """Every combination of ``methods x backbones x datasets x options x seeds``.

    ``options`` is a list of option dicts applied to every method, or a dict mapping a method
    to its own list (methods not in it get ``[{}]``).
    """

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    per_method = options if isinstance(options, dict) else {m: list(options) for m in methods}
    return [Run(m, b, d, s, dict(o)) for d in datasets for b in backbones for m in methods
            for o in per_method.get(m, [{}]) for s in seeds]


def vplib_source_hash() -> str:
    """sha256 (first 16 hex digits) over the path and bytes of every ``.py`` file of the
    installed vplib package: two records with the same hash were trained by the same code,
    whatever the commit says (and without git, e.g. from a wheel)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _git_commit() -> str | None:
    """HEAD of the checkout vplib is imported from, with ``-dirty`` when tracked files differ
    from it (``book/results``, where grids write what they produced, excepted); ``None``
    outside a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)book/results"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if dirty.strip() else "")


# One dataset at a time: a grid runs every method and seed of a dataset before the next, and
# a whole dataset at paper size is gigabytes of host memory.
@functools.lru_cache(maxsize=1)
def _data(name: str, size: int, max_train: int | None, max_eval: int | None):

    return load_dataset(name, size=size, rgb=True, max_train=max_train, max_eval=max_eval)


def _split_options(options: dict, profile: Profile, method: str) -> tuple[dict, dict, dict]:
    """``options`` split into ``fit`` settings (with the profile's defaults), data settings
    and ``build`` options."""
    opts = dict(options)
    fit_kw = {k: opts.pop(k) for k in FIT_KEYS if k in opts}
    data_kw = {k: opts.pop(k) for k in DATA_KEYS if k in opts}
    fit_kw.setdefault("epochs", profile.epochs)
    fit_kw.setdefault("batch_size", profile.batch_size)
    fit_kw.setdefault("lr", DEFAULT_LR.get(method, 1e-3))
    return fit_kw, data_kw, opts


def train_and_test(model, data, *, method: str, backbone: str, seed: int = 0,
                   options: dict | None = None, fit_kw: dict, dataset: str | None = None,
                   profile: Profile | None = None, device: str | None = None,
                   checkpoint_dir=None, verbose: bool = False):
    """``fit`` ``model`` on ``data.train`` / ``data.val``, test it once on ``data.test``, and
    return ``(history, record)``: the record has the schema that :func:`run_one` writes (and
    ``vplib.tables.records_frame`` reads), plus ``train_seconds`` (wall time of ``fit``)."""
    import time

    profile = profile or get_profile()
    t0 = time.perf_counter()
    history = fit(model, data.train, data.val, seed=seed, device=device,
                  checkpoint_dir=checkpoint_dir, resume=checkpoint_dir is not None,
                  verbose=verbose, **fit_kw)
    train_seconds = time.perf_counter() - t0
    test = evaluate(model, data.test)  # where fit left it (under torchrun: the local GPU)
    counts = model.param_counts()
    epochs = history.epochs
    peaks = [r["peak_mem_mb"] for r in epochs if r["peak_mem_mb"] is not None]
    run = Run(method, backbone, dataset or data.name, seed, dict(options or {}))
    record = {
        **asdict(run), "key": run.key, "fit": dict(fit_kw),
        "image_size": int(data.image_shape[-1]),
        "test_acc": test["acc"], "val_acc": history.best["val_acc"],
        "best_epoch": history.best_epoch, "epochs_run": len(epochs),
        "stopped_early": history.stopped_early, "lr_drops": list(history.lr_drops),
        "n_train": len(data.train), "n_test": len(data.test),
        "trainable_params": counts["trainable"], "backbone_params": counts["backbone"],
        "trainable_pct_of_backbone": 100 * counts["trainable"] / counts["backbone"],
        "seconds_per_epoch": sum(r["seconds"] for r in epochs) / len(epochs),
        "images_per_s": sum(r["images_per_s"] for r in epochs) / len(epochs),
        "train_seconds": train_seconds,
        "peak_mem_mb": max(peaks) if peaks else None,
        "cached_features": history.config.get("cached_features", False),
        "precision": history.config["precision"],
        "history": history.epochs,
        "environment": environment() | {"profile": profile.name},
        "git_commit": _git_commit(), "vplib_source": vplib_source_hash(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    return history, record


@dataclass
class LiveRun:
    """A run trained in a chapter's own process: the trained model, its history and its
    record (the schema of :func:`run_one`)."""

    model: object
    history: object
    record: dict


def live_run(method: str, backbone, data, *, seed: int = 0, profile: Profile | None = None,
             device: str | None = None, verbose: bool = False, model=None,
             **options) -> LiveRun:
    """Build ``method`` on ``backbone`` (a name or a :class:`~vplib.backbones.Backbone`),
    train it on ``data`` (a :class:`~vplib.data.DatasetSplits`) and test it once: what a
    chapter's live cell does, with the same option routing (``FIT_KEYS`` to ``fit``, the rest
    to ``vplib.build``) and defaults (the profile's epochs and batch size, ``DEFAULT_LR``) as a
    grid run. ``model``: train this already-built model instead of building one (``method``
    then only labels the record). The head's initialisation is seeded with ``seed``."""
    import torch

    profile = profile or get_profile()
    fit_kw, data_kw, build_kw = _split_options(options, profile, method)
    if data_kw:
        raise ValueError(f"live_run trains on the data it is given; {sorted(data_kw)} shape "
                         "the data: pass them to load_dataset instead")
    if isinstance(backbone, str):
        torch.manual_seed(seed)  # as run_one: a from-scratch backbone's init follows the seed
        backbone = load(backbone)
    if model is None:
        torch.manual_seed(seed)
        model = build(method, backbone, data.num_classes,
                      image_size=int(data.image_shape[-1]), **build_kw)
    elif build_kw:
        raise ValueError(f"options {sorted(build_kw)} build a model; with model=... pass only "
                         f"fit settings ({', '.join(FIT_KEYS)})")
    history, record = train_and_test(model, data, method=method, backbone=backbone.name,
                                     seed=seed, options=options, fit_kw=fit_kw,
                                     profile=profile, device=device, verbose=verbose)
    return LiveRun(model, history, record)


def run_one(run: Run, out_dir: str | os.PathLike, profile: Profile | None = None, *,
            device: str | None = None, verbose: bool = False) -> dict:
    """Train and test one run; write ``out_dir/<run.key>.json`` and return the record."""
    import torch

    profile = profile or get_profile()
    out_dir = Path(out_dir)
    fit_kw, data_kw, opts = _split_options(run.options, profile, run.method)

    torch.manual_seed(run.seed)
    backbone = load(run.backbone, pretrained=True)
    native = backbone.kind == "vit" or run.backbone in SCRATCH  # fixed input size
    size = data_kw.get("image_size") or (backbone.input_size if native else profile.image_size)
    max_train = data_kw.get("max_train", profile.max_train)
    if profile.max_train is not None and max_train is not None:
        max_train = min(max_train, profile.max_train)
    data = _data(run.dataset, size, max_train, profile.max_eval)
    torch.manual_seed(run.seed)
    model = build(run.method, backbone, data.num_classes, image_size=size, **opts)
    _, record = train_and_test(model, data, method=run.method, backbone=run.backbone,
                               seed=run.seed, options=run.options, fit_kw=fit_kw,
                               dataset=run.dataset, profile=profile, device=device,
                               checkpoint_dir=out_dir / "checkpoints" / run.key,
                               verbose=verbose)
    record["image_size"] = size
    out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write_json(record, out_dir / f"{run.key}.json")
    return record


def _read_record(path: Path) -> dict:
    """A run record written by :func:`run_one`, or an error that names the file."""
    try:
        record = json.loads(path.read_text())
        record["environment"]["profile"], record["key"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a run record of vplib.experiments ({type(err).__name__}: "
                         f"{err}); delete it (its run is trained again) or move it out of the "
                         "grid folder") from None
    return record


def load_records(out_dir: str | os.PathLike) -> list[dict]:
    """Every finished run's record in ``out_dir``, sorted by key."""
    return [_read_record(p) for p in sorted(Path(out_dir).glob("*.json"))]


def run_grid(runs: list[Run], out_dir: str | os.PathLike, profile: Profile | None = None, *,
             device: str | None = None, verbose: bool = True) -> list[dict]:
    """Run every run in ``runs`` that has no record in ``out_dir`` yet; return all records
    of ``runs`` (finished earlier or now), in the order of ``runs``."""
    out_dir = Path(out_dir)
    profile = profile or get_profile()
    records = []
    for i, run in enumerate(runs, 1):
        path = out_dir / f"{run.key}.json"
        if path.exists():
            record = _read_record(path)
            if record["environment"]["profile"] != profile.name:
                raise ValueError(f"{path} was run in the {record['environment']['profile']} "
                                 f"profile, not {profile.name}: use another out_dir.")
            status = "done earlier"
        else:
            record = run_one(run, out_dir, profile, device=device)
            status = f"test acc {record['test_acc']:.4f}, {record['seconds_per_epoch']:.1f} s/epoch"
        if verbose:
            print(f"[{i}/{len(runs)}] {run.key}: {status}", flush=True)
        records.append(record)
    return records


def select_then_seed(runs: list[Run], lrs, out_dir: str | os.PathLike,
                     profile: Profile | None = None, *, seeds=(0, 1, 2),
                     extend: int = EDGE_EXTENSIONS, device: str | None = None,
                     verbose: bool = True) -> list[dict]:
    """Tune each run's learning rate on validation, then repeat the chosen one over seeds.

    For every run of ``runs`` (their own seed is ignored) each learning rate of its grid is
    trained with ``seeds[0]``. ``lrs`` is that grid: a list (the same for every run), or
    ``None`` for :func:`lr_grid` of the run's method and options. While the best validation
    accuracy (ties: the first in the grid) lies at an end of the grid, the grid grows by one
    rate beyond that end (the end's neighbour ratio again), at most ``extend`` times. The rate
    chosen is then trained with the other ``seeds``. Test accuracy plays no part in the choice.
    Returns every record (the tuning runs first), each with ``lr_selection``: the grid (sorted,
    with its extensions), each rate's validation accuracy, the chosen rate, ``extended`` (rates
    added), whether the choice still lies at an end (then a wider grid may do better) and
    ``selected`` (this run is at the chosen rate: it belongs to the reported result).
    Resumable like :func:`run_grid`.
    """
    grids = [list(lrs) if lrs is not None else lr_grid(r.method, r.options) for r in runs]
    if not seeds or any(not g for g in grids):
        raise ValueError("select_then_seed needs at least one learning rate and one seed")
    trials, per_run, chosen = [], [], []
    for run, g in zip(runs, grids):
        g, added = sorted(g), 0
        while True:
            tuning = [Run(run.method, run.backbone, run.dataset, seeds[0], {**run.options, "lr": lr})
                      for lr in g]
            found = run_grid(tuning, out_dir, profile, device=device, verbose=verbose)
            vals = [t["val_acc"] for t in found]
            best = max(range(len(g)), key=lambda j: (vals[j], -j))
            at_edge = len(g) > 1 and best in (0, len(g) - 1)
            if not at_edge or added >= extend:
                break
            g = ([float(f"{g[0] * g[0] / g[1]:.3g}")] + g if best == 0
                 else g + [float(f"{g[-1] * g[-1] / g[-2]:.3g}")])
            added += 1
        sel = {"lrs": g, "val_acc": vals, "chosen": g[best], "extended": added,
               "at_edge": at_edge}
        trials += [(t, sel) for t in found]
        per_run.append(sel)
        chosen += [(Run(run.method, run.backbone, run.dataset, s, {**run.options, "lr": g[best]}),
                    sel) for s in seeds[1:]]
    repeats = run_grid([r for r, _ in chosen], out_dir, profile, device=device, verbose=verbose)
    pairs = trials + [(record, sel) for record, (_, sel) in zip(repeats, chosen)]
    return [{**record, "lr_selection": {**sel, "selected": record["fit"]["lr"] == sel["chosen"]}}
            for record, sel in pairs]


def _require_clean(when: str) -> None:
    commit = _git_commit()
    if commit is None or commit.endswith("-dirty"):
        raise SystemExit(f"--save refused {when}: vplib is imported from "
                         f"{'a modified checkout' if commit else 'outside a git checkout'} "
                         f"({Path(__file__).resolve().parents[1]}); commit or stash the "
                         "changes (or run from a clean `git worktree`) so that every saved "
                         "record names the code that trained it.")


def export(records: list[dict], name: str, command: str,
           results_dir: str | os.PathLike | None = None) -> Path:
    """Add ``records`` to ``book/results/<name>.json`` with the ``command`` that produced
    them, so a chapter can load them with ``vplib.report.committed_results``. Records already
    in the file under other keys are kept, so several grids can share one file."""

    folder = Path(results_dir) if results_dir is not None else RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    old = json.loads(path.read_text()) if path.exists() else {"commands": [], "records": []}
    new_keys = {r["key"] for r in records}
    merged = [r for r in old["records"] if r["key"] not in new_keys] + list(records)
    commands = [c for c in old["commands"] if c != command] + [command]
    path.write_text(json.dumps({
        "commands": commands,
        "git_commits": sorted({r["git_commit"] or "unknown" for r in merged}),
        "vplib_sources": sorted({r.get("vplib_source") or "unknown" for r in merged}),
        "profiles": sorted({r["environment"]["profile"] for r in merged}),
        "records": merged}, indent=1) + "\n")
    return path


def restore(name: str, out_dir: str | os.PathLike,
            results_dir: str | os.PathLike | None = None) -> int:
    """Write each record of ``book/results/<name>.json`` that ``out_dir`` lacks back into
    ``out_dir``, so that a grid whose run folder is gone (a fresh clone) resumes from its
    committed records instead of training them again. Returns how many were restored."""
    path = Path(results_dir if results_dir is not None else RESULTS_DIR) / f"{name}.json"
    if not path.exists():
        return 0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    restored = 0
    for record in json.loads(path.read_text())["records"]:
        target = out_dir / f"{record['key']}.json"
        if not target.exists():
            _atomic_write_json({k: v for k, v in record.items() if k != "lr_selection"}, target)
            restored += 1
    return restored


def summarize(records: list[dict], by=("dataset", "backbone", "method", "options")):
    """A DataFrame with one row per setting: mean and sd over seeds of test accuracy,
    trainable parameters, seconds per epoch and the number of seeds."""
    import pandas as pd

    rows = [{**{k: (json.dumps(r[k], sort_keys=True) if k == "options" else r[k]) for k in by},
             "test_acc": r["test_acc"], "trainable_params": r["trainable_params"],
             "trainable_pct_of_backbone": r["trainable_pct_of_backbone"],
             "seconds_per_epoch": r["seconds_per_epoch"]} for r in records]
    frame = pd.DataFrame(rows)
    grouped = frame.groupby(list(by), sort=False)
    out = grouped.agg(test_acc_mean=("test_acc", "mean"), test_acc_sd=("test_acc", "std"),
                      seeds=("test_acc", "size"),
                      trainable_params=("trainable_params", "first"),
                      trainable_pct=("trainable_pct_of_backbone", "first"),
                      seconds_per_epoch=("seconds_per_epoch", "mean"))
    return out.reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run a grid of vplib training runs "
                                     "(resumable: finished runs are skipped).")
    parser.add_argument("--out", required=True, type=Path, help="folder for the run records")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--backbones", nargs="+", required=True)
    parser.add_argument("--datasets", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--options", nargs="+", type=json.loads, default=[{}],
                        help="JSON dicts, one per setting, e.g. '{\"prompt_size\": 8}'")
    parser.add_argument("--profile", default=None, help="quick, standard or paper "
                        "(default: $VPLIB_PROFILE, else standard)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--lrs", nargs="+", type=float, default=None,
                        help="choose each setting's learning rate on validation among these "
                             "with the first seed, then run the other seeds at it")
    parser.add_argument("--lr-grid", action="store_true",
                        help="as --lrs, with each setting's own grid: its base rate (its "
                             "'lr' option, else DEFAULT_LR) times LR_FACTORS, extended "
                             "while the best rate lies at an end of it")
    parser.add_argument("--save", default=None, metavar="NAME",
                        help="also write every record of the grid to book/results/NAME.json "
                             "(records already there are not trained again)")
    args = parser.parse_args(argv)
    if args.lrs and args.lr_grid:
        parser.error("pass --lrs or --lr-grid, not both")
    if args.save:
        _require_clean("before training")
        restored = restore(args.save, args.out)
        if restored:
            print(f"restored {restored} finished record(s) of book/results/{args.save}.json "
                  f"into {args.out}", flush=True)
    runs = grid(args.methods, args.backbones, args.datasets, seeds=args.seeds,
                options=args.options)
    if args.lrs or args.lr_grid:
        settings = grid(args.methods, args.backbones, args.datasets, options=args.options)
        records = select_then_seed(settings, args.lrs, args.out, get_profile(args.profile),
                                   seeds=args.seeds, device=args.device)
    else:
        records = run_grid(runs, args.out, get_profile(args.profile), device=args.device)
    if args.save:
        dirty = sorted({r["key"] for r in records
                        if not r.get("git_commit") or r["git_commit"].endswith("-dirty")})
        if dirty:
            raise SystemExit(f"--save refused: {len(dirty)} record(s) in {args.out} were trained "
                             f"from a modified or unknown checkout (e.g. {dirty[0]}); delete "
                             "them and rerun from a clean commit.")
        import shlex
        import sys

        words = ["python", "-m", "vplib.experiments"] + (argv if argv is not None else sys.argv[1:])
        print("wrote", export(records, args.save, shlex.join(words)))
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 20):
        print(summarize(records).to_string(index=False))


if __name__ == "__main__":
    main()
