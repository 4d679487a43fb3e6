"""Activation prompts (AP): a learnable additive perturbation on one intermediate activation.

Zhang, Li, Yao, Chen, Zhang, Chen, Wang, Liu. "Visual Prompting Reimagined: The Power of
Activation Prompts", 2026.

Visual prompting (VP) adds a universal perturbation to the *input*; AP adds it to the output of
one chosen layer of a frozen network instead: ``a_l' = a_l + delta``. Only ``delta`` (and the
task head) trains. Facts from the paper that this module lets a notebook show:

* **Layer preference**: CNNs prefer deep layers, ViTs shallow ones (sweep ``layer_names``).
* **Efficiency**: the backbone is frozen and the input needs no gradient, so autograd records
  nothing below the prompted layer; backpropagation stops there (VP must go through the whole
  network down to the pixels).
* **Relation to norm tuning**: a perturbation shared over positions (``shared_over_positions``)
  added right after a BatchNorm is *exactly* a change of that BN's shift ``beta``:
  ``gamma * x_hat + beta + v = gamma * x_hat + (beta + v)``, in eval and in train mode. The
  identity survives anything *linear in the BN output and independent of beta* between the BN
  and the prompted point, e.g. a residual add (``x + BN(h) + v``), but not a non-linearity:
  in torchvision MobileNetV2, ``features.1`` / ``features.2`` (BN last, no residual) and
  ``features.3`` (BN then residual add) are exact; ``features.0`` ends in ReLU6 and is not.
  For ViTs the analogue holds right after a LayerNorm; a block output (a residual sum that the
  next LayerNorm re-normalises) is *not* equivalent to tuning a LayerNorm's beta.

Shapes of ``delta`` (zero-initialised, so the prompted model starts as the frozen one):

* CNN layer output ``(B, C, H, W)``: ``(C, H, W)``, or ``(C, 1, 1)`` when shared.
* ViT block output ``(B, N, D)``: ``(N, D)``, or ``(1, D)`` when shared; ``N`` counts the class
  (and any register / prefix) tokens.

Usage: the prompt acts only while it is applied. A :class:`~vplib.model.PromptedClassifier`
that owns it applies it inside its own forward (``with prompt:`` around the backbone call), so
the backbone carries no hook at rest and two models built on one backbone object never see
each other's prompts. Standalone, ``with ActivationPrompt(...) as ap:`` applies it for a block
(nesting is fine); ``attach()`` / ``detach()`` do the same by hand. The backbone is *not* a
submodule, so ``ap.parameters()`` yields ``delta`` only (what the optimizer should get).

Where this differs from the paper's code, and why: we prompt by layer *name* through a forward
hook on any ``Backbone`` (torchvision or timm, CNN or ViT) instead of editing each model's
forward; per-position deltas are tied to one image size (the one probed at construction).
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from ..backbones import is_vit

LEVELS = ("all", "stages", "blocks")


def _model_and_kind(backbone) -> tuple[nn.Module, str]:
    """Accept a :class:`~vplib.backbones.Backbone` (``.model``, ``.kind``) or a bare model."""
    model = getattr(backbone, "model", backbone)
    kind = getattr(backbone, "kind", None)
    if kind is None:

        kind = "vit" if is_vit(model) else "cnn"
    return model, kind


def _cnn_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level stages of common CNNs, in forward order."""
    # torchvision MobileNet/EfficientNet/VGG: `features`; timm EfficientNet/MobileNet: `blocks`;
    # timm ConvNeXt/RegNet-style: `stages`; ResNets: layer1..layer4.
    for attr in ("features", "blocks", "stages"):
        container = getattr(model, attr, None)
        if isinstance(container, nn.Sequential):
            return [(f"{attr}.{n}", m) for n, m in container.named_children()]
    stages = [(n, m) for n, m in model.named_children() if re.fullmatch(r"layer\d+", n)]
    if stages:
        return stages
    raise ValueError(f"Don't know the stages of {type(model).__name__}: expected a `features`, "
                     "`blocks` or `stages` nn.Sequential, or ResNet-style layer1..layerN.")


def _blocks_of(name: str, stage: nn.Module) -> list[str]:
    """Names of a stage's blocks, if the stage is a plain container of blocks."""
    inner = getattr(stage, "blocks", None)
    if isinstance(inner, nn.Sequential):  # timm stage modules keep their blocks in `.blocks`
        return [f"{name}.blocks.{n}" for n, _ in inner.named_children()]
    # Exactly nn.Sequential: subclasses such as torchvision's Conv2dNormActivation are single
    # conv-norm-act units, not containers of blocks.
    if type(stage) is nn.Sequential:
        return [f"{name}.{n}" for n, _ in stage.named_children()]
    return []


def layer_names(backbone, level: str = "all") -> list[str]:
    """Prompt-able layer names of a backbone, in forward order, relative to ``backbone.model``.

    * ViT (timm ``VisionTransformer``): ``blocks.0`` .. ``blocks.{depth-1}`` (every level).
    * CNN: its stages, e.g. torchvision MobileNetV2 ``features.0`` .. ``features.18``, timm
      EfficientNet ``blocks.0`` .. ``blocks.6``, ResNet ``layer1`` .. ``layer4``; and the blocks
      inside stages that are plain containers, e.g. timm EfficientNet ``blocks.1.0``,
      ``blocks.1.1``. Stems and heads outside the stage container are not included.

    Args:
        level: ``"all"`` (each stage followed by its blocks), ``"stages"`` only, or
            ``"blocks"``: the finest units (a stage's blocks, or the stage itself if it has
            none), which is the natural x-axis of a layer-preference curve.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    model, kind = _model_and_kind(backbone)
    if kind == "vit":
        return [f"blocks.{i}" for i in range(len(model.blocks))]
    names = []
    for name, stage in _cnn_stages(model):
        blocks = _blocks_of(name, stage)
        if level in ("all", "stages") or not blocks:
            names.append(name)
        if level in ("all", "blocks"):
            names.extend(blocks)
    return names


class _StopForward(Exception):
    """Raised by the probing hook: nothing above the probed layer needs to run."""


@torch.no_grad()
def _probe_output_shape(model: nn.Module, module: nn.Module, image_size: int) -> torch.Size:
    shapes = []

    def record(_module, _inputs, output):
        shapes.append(output.shape if torch.is_tensor(output) else None)
        raise _StopForward

    device = next(model.parameters()).device
    handle = module.register_forward_hook(record)
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    except _StopForward:
        pass
    finally:
        handle.remove()
        model.train(was_training)
    if not shapes or shapes[0] is None:
        raise ValueError(f"{type(module).__name__} did not return a single tensor; it cannot "
                         "be prompted with an additive activation prompt.")
    return shapes[0]


class ActivationPrompt(nn.Module):
    """A zero-initialised learnable ``delta`` added to one layer's output by a forward hook.

    Args:
        backbone: a :class:`~vplib.backbones.Backbone` (frozen), or a bare model.
        layer: one of ``layer_names(backbone)``, relative to ``backbone.model``.
        image_size: the input size ``S`` used to probe the layer's output shape (per-position
            deltas only fit this size); ``None``: ``backbone.input_size``.
        shared_over_positions: one vector for every spatial position / token (``(C, 1, 1)`` or
            ``(1, D)``), which equals tuning a preceding norm layer's shift; otherwise one
            value per position (``(C, H, W)`` or ``(N, D)``).

    Attributes: ``delta`` (the only parameter), ``layer``, ``kind``, ``activation_shape``
    (the probed output shape without the batch dimension), ``attached``. Not applied on
    construction: see the module docstring.
    """

    def __init__(self, backbone, layer: str, image_size: int | None = None, *,
                 shared_over_positions: bool = False):
        super().__init__()
        model, kind = _model_and_kind(backbone)
        valid = layer_names(backbone)
        if layer not in valid:
            name = getattr(backbone, "name", type(model).__name__)
            raise ValueError(f"Unknown layer {layer!r} for {name} ({kind}); valid layers: "
                             f"{valid}")
        if image_size is None:
            image_size = getattr(backbone, "input_size", None)
            if image_size is None:
                raise ValueError("image_size is required for a bare model (no .input_size).")
        # Keep the model out of the module tree: `ap.parameters()` must be `delta` alone.
        object.__setattr__(self, "_model", model)
        self.layer = layer
        self.kind = kind
        self.image_size = image_size
        self.shared_over_positions = shared_over_positions
        self.activation_shape = tuple(_probe_output_shape(model, self.target, image_size)[1:])
        self.delta = nn.Parameter(torch.zeros(self._delta_shape(),
                                              device=next(model.parameters()).device))
        self._handle = None
        self._depth = 0  # nesting of `with prompt:` blocks

    @property
    def target(self) -> nn.Module:
        """The prompted submodule of the backbone's model."""
        return self._model.get_submodule(self.layer)

    @property
    def attached(self) -> bool:
        return self._handle is not None

    def _delta_shape(self) -> tuple[int, ...]:
        shape = self.activation_shape
        if len(shape) == 3:  # CNN feature map (C, H, W): share over H, W
            return (shape[0], 1, 1) if self.shared_over_positions else shape
        if len(shape) == 2:  # ViT tokens (N, D): share over N
            return (1, shape[1]) if self.shared_over_positions else shape
        raise ValueError(f"Layer {self.layer!r} outputs shape (B, {shape}); expected "
                         "(B, C, H, W) or (B, N, D).")

    def _add_delta(self, _module: nn.Module, _inputs, output: torch.Tensor) -> torch.Tensor:
        # A shared delta has 1s where it broadcasts; every other size must match exactly.
        fits = output.ndim == self.delta.ndim + 1 and all(
            d == 1 or d == o for d, o in zip(self.delta.shape, output.shape[1:]))
        if not fits:
            raise ValueError(
                f"ActivationPrompt on {self.layer!r} has delta {tuple(self.delta.shape)} built "
                f"for {self.image_size} px inputs, but the layer output is "
                f"{tuple(output.shape)}: build it with the image size you feed, or use "
                "shared_over_positions=True.")
        return output + self.delta.to(output.dtype)

    def attach(self) -> "ActivationPrompt":
        """Register the forward hook (a no-op if already attached)."""
        if self._handle is None:
            self._handle = self.target.register_forward_hook(self._add_delta)
        return self

    def detach(self) -> "ActivationPrompt":
        """Remove the forward hook: the backbone computes its original function again."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return self

    def __enter__(self) -> "ActivationPrompt":
        self._depth += 1
        return self.attach()

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.detach()

    def forward(self, *args, **kwargs):
        raise TypeError("ActivationPrompt works through a hook: call the model that owns it "
                        "(or the backbone inside `with prompt:`), not the prompt; it adds "
                        f"`delta` to the output of {self.layer!r} while applied.")

    def extra_repr(self) -> str:
        return (f"layer={self.layer!r}, kind={self.kind}, delta={tuple(self.delta.shape)}, "
                f"shared_over_positions={self.shared_over_positions}, attached={self.attached}")
