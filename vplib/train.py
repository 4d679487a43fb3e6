"""The trainer: one ``fit()`` for every method, the same code path on CPU and GPU.

What ``fit`` does, and why:

* **Data stays uint8 on the device.** The small datasets of this course are moved to the GPU
  once; each step indexes a batch, converts it to float and augments it there (random crop with
  zero padding, optional horizontal flip). No DataLoader, no worker processes. Datasets too
  large for half the free GPU memory stay in host memory instead; each batch is staged in
  pinned memory and copied without blocking.
* **Frozen parts are not recomputed.** When everything below the head is frozen (linear
  probing), the features of train and val are computed once and the head trains on them.
* **Mixed precision by capability**: bf16 autocast on GPUs with native bf16 (A100, H100),
  fp16 with a gradient scaler on older ones (T4), fp32 on CPU; channels-last memory for CNNs,
  fused AdamW. Frozen parameters have ``requires_grad=False``, so autograd computes no
  gradient for them (and stops at the first trainable tensor). ``compile=True`` adds
  ``torch.compile``, with a fallback to eager mode if its first forward or backward fails.
* **Many GPUs with torchrun**: launched by ``torchrun --nproc_per_node=N``, the same ``fit``
  runs DistributedDataParallel (NCCL on GPUs, gloo on CPU), sharding each global batch.
* **AdamW + linear warmup + cosine decay**, stepped every batch; optional label smoothing.
* **Model selection on val, never on test**: the epoch with the best validation accuracy is
  restored at the end (``fit`` is never given the test split).
* **Exact resume**: after every epoch a checkpoint (trainable weights, buffers, optimizer,
  schedule, RNG states, history) is written atomically; ``resume=True`` continues a killed run
  and, on CPU, reproduces the uninterrupted run bit for bit. An interruption loses at most the
  epoch in progress.
* ``history`` records loss, accuracy, learning rate, seconds, images/s and peak GPU memory per
  epoch, and saves as JSON.

Progress bars use ``tqdm.auto``; set ``TQDM_DISABLE=1`` to silence them. ``VPLIB_MAX_EPOCHS=N``
caps every run at ``N`` epochs (warmup capped with it; the record shows the epochs run): for a
dry run of a profile's code paths on a small machine, not for results.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm  # first imported, without its Jupyter warning, by vplib/__init__

from . import validate
from .data import Split, check_split, convert
from .measure import saved_for_backward_bytes  # noqa: F401  (re-exported: vplib.train.saved_for_backward_bytes)

AUGMENTATIONS = ("none", "crop", "crop_flip")
SCHEDULES = ("cosine", "constant", "plateau")
PLATEAU_FACTOR, PLATEAU_DROPS = 0.1, 2  # schedule="plateau": x0.1 at a plateau, twice, then stop
MAX_EPOCHS_ENV = "VPLIB_MAX_EPOCHS"
EVAL_BATCH = 256  # images per forward pass when features, predictions or validation are computed


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class History:
    """Per-epoch records of a run, the epoch chosen on validation, the settings used, and
    whether the run ended by early stopping (validation accuracy stopped improving for
    ``patience`` epochs) rather than at its epoch cap; with ``schedule="plateau"``, the
    epochs after which the learning rate was divided by 10."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    config: dict = field(default_factory=dict)
    stopped_early: bool = False
    lr_drops: list[int] = field(default_factory=list)  # epochs after which the rate dropped

    @property
    def best(self) -> dict:
        """The record of the epoch chosen on validation accuracy."""
        return next(r for r in self.epochs if r["epoch"] == self.best_epoch)

    def column(self, key: str) -> list:
        return [r[key] for r in self.epochs]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | os.PathLike) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "History":
        return cls(**json.loads(Path(path).read_text()))


# --------------------------------------------------------------------------- helpers

def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator, *,
                  draw: int | None = None, part: slice = slice(None)) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float in [0, 1], randomly shifted (and flipped).

    ``crop`` pads by ``H // 8`` pixels of zeros and crops back at a random offset per image;
    ``crop_flip`` also flips half of the images horizontally. Random numbers come from the
    CPU ``generator`` so that a run is reproducible and resumable on any device. Under
    data-parallel training ``x`` is one process's share ``part`` of a global batch of ``draw``
    images: the numbers are drawn for the whole global batch and sliced, so every image gets
    the shift it would get in a single-process run.
    """
    x = x.float().div_(255)
    if mode == "none":
        return x
    if mode not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {mode!r}")
    n = len(x) if draw is None else draw
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)[:, part].to(x.device)
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (B, W)
    if mode == "crop_flip":
        flip = (torch.rand(n, generator=generator) < 0.5)[part].to(x.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    padded = F.pad(x, (pad, pad, pad, pad))
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()  # NCHW: CPU convolutions are slow on the permuted strides


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def precision_for(device: torch.device, asked: str = "auto") -> str:
    """The arithmetic a run on ``device`` uses: ``"auto"`` is bf16 autocast on GPUs that do it
    natively (compute capability 8.0 and above: A100, H100, ...), fp16 autocast with a gradient
    scaler on older GPUs (a T4 has no bf16 tensor cores, and cuDNN has no bf16 convolutions
    there) and fp32 on the CPU. An explicit ``asked`` is honoured, except fp16 on the CPU.

    Raises:
        ValueError: ``asked`` is not one of :data:`PRECISIONS`, or is fp16 on the CPU.
    """
    if asked not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {asked!r}")
    if asked == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; on the CPU use 'fp32' or 'bf16'")
    if asked != "auto":
        return asked
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.get_device_capability(device) >= (8, 0) else "fp16"


def _autocast(device: torch.device, precision: str | None = None):
    """Autocast for ``precision`` (default: :func:`precision_for` the device)."""
    dtype = _AUTOCAST_DTYPES.get(precision or precision_for(device))
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _mutable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Trainable parameters and buffers: all that training can change."""
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n for n, _ in model.named_buffers()}
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k in trainable or k in buffers}


def _load_mutable_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    expected = set(_mutable_state(model))
    if set(state) != expected:
        raise RuntimeError("checkpoint does not match the model: missing "
                           f"{sorted(expected - set(state))[:5]}, unexpected "
                           f"{sorted(set(state) - expected)[:5]}")
    model.load_state_dict(state, strict=False)


def _atomic_replace(path: Path, write: Callable) -> None:
    """``write(file)`` into a temporary file of this process next to ``path``, flushed to disk,
    then renamed over ``path``: a kill during the write never leaves a half-written file, and
    two writers never share a temporary file."""
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _atomic_save(obj, path: Path) -> None:
    _atomic_replace(path, lambda f: torch.save(obj, f))


def _atomic_write_json(obj, path: Path, indent: int = 1) -> None:
    """Write ``obj`` as JSON to ``path`` through a temporary file, like :func:`_atomic_save`."""
    _atomic_replace(path, lambda f: f.write((json.dumps(obj, indent=indent) + "\n").encode()))


class _RunLock:
    """An exclusive lock on a checkpoint folder for the length of one ``fit``: a second
    process training into the same folder is refused instead of mixing its epochs in."""

    def __init__(self, folder: Path):
        import fcntl

        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / "fit.lock"
        self.file = open(self.path, "a")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise RuntimeError(f"{folder} is in use by another training run (locked: "
                               f"{self.path}); give each run its own checkpoint_dir") from None

    def release(self) -> None:
        import fcntl

        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()

    def __enter__(self) -> "_RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _digest(*tensors: torch.Tensor) -> str:
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(str((t.dtype, t.numel())).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_fingerprint(model: nn.Module) -> str:
    """What a checkpoint must match to be resumed into ``model``: its modules' names, types
    and settings (their ``repr``), every parameter's name, shape and trainability, and the
    values of the frozen tensors outside the backbone (InsVP's random prompter, a fixed
    prompt), which a resume would otherwise take from a differently seeded build."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(model).encode())  # every module's type and settings (extra_repr)
    h.update(repr([(n, type(m).__name__) for n, m in model.named_modules()]).encode())
    h.update(repr([(n, tuple(p.shape), p.requires_grad)
                   for n, p in model.named_parameters()]).encode())
    frozen = [t for n, t in itertools.chain(model.named_parameters(), model.named_buffers())
              if not n.startswith("backbone.") and not getattr(t, "requires_grad", False)]
    h.update(_digest(*frozen).encode())
    return h.hexdigest()


def data_fingerprint(train: Split, val: Split) -> str:
    """A hash of the training and validation images and labels and how they are seen."""
    return _digest(train.raw, train.labels, val.raw, val.labels) + f":{train.size}:{train.rgb}"


def _cosine_with_warmup(total_steps: int, warmup_steps: int,
                        schedule: str = "cosine") -> Callable[[int], float]:
    """The learning-rate factor per step: a linear warm-up over ``warmup_steps``, then a
    cosine to zero at ``total_steps`` (``"cosine"``) or the full rate (``"constant"``)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if schedule != "cosine":  # "constant", "plateau" (whose drops fit applies itself)
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def _batched(fn: Callable, inputs: torch.Tensor | Split, batch_size: int, device: torch.device,
             convert: bool, precision: str | None = None) -> torch.Tensor:
    """``fn`` over ``inputs`` in chunks on ``device``; a :class:`Split`'s native images are
    resized there, chunk by chunk (``convert``: uint8 to float in [0, 1])."""
    view = inputs.view if isinstance(inputs, Split) else None
    outs = []
    for chunk in (inputs.raw if view else inputs).split(batch_size):
        chunk = chunk.to(device, non_blocking=True)
        if view:
            chunk = view(chunk)
        if convert:
            chunk = chunk.float().div_(255)
        with _autocast(device, precision):
            outs.append(fn(chunk).float())
    return torch.cat(outs)


def _scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    return {"loss": F.cross_entropy(logits, labels).item(),
            "acc": (logits.argmax(1) == labels).float().mean().item()}


@dataclass(frozen=True)
class _Dist:
    """This process's place in a data-parallel run (``rank 0 of 1`` when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed_context(device: torch.device | None = None) -> _Dist:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    The backend is NCCL for CUDA and gloo otherwise. Single-process runs return rank 0 of 1
    and touch nothing."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist()
    if not dist.is_initialized():
        cuda = (device.type == "cuda") if device is not None else torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _compile(fn: Callable, backend: str) -> Callable:
    """``torch.compile(fn)``, falling back to ``fn`` with a warning if compiling fails (no C++
    compiler, an unsupported op, an old GPU): compile errors surface at the first call."""
    try:
        compiled = torch.compile(fn, backend=backend)
    except Exception as err:  # e.g. a backend name that does not exist
        warnings.warn(f"torch.compile is unavailable ({type(err).__name__}: {err}); "
                      "training without it.", stacklevel=3)
        return fn
    state = {"fn": compiled, "tried": False}

    def call(x):
        if state["tried"]:
            return state["fn"](x)
        state["tried"] = True
        try:
            _first_forward_and_backward(compiled, fn, x)
            return compiled(x)
        except Exception as err:
            warnings.warn(f"torch.compile failed ({type(err).__name__}: {str(err)[:200]}); "
                          "training without it.", stacklevel=2)
            state["fn"] = fn
            return fn(x)

    return call


def _first_forward_and_backward(compiled: Callable, module: Callable, x: torch.Tensor) -> None:
    """Run ``compiled`` forward and backward once on ``x`` without training: the backward
    graph is compiled at its first call, so a failure there surfaces here, where eager mode can
    still take over. Gradients go nowhere (``autograd.grad``), buffers (batch-norm statistics)
    are put back. Skipped under DDP, whose gradient hooks expect a real backward."""
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(module, nn.Module) or isinstance(module, DistributedDataParallel):
        compiled(x)
        return
    params = [p for p in module.parameters() if p.requires_grad]
    buffers = [(b, b.detach().clone()) for b in module.buffers()]
    out = compiled(x)
    if params and out.requires_grad:
        torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    with torch.no_grad():
        for buffer, saved in buffers:
            buffer.copy_(saved)


def _fits_on(device: torch.device, *tensors: torch.Tensor, share: float = 0.5) -> bool:
    """Whether ``tensors`` take at most ``share`` of the GPU's free memory (CPU: always)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) <= share * free


def module_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s parameters (or buffers); CPU for a module with neither."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor | Split, *, batch_size: int = EVAL_BATCH,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Logits of ``model`` for uint8 ``images`` ``(N, C, H, W)`` on any device, or for a
    :class:`Split` (resized batch by batch), in eval mode, returned on the CPU. Runs where the
    model is and never moves it (``fit`` leaves a model on the GPU; move it yourself with
    ``model.to(...)``).

    Raises:
        ValueError: ``device`` is given and is not where the model is.
    """
    where, asked = module_device(model), torch.device(device) if device is not None else None
    if asked is not None and not (asked.type == where.type and asked.index in (None, where.index)):
        raise ValueError(f"the model is on {where}, not {device}: move it first with "
                         f"model.to({str(device)!r}), or leave device=None to run where it is")
    was_training = model.training
    model.eval()
    try:
        return _batched(model, images, batch_size, where, convert=True).cpu()
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, split: Split, *, batch_size: int = EVAL_BATCH,
             device: torch.device | str | None = None) -> dict[str, float]:
    """Cross-entropy ``loss`` and top-1 ``acc`` of ``model`` on ``split`` (eval mode), where
    the model is (see :func:`predict`)."""
    split = check_split("split", split, fit_hint=False)
    if getattr(model, "num_classes", None) is not None:
        validate.labels_in_range("split", split.labels, model.num_classes)
    logits = predict(model, split, batch_size=batch_size, device=device)
    return {**_scores(logits, split.labels), "n": len(split)}


# --------------------------------------------------------------------------- fit

def fit(model: nn.Module, train: Split, val: Split, *, epochs: int, lr: float = 1e-3,
        weight_decay: float = 0.01, batch_size: int = 64, warmup_epochs: float = 0.0,
        label_smoothing: float = 0.0, augment: str = "crop", seed: int = 0,
        patience: int | None = None, schedule: str = "cosine",
        device: torch.device | str | None = None, cache_features: bool = True,
        checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
        on_epoch_end: Callable[[int, dict, nn.Module], None] | None = None,
        compile: bool | str = False, precision: str = "auto", verbose: bool = True) -> History:
    """Train the trainable parameters of ``model`` on ``train``, select on ``val``.

    Args:
        model: a module mapping float images in [0, 1] to logits; if it exposes
            ``frozen_features`` (True), ``features`` and ``head``, and ``cache_features`` is
            True, features are computed once and only the head is trained on them.
        train, val: uint8 splits (``vplib.data.Split``). The test split is never passed in.
        epochs: number of passes over ``train`` (with ``patience``: the cap).
        lr, weight_decay: AdamW settings; the learning rate warms up linearly for
            ``warmup_epochs`` and then, stepped every batch, follows a cosine to zero at
            ``epochs`` (``schedule="cosine"``) or stays at ``lr`` (``"constant"``: the
            schedule does not depend on the cap, so a run can stop whenever it plateaus) or
            ``"plateau"``: constant until validation accuracy has not improved for
            ``patience`` epochs, then divided by 10 (``PLATEAU_FACTOR``); after the second
            such drop (``PLATEAU_DROPS``) the next plateau ends the run. Needs ``patience``.
        patience: early stopping: end the run once validation accuracy has not improved on
            its best for ``patience`` epochs (``history.stopped_early`` then says so); the
            best epoch's weights are kept either way. ``None``: train all ``epochs``.
        augment: ``"none"``, ``"crop"`` or ``"crop_flip"`` (ignored when features are cached).
        seed: seeds shuffling, augmentation and dropout.
        checkpoint_dir: where ``last.pt`` is written after every epoch (atomically).
        resume: continue from ``checkpoint_dir/last.pt`` if it exists (settings must match).
        on_epoch_end: called as ``fn(epoch, record, model)`` after each epoch.
        compile: ``torch.compile`` the training forward (``True``: inductor, or a backend
            name); if compiling its first forward or backward fails, training goes on
            without it after a warning.
        precision: ``"auto"`` (bf16 autocast on GPUs with native bf16, fp16 with a gradient
            scaler on older GPUs, fp32 on the CPU; see :func:`precision_for`), or ``"bf16"``,
            ``"fp16"``, ``"fp32"``. Recorded in ``history.config["precision"]``.
        verbose: print one line per epoch.

    Under ``torchrun --nproc_per_node=N`` the same call trains with DistributedDataParallel:
    each process takes every N-th image of each global batch of ``batch_size`` (random shifts
    drawn for the global batch, loss scaled so the averaged gradient is the global-batch
    mean), metrics are summed over processes, and only rank 0 writes checkpoints. The result
    matches a single-process run with the same ``batch_size`` up to float rounding (for models
    without dropout or batch-norm updates, whose random numbers / statistics are per process).

    Returns:
        The :class:`History`; ``model`` holds the weights of the best validation epoch.
    """
    epochs = validate.positive_int("epochs", epochs)
    batch_size = validate.positive_int("batch_size", batch_size)
    lr = validate.number("lr", lr, low=0, low_open=True)
    weight_decay = validate.number("weight_decay", weight_decay, low=0)
    warmup_epochs = validate.number("warmup_epochs", warmup_epochs, low=0, high=epochs)
    label_smoothing = validate.number("label_smoothing", label_smoothing, low=0, high=1,
                                      high_open=True)
    patience = validate.positive_int("patience", patience, allow_none=True)
    train, val = check_split("train", train), check_split("val", val)
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir= (the folder of the run's last.pt)")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "plateau" and patience is None:
        raise ValueError("schedule='plateau' drops the rate after `patience` epochs without "
                         "a gain on validation: pass patience=, e.g. 3")
    if os.environ.get(MAX_EPOCHS_ENV):
        epochs = min(epochs, int(os.environ[MAX_EPOCHS_ENV]))
        warmup_epochs = min(warmup_epochs, epochs)
    if augment not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {AUGMENTATIONS}, got {augment!r}")
    device, ctx = _place(device, batch_size)
    precision = precision_for(device, precision)
    config = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                  warmup_epochs=warmup_epochs, label_smoothing=label_smoothing,
                  augment=augment, seed=seed, n_train=len(train), n_val=len(val),
                  precision=precision, patience=patience, schedule=schedule)
    num_classes = getattr(model, "num_classes", None)
    if num_classes is not None:
        validate.labels_in_range("train", train.labels, num_classes)
        validate.labels_in_range("val", val.labels, num_classes)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    config["model"], config["data"] = model_fingerprint(model), data_fingerprint(train, val)
    data = _stage(model, train, val, device, cache_features, precision)
    config["cached_features"] = data.cached
    train_fn = _training_forward(model, data, device, ctx, compile)
    # A last batch of one image cannot train BatchNorm ("Expected more than 1 value per
    # channel"): it joins the batch before it.
    data.merge_last = (not data.cached and len(train) % batch_size == 1 and len(train) > 1
                       and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                               for m in model.modules()))
    steps_per_epoch = math.ceil(len(train) / batch_size) - data.merge_last
    opt = _Optimisation.create(params, lr, weight_decay, epochs * steps_per_epoch,
                               int(round(warmup_epochs * steps_per_epoch)), seed, device, precision,
                               schedule)
    ckpt_path = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    if ckpt_path is not None and ckpt_path.exists() and not resume:
        raise FileExistsError(f"{ckpt_path} holds another run's checkpoint: pass resume=True "
                              "to continue it, or delete it (or use another checkpoint_dir) "
                              "to start again")
    with contextlib.ExitStack() as held:  # the checkpoint folder is this run's until it ends
        if ckpt_path is not None and ctx.main:
            held.enter_context(_RunLock(ckpt_path.parent))
        history, best_state, start = History(config=dict(config)), None, 0
        if resume and ckpt_path is not None and ckpt_path.exists():
            history, best_state, start = _restore(ckpt_path, config, model, opt, device)
            opt.scale[0] = PLATEAU_FACTOR ** len(history.lr_drops)
            if verbose and ctx.main:
                print(f"Resumed from {ckpt_path} after epoch {start} of {epochs}.")
        else:
            torch.manual_seed(seed)
        if data.cached:
            history.config["cache_seconds"] = data.cache_seconds
        history.config.update(world_size=ctx.world, compile=compile,
                              data_on_device=data.x_train.device.type == device.type)

        for epoch in range(start if not history.stopped_early else epochs, epochs):
            loss_sum, correct, seconds = _train_epoch(model, train_fn, data, opt, device, ctx,
                                                      epoch, epochs, batch_size, augment,
                                                      label_smoothing)
            val_scores = _validate(model, data, device, opt.precision)
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / len(train), "train_acc": correct / len(train),
                "val_loss": val_scores["loss"], "val_acc": val_scores["acc"],
                "lr": opt.optimizer.param_groups[0]["lr"],
                "seconds": seconds, "images_per_s": len(train) / seconds,
                "peak_mem_mb": (torch.cuda.max_memory_allocated(device) / 2**20
                                if device.type == "cuda" else None),
            }
            history.epochs.append(record)
            if history.best_epoch is None or record["val_acc"] > history.best["val_acc"]:
                history.best_epoch = record["epoch"]
                best_state = _mutable_state(model)
            if verbose and ctx.main:
                print(f"epoch {epoch + 1}/{epochs}  train loss {record['train_loss']:.4f} "
                      f"acc {record['train_acc']:.4f} | val loss {record['val_loss']:.4f} "
                      f"acc {record['val_acc']:.4f} | {seconds:.1f} s, "
                      f"{record['images_per_s']:.0f} img/s")
            if on_epoch_end is not None:
                on_epoch_end(epoch + 1, record, model)
            _plateau_step(history, opt, patience, schedule, epoch + 1, epochs)
            if ckpt_path is not None:
                _save(ckpt_path, epoch, model, opt, device, config, history, best_state, ctx)
            if history.stopped_early:
                if verbose and ctx.main:
                    print(f"early stop after epoch {epoch + 1}: no gain on validation accuracy "
                          f"for {patience} epochs (best: epoch {history.best_epoch})")
                break

        if best_state is not None:
            _load_mutable_state(model, best_state)
        model.eval()
        return history


# ---------------------------------------------------------------- fit's parts

def _plateau_step(history: History, opt: "_Optimisation", patience: int | None, schedule: str,
                  done: int, epochs: int) -> None:
    """After epoch ``done``: with ``patience``, once validation accuracy has not improved for
    ``patience`` epochs (counted from the best epoch or the last drop of the rate), either
    drop the rate (``"plateau"``, up to ``PLATEAU_DROPS`` times) or mark the run as stopped
    early (unless it is at its cap anyway)."""
    if patience is None:
        return
    since = done - max([history.best_epoch, *history.lr_drops])
    if since < patience:
        return
    if schedule == "plateau" and len(history.lr_drops) < PLATEAU_DROPS:
        history.lr_drops.append(done)
        for group in opt.optimizer.param_groups:
            group["lr"] *= PLATEAU_FACTOR
        opt.scale[0] = PLATEAU_FACTOR ** len(history.lr_drops)
    elif done < epochs:
        history.stopped_early = True


def _place(device, batch_size: int) -> tuple[torch.device, _Dist]:
    """The training device and this process's place in a torchrun job (which, on CUDA,
    trains on the GPU of its local rank, whatever CUDA device was asked for)."""
    device = torch.device(device) if device is not None else default_device()
    ctx = distributed_context(device)
    if ctx.world > 1 and device.type == "cuda":  # "cuda:0" too: one GPU per process
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if batch_size < ctx.world:
        raise ValueError(f"batch_size {batch_size} is the global batch: it must be at least the "
                         f"number of processes ({ctx.world})")
    return device, ctx


@dataclass
class _Staged:
    """The training and validation data where the epochs read them, and what runs on them."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    step_fn: Callable  # the module trained on x_train (the head on cached features)
    cached: bool  # x_* are features computed once, not uint8 images
    channels_last: bool
    cache_seconds: float | None = None
    size: int | None = None  # how the model sees the native uint8 images (see Split)
    rgb: bool = False
    merge_last: bool = False  # the last batch (one image) joins the one before it

    def view(self, x: torch.Tensor) -> torch.Tensor:
        return convert(x, size=self.size, rgb=self.rgb)


def _stage(model: nn.Module, train: Split, val: Split, device: torch.device,
           cache_features: bool, precision: str) -> _Staged:
    """Features once (a frozen model under a linear head), or the native uint8 images on the
    device (or in host memory when they would take more than half the free GPU memory),
    resized batch by batch."""
    is_cnn = getattr(getattr(model, "backbone", None), "kind", None) == "cnn"
    channels_last = device.type == "cuda" and is_cnn
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if cache_features and getattr(model, "frozen_features", False):
        t0 = time.perf_counter()
        model.eval()
        x_train = _batched(model.features, train, EVAL_BATCH, device, True, precision)
        x_val = _batched(model.features, val, EVAL_BATCH, device, True, precision)
        return _Staged(x_train, train.labels.to(device), x_val, val.labels.to(device),
                       model.head, True, channels_last,
                       round(time.perf_counter() - t0, 3))
    if (train.size, train.rgb) != (val.size, val.rgb):
        raise ValueError(f"train and val are seen differently (size, rgb): "
                         f"{(train.size, train.rgb)} vs {(val.size, val.rgb)}")
    if _fits_on(device, train.raw, val.raw):
        x_train, x_val = train.raw.to(device), val.raw.to(device)
    else:  # too big for the GPU: host memory, each batch staged in pinned memory and copied
        x_train, x_val = train.raw, val.raw
    return _Staged(x_train, train.labels.to(x_train.device), x_val, val.labels.to(device),
                   model, False, channels_last, size=train.size, rgb=train.rgb)


def _training_forward(model: nn.Module, data: _Staged, device: torch.device, ctx: _Dist,
                      compile: bool | str) -> Callable:
    """What a training step calls: the staged module, in DDP under torchrun, compiled if
    asked."""
    fn = data.step_fn
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        fn = DistributedDataParallel(fn, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        fn = _compile(fn, compile if isinstance(compile, str) else "inductor")
    return fn


@dataclass
class _Optimisation:
    """AdamW, its warmup-cosine schedule (stepped every batch) and the shuffling /
    augmentation generator: the state a checkpoint must carry besides the model."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    scaler: torch.amp.GradScaler  # active only in fp16, where small gradients would underflow
    precision: str  # "bf16", "fp16" or "fp32" (see precision_for)
    scale: list[float] = field(default_factory=lambda: [1.0])  # plateau drops, on the schedule

    @classmethod
    def create(cls, params, lr: float, weight_decay: float, total_steps: int,
               warmup_steps: int, seed: int, device: torch.device,
               precision: str, schedule: str = "cosine") -> "_Optimisation":
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                                      fused=device.type == "cuda")
        scale = [1.0]
        base = _cosine_with_warmup(total_steps, warmup_steps, schedule)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: base(s) * scale[0])
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        return cls(optimizer, scheduler, torch.Generator().manual_seed(seed), scaler, precision,
                   scale)

    def step(self, loss: torch.Tensor) -> None:
        """Backward, optimizer and schedule steps for one batch."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()


def _save(path: Path, epoch: int, model: nn.Module, opt: _Optimisation, device: torch.device,
          config: dict, history: History, best_state, ctx: _Dist) -> None:
    """Write ``last.pt`` after ``epoch`` (atomically, rank 0 only; the other ranks wait)."""
    if ctx.main:
        _atomic_save({
            "epoch": epoch,
            "model": _mutable_state(model),
            "optimizer": opt.optimizer.state_dict(),
            "scheduler": opt.scheduler.state_dict(),
            "scaler": opt.scaler.state_dict(),
            "rng": {"generator": opt.generator.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None},
            "config": config,
            "history": history.to_dict(),
            "best_state": best_state,
        }, path)
    if ctx.world > 1:
        dist.barrier()  # no process resumes from a checkpoint that is still being written


def _restore(path: Path, config: dict, model: nn.Module, opt: _Optimisation,
             device: torch.device) -> tuple[History, dict | None, int]:
    """Load ``last.pt`` into ``model`` and ``opt``; returns the history, the best state so far
    and the first epoch still to run. Refuses a checkpoint written with other settings."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        saved = ckpt["config"]
    except Exception as err:  # truncated, empty or not a checkpoint of fit
        raise RuntimeError(f"{path} cannot be read as a fit checkpoint ({type(err).__name__}: "
                           f"{err}); delete it to start the run again") from err
    for key, what in (("model", "another model (method, options or seed of a frozen part)"),
                      ("data", "other training or validation data")):
        if saved.get(key) != config.get(key):
            raise ValueError(f"{path} was written for {what}, not this run: delete it, or "
                             "give this run its own checkpoint_dir")
    if saved != config:
        diff = {k: (saved.get(k), config.get(k)) for k in set(saved) | set(config)
                if saved.get(k) != config.get(k)}
        raise ValueError(f"{path} was written with other settings {diff} "
                         "(saved, now): delete it, or give this run its own checkpoint_dir.")
    _load_mutable_state(model, ckpt["model"])
    opt.optimizer.load_state_dict(ckpt["optimizer"])
    opt.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt.get("scaler"):
        opt.scaler.load_state_dict(ckpt["scaler"])
    opt.generator.set_state(ckpt["rng"]["generator"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    if device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
    return History(**ckpt["history"]), ckpt["best_state"], ckpt["epoch"] + 1


def _train_epoch(model: nn.Module, train_fn: Callable, data: _Staged, opt: _Optimisation,
                 device: torch.device, ctx: _Dist, epoch: int, epochs: int, batch_size: int,
                 augment: str, label_smoothing: float) -> tuple[float, float, float]:
    """One pass over the training data; returns the summed loss and the number of correct
    predictions (over every process) and the epoch's seconds."""
    if not data.cached and hasattr(model, "on_epoch_start"):  # e.g. an iterative label mapping
        model.on_epoch_start(epoch + 1, Split(data.x_train, data.y_train, data.size, data.rgb),
                             data.y_train)
    # On cached features only the head runs, which has no dropout or norm layers.
    model.train(not data.cached)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    n = len(data.x_train)
    order = torch.randperm(n, generator=opt.generator).to(data.x_train.device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    steps = math.ceil(n / batch_size) - data.merge_last
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs}",
               leave=False, **({} if ctx.main else {"disable": True}))
    for step in bar:
        end = n if step == steps - 1 else (step + 1) * batch_size
        batch = order[step * batch_size:end]
        idx = batch[ctx.rank::ctx.world] if ctx.world > 1 else batch
        x, y = data.x_train[idx], data.y_train[idx]
        if x.device.type != device.type:
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if not data.cached:
            x = augment_batch(data.view(x), augment, opt.generator, draw=len(batch),
                              part=slice(ctx.rank, None, ctx.world))
            if data.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, opt.precision):
            logits = train_fn(x)
        if ctx.world == 1:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
            batch_loss = loss.detach() * len(y)
        else:  # DDP averages over processes: scale so the result is the global-batch mean
            total = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing,
                                    reduction="sum")
            loss, batch_loss = total * (ctx.world / len(batch)), total.detach()
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"the training loss is {loss.item()} at epoch {epoch + 1}, step {step + 1} "
                f"(learning rate {opt.optimizer.param_groups[0]['lr']:.3g}); no step was "
                "taken. Lower the learning rate, or check the inputs and the prompt for NaN")
        opt.step(loss)
        loss_sum += batch_loss
        correct += (logits.argmax(1) == y).sum()
    if ctx.world > 1:
        dist.all_reduce(loss_sum)
        dist.all_reduce(correct)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return loss_sum.item(), correct.item(), time.perf_counter() - t0


def _validate(model: nn.Module, data: _Staged, device: torch.device,
              precision: str) -> dict[str, float]:
    """Loss and accuracy on the validation data, in eval mode."""
    model.eval()
    with torch.no_grad():
        eval_fn = model.head if data.cached else model
        x_val = data.x_val if data.cached else Split(data.x_val, data.y_val, data.size, data.rgb)
        logits = _batched(eval_fn, x_val, EVAL_BATCH, device, convert=not data.cached,
                          precision=precision)
    return _scores(logits, data.y_val)

