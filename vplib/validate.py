"""Argument checks where values enter vplib (``load_dataset``, ``fit``, ``evaluate``, models).

Each raises at once, before anything is built or trained, with what was given and what to do,
instead of letting a bad value become a silent default (``image_size=0`` read as "native"), a
strange shape (``max_train=-5`` giving 5 images) or an error deep inside PyTorch.
"""

from __future__ import annotations

import math
import numbers

import torch


def positive_int(name: str, value, *, allow_none: bool = False):
    """``value`` if it is an integer >= 1 (or ``None`` when ``allow_none``)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                        f"got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                         f"got {value}")
    return int(value)


def number(name: str, value, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a float if it is a finite real number inside the stated bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    ok = math.isfinite(value)
    if low is not None:
        ok &= value > low if low_open else value >= low
    if high is not None:
        ok &= value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        bounds = " and ".join(b for b in (lo, hi) if b) or "finite"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return value


def fraction(name: str, value) -> float:
    """A share strictly inside (0, 1), e.g. the part of a split carved out for validation."""
    return number(name, value, low=0, high=1, low_open=True, high_open=True)


def labels_in_range(name: str, labels: torch.Tensor, num_classes: int) -> None:
    """Every label in ``0 .. num_classes - 1``."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"{name} has labels from {low} to {high}, but the model has "
                         f"{num_classes} classes (labels 0 to {num_classes - 1}); build the "
                         "model with the dataset's num_classes")


def images(x: torch.Tensor, *, channels: int = 3, size: int | None = None,
           check_finite: bool = True) -> None:
    """``x`` is a float batch ``(B, channels, H, W)`` in [0, 1] (``size``: ``H == W == size``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got a {type(x).__name__}")
    if not x.is_floating_point():
        hint = (" (uint8 images: pass x.float() / 255, or vplib.data.Split.view)"
                if x.dtype == torch.uint8 else "")
        raise TypeError(f"images must be floats in [0, 1], got {x.dtype}{hint}")
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"images must be (B, {channels}, H, W), got {tuple(x.shape)}"
                         + ("; grey images: load the dataset with rgb=True" if x.ndim == 4
                            and x.shape[1] == 1 else ""))
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        raise ValueError(f"this model was built for {size} x {size} images, got "
                         f"{x.shape[-2]} x {x.shape[-1]}; resize them (load_dataset(size="
                         f"{size})) or build the model with image_size={x.shape[-1]}")
    if check_finite and not torch.isfinite(x).all():
        raise ValueError("images contain NaN or infinite values")
