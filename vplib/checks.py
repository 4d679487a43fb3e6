"""Checks a chapter asserts before it states a result: above chance, backbone untouched.

Each returns a value or raises ``AssertionError`` with what differs, so an ``assert`` in a
chapter can fail and says why when it does.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .prompts.activation import ActivationPrompt


def chance_margin(n: int, num_classes: int, *, z: float = 3.0) -> float:
    """The accuracy a chance-level classifier exceeds on ``n`` test images with probability
    about ``Phi(-z)``: ``1 / num_classes`` plus ``z`` binomial standard errors."""
    if n < 1 or num_classes < 2:
        raise ValueError(f"need n >= 1 test images and num_classes >= 2, got {n}, {num_classes}")
    chance = 1 / num_classes
    return chance + z * (chance * (1 - chance) / n) ** 0.5


def beats_chance(acc: float, n: int, num_classes: int, *, z: float = 3.0) -> bool:
    """Whether accuracy ``acc`` on ``n`` test images exceeds chance (``1 / num_classes``) by
    more than ``z`` binomial standard errors of a chance-level classifier on ``n`` images."""
    return acc > chance_margin(n, num_classes, z=z)


def beats(acc: float, reference: float, n: int, *, z: float = 3.0) -> bool:
    """Whether accuracy ``acc`` exceeds a ``reference`` accuracy measured on the same ``n``
    test images (a baseline's) by more than ``z`` binomial standard errors of the reference."""
    if n < 1 or not 0 <= reference <= 1:
        raise ValueError(f"need n >= 1 test images and a reference in [0, 1], got {n}, {reference}")
    return acc > reference + z * (reference * (1 - reference) / n) ** 0.5


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of every tensor in ``module.state_dict()`` (parameters and buffers), to
    compare with :func:`changed` after training."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def changed(module: nn.Module, reference: dict[str, torch.Tensor]) -> list[str]:
    """Names of the state tensors of ``module`` that differ (bit for bit) from ``reference``
    (a :func:`snapshot`), including tensors added or removed since."""
    state = module.state_dict()
    names = sorted(set(state) | set(reference))
    return [k for k in names if k not in state or k not in reference
            or not torch.equal(state[k].detach().cpu(), reference[k])]


def assert_unchanged(module: nn.Module, reference: dict[str, torch.Tensor],
                     what: str = "the backbone") -> None:
    """Raise ``AssertionError`` naming the tensors of ``module`` that differ from
    ``reference``; return silently when every parameter and buffer is bit-for-bit equal."""
    diff = changed(module, reference)
    if diff:
        shown = ", ".join(diff[:5]) + (f" and {len(diff) - 5} more" if len(diff) > 5 else "")
        raise AssertionError(f"{what} changed: {len(diff)} of {len(reference)} tensors differ "
                             f"({shown})")



@torch.no_grad()
def prompt_vs_shift(backbone, images: torch.Tensor, v: torch.Tensor, *, at: str, shift: str,
                    hook: bool = False) -> tuple[float, float]:
    """How far adding a vector ``v`` inside ``backbone`` is from shifting one of its parameters
    by ``v`` (chapter 06: a shared activation prompt right after a norm layer *is* a shift of
    that layer's ``beta``).

    ``v`` (one value per channel, shared over the positions) is added to the output of the
    submodule ``at`` of ``backbone.model``: by a shared
    :class:`~vplib.prompts.activation.ActivationPrompt` (``at`` one of its layer names), or,
    with ``hook=True``, by a plain forward hook (any submodule, e.g. a LayerNorm inside a
    block). The reference is a deep copy of ``backbone`` whose parameter ``shift`` (a dotted
    name in ``backbone.model``) is increased by ``v``. Returns ``(max |difference of the
    logits|, max |logit| of the prompted network)`` on ``images``; ``backbone`` is left as it
    was (no hook, no change).
    """
    shifted = copy.deepcopy(backbone)  # before any hook, so the copy carries none
    shifted.model.get_parameter(shift).add_(v)
    if hook:
        handle = backbone.model.get_submodule(at).register_forward_hook(
            lambda _module, _inputs, output: output + (v.view(-1, 1, 1) if output.ndim == 4 else v))
        try:
            prompted = backbone(images)
        finally:
            handle.remove()
    else:
        with ActivationPrompt(backbone, at, images.shape[-1], shared_over_positions=True) as ap:
            ap.delta.copy_(v.view(ap.delta.shape))
            prompted = backbone(images)
    return float((prompted - shifted(images)).abs().max()), float(prompted.abs().max())
