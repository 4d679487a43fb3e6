"""``PromptedClassifier`` and ``build``: a frozen backbone, optional prompts, and a head.

The forward pass of every method in the course is one pipeline with optional pieces:

    x in [0, 1] -> normalize -> [input prompt] -> backbone features -> head
                                                  ^ [token prompt]  (ViT: tokens in the sequence)
                                                  ^ [activation prompt] (added to one layer)

The head is either a new linear layer on the pooled features, or the frozen source classifier
read through a label mapping (``vplib.prompts.label_map``). ``build(method, backbone,
num_classes, **options)`` assembles any method of :data:`METHODS`.
"""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from . import backbones as _backbones
from . import validate
from .backbones import Backbone
from .data import Split
from .prompts import input as vp
from .prompts import insvp
from .prompts.activation import ActivationPrompt, layer_names
from .prompts.label_map import LabelMapping
from .prompts.msvp import MultiScalePrompt
from .prompts.tokens import PromptTokens, prompted_vit_features
from .train import EVAL_BATCH, _batched, module_device

HEADS = ("linear", "flm", "ilm")


def count_parameters(module: nn.Module | None, trainable_only: bool = False) -> int:
    if module is None:
        return 0
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class PromptedClassifier(nn.Module):
    """Backbone + optional prompts + head.

    Args:
        backbone: a :class:`~vplib.backbones.Backbone` (frozen on arrival).
        num_classes: number of target classes.
        train_backbone: unfreeze the backbone (full fine-tuning).
        input_prompt: ``(B, 3, H, W) -> (B, 3, H, W)`` on the normalised image.
        token_prompt: ViT only; a module with ``setup(z)`` and ``tokens(i, batch)``.
        activation_prompt: an :class:`~vplib.prompts.activation.ActivationPrompt` on one
            backbone layer, applied only inside this model's forward.
        label_mapping: read the logits from the frozen source head through this mapping
            instead of training a linear head.

    Shapes: ``forward`` takes float images ``(B, 3, H, W)`` in ``[0, 1]`` and returns logits
    ``(B, num_classes)``.
    """

    def __init__(self, backbone: Backbone, num_classes: int, *, train_backbone: bool = False,
                 input_prompt: nn.Module | None = None, token_prompt: nn.Module | None = None,
                 activation_prompt: nn.Module | None = None,
                 label_mapping: nn.Module | None = None):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if token_prompt is not None and backbone.kind != "vit":
            raise ValueError(f"token prompts need a ViT backbone; {backbone.name} is a "
                             f"{backbone.kind.upper()}. Use an input or activation prompt.")
        self.backbone = backbone
        self.input_prompt = input_prompt
        self.token_prompt = token_prompt
        self.activation_prompt = activation_prompt
        self.label_mapping = label_mapping
        self.head = nn.Linear(backbone.num_features, num_classes) if label_mapping is None else None
        self.num_classes = num_classes
        self.train_backbone = train_backbone
        if train_backbone:
            backbone.unfreeze()
        else:
            backbone.freeze()

    @property
    def prompt_modules(self) -> list[nn.Module]:
        return [m for m in (self.input_prompt, self.token_prompt, self.activation_prompt)
                if m is not None]

    @property
    def frozen_features(self) -> bool:
        """True when everything below a linear head is fixed, so features can be cached."""
        backbone_trains = any(p.requires_grad for p in self.backbone.parameters())
        return not backbone_trains and not self.prompt_modules and self.head is not None

    image_size: int | None = None  # set by build: the side the prompts were built for

    def check_input(self, x: torch.Tensor) -> None:
        """Refuse what the model cannot read: non-float images (uint8 read as 0..255), the
        wrong channels, a size other than the one its prompts (or its ViT) were built for,
        and, outside training (where ``fit`` checks the loss), NaN or infinite pixels."""
        fixed = self.backbone.kind == "vit" or bool(self.prompt_modules)
        validate.images(x, size=self.image_size if fixed else None,
                        check_finite=not self.training)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``(B, num_features)`` of images in [0, 1], prompts applied."""
        if not torch.compiler.is_compiling():
            self.check_input(x)
        if x.dtype == torch.float64:  # the weights are float32
            x = x.float()
        z = self.backbone.normalize(x)
        if self.input_prompt is not None:
            z = self.input_prompt(z)
        if self.token_prompt is not None:

            return prompted_vit_features(self.backbone.model, z, self.token_prompt)
        if self.activation_prompt is not None:
            with self.activation_prompt:  # hooked for this forward only
                return self.backbone.features(z)
        return self.backbone.features(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        if self.label_mapping is not None:
            return self.label_mapping(self.backbone.source_head(feats))
        return self.head(feats)

    @torch.no_grad()
    def on_epoch_start(self, epoch: int, images: torch.Tensor | Split, labels: torch.Tensor,
                       batch_size: int = EVAL_BATCH) -> None:
        """Called by ``fit`` before each epoch: (re)computes a label mapping when it is due
        (FLM once, ILM every epoch) from the source predictions on the training images (uint8,
        or a :class:`~vplib.data.Split`), computed where the model is."""
        if self.label_mapping is None or not self.label_mapping.needs_update():
            return
        was_training = self.training
        self.eval()
        source_logits = _batched(lambda x: self.backbone.source_head(self.features(x)), images,
                                 batch_size, module_device(self),
                                 convert=isinstance(images, Split) or images.dtype == torch.uint8)
        self.label_mapping.update(source_logits.argmax(1), labels)
        self.train(was_training)

    def param_counts(self) -> dict[str, int]:
        """Parameter counts: ``backbone``, ``prompt``, ``head``, ``trainable`` and ``total``.

        ``prompt`` counts every prompt parameter, trained or not (the official InsVP leaves
        one prompter at its random initialisation); ``trainable`` counts what the optimiser
        updates.
        """
        return {
            "backbone": count_parameters(self.backbone),
            "prompt": sum(count_parameters(m) for m in self.prompt_modules),
            "head": count_parameters(self.head),
            "trainable": count_parameters(self, trainable_only=True),
            "total": count_parameters(self),
        }


# --------------------------------------------------------------------------- build

def _bias_tuning(backbone: Backbone) -> None:
    """Make biases and normalisation-layer affine parameters trainable (BitFit-style), except
    the source classifier's, which the model does not use; the backbone stays in eval mode, so
    BatchNorm keeps its stored statistics."""
    norms = (nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
    unused = {id(p) for p in backbone.source_classifier.parameters()}
    for module in backbone.modules():
        for name, p in module.named_parameters(recurse=False):
            if (name == "bias" or isinstance(module, norms)) and id(p) not in unused:
                p.requires_grad_(True)


def _vit_shape(backbone: Backbone) -> tuple[int, int, int, int]:
    vit = backbone.model
    patch = vit.patch_embed.patch_size[0]
    return vit.embed_dim, len(vit.blocks), patch, vit.patch_embed.img_size[0]


def build(method: str, backbone: Backbone | str, num_classes: int, *,
          image_size: int | None = None, head: str = "linear", **options) -> PromptedClassifier:
    """Build ``method`` on ``backbone`` for ``num_classes`` target classes.

    Args:
        method: one of :data:`METHODS` (see :data:`REGISTRY` for each one's options).
        backbone: a :class:`Backbone` or a name for :func:`vplib.load`.
        image_size: side of the input images (default: the backbone's input size); input and
            activation prompts are built for it.
        head: ``"linear"`` (a new trained head), or for the ``vp-*`` methods ``"flm"`` /
            ``"ilm"``: the frozen source head read through a label mapping.
        options: the method's options, checked against ``REGISTRY[method].options`` before
            anything is built. ``vp-*``: ``prompt_size`` (the frame width for ``vp-pad``,
            default 30; the patch side for ``vp-fixed`` / ``vp-random``, default 8; the name
            the official code uses) and ``init``. ``vpt-*``: ``length`` (10), ``dropout``.
            ``msvp``: ``fusion``, ``scales``, ``init_std``, ``train_backbone`` (train the
            backbone jointly with the prompt, as in the MSVP paper; default ``False``: frozen).
            ``insvp``: ``variant`` ("paper" | "official"), component switches and betas (see
            :mod:`vplib.prompts.insvp`). ``ap``: ``layer``, ``shared_over_positions``.

    Raises:
        ValueError: unknown method, head or option; a token method on a CNN.
        TypeError: ``backbone`` is neither a name nor a :class:`Backbone` (e.g. a bare timm
            model).
    """
    spec = method_spec(method)
    if head not in HEADS:
        raise ValueError(f"Unknown head {head!r}. Available: {', '.join(HEADS)}.")
    if head not in spec.heads:
        raise ValueError(f"head={head!r} (label mapping) is offered for the vp-* methods, "
                         f"not {method!r}.")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        hints = {k: difflib.get_close_matches(k, spec.options, n=1) for k in unknown}
        said = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "")
                         for k, h in hints.items())
        raise ValueError(f"{method} does not take option(s) {said}; its options: "
                         f"{', '.join(spec.options) or 'none'}")
    _check_option_types(method, options)
    image_size = validate.positive_int("image_size", image_size, allow_none=True)
    backbone = _as_backbone(backbone)
    if spec.vit_only and backbone.kind != "vit":
        raise ValueError(f"{method} inserts tokens into a Vision Transformer; {backbone.name} is "
                         f"a {backbone.kind.upper()}. Use vp-*, msvp or ap on CNNs.")
    shared = getattr(backbone, "_vplib_models", 0) > 0
    before = [p.requires_grad for p in backbone.parameters()]
    model = _assemble(spec, method, backbone, image_size, options, head, num_classes)
    if shared and [p.requires_grad for p in backbone.parameters()] != before:
        # The backbone already serves another model that expects it frozen (or trained) as
        # it was: give this model its own copy rather than re-freeze the other one under it.
        for p, grad in zip(backbone.parameters(), before):
            p.requires_grad_(grad)
        backbone = copy.deepcopy(backbone)
        backbone._vplib_models = 0
        model = _assemble(spec, method, backbone, image_size, options, head, num_classes)
    backbone._vplib_models = getattr(backbone, "_vplib_models", 0) + 1
    return model


def _assemble(spec, method, backbone, image_size, options, head, num_classes):
    kwargs = spec.builder(backbone, image_size or backbone.input_size, dict(options), head,
                          num_classes)
    model = PromptedClassifier(backbone, num_classes, **kwargs)
    model.image_size = image_size or backbone.input_size
    if method == "bias":
        _bias_tuning(model.backbone)
    return model


# The types of the options most methods share, checked before anything is built.
OPTION_TYPES = {"prompt_size": "positive int", "length": "positive int", "dropout": "number",
                "init_std": "number", "init": str, "layer": str, "fusion": str, "variant": str,
                "train_backbone": bool, "shared_over_positions": bool}


def _check_option_types(method: str, options: dict) -> None:
    for name, value in options.items():
        kind = OPTION_TYPES.get(name)
        if kind == "positive int":
            validate.positive_int(f"{method} option {name}", value)
        elif kind == "number":
            validate.number(f"{method} option {name}", value)
        elif kind is not None and not isinstance(value, kind):
            raise TypeError(f"{method} option {name} must be a {kind.__name__}, got {value!r} "
                            f"({type(value).__name__})")


def _as_backbone(backbone) -> Backbone:

    if isinstance(backbone, str):
        backbone = _backbones.load(backbone)
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"backbone must be a name or a vplib Backbone, got a {type(backbone).__name__}. "
            "Pass a name (e.g. 'mobilenet_v2') or vplib.load(name); wrap any other timm or "
            "torchvision model in vplib.backbones.Backbone (see its docstring), which gives it "
            "its normalisation, frozen weights and the features / source-head split.")
    return backbone


# ----------------------------------------------------------------- the methods' builders
# Each takes (backbone, image_size, options, head, num_classes) and returns the keyword
# arguments of PromptedClassifier; options were checked against the spec's names already.

def _backbone_only(backbone, size, opts, head, num_classes) -> dict:
    return {}


def _full(backbone, size, opts, head, num_classes) -> dict:
    if not opts.get("train_backbone", True):
        raise ValueError("full trains the backbone; train_backbone=False contradicts it "
                         "(use linear for a frozen backbone).")
    return {"train_backbone": True}


def _vp(kind: str) -> Callable:
    def builder(backbone, size, opts, head, num_classes) -> dict:

        cls = {"pad": vp.PadPrompter, "fixed": vp.FixedPatchPrompter,
               "random": vp.RandomPatchPrompter}[kind]
        kwargs = {"input_prompt": cls(size, opts.get("prompt_size", 30 if kind == "pad" else 8),
                                      init=opts.get("init", "zeros"))}
        if head != "linear":

            if backbone.class_names is None:
                raise ValueError(f"label mapping needs a backbone with a source classifier; "
                                 f"{backbone.name} has none")
            kwargs["label_mapping"] = LabelMapping(len(backbone.class_names), num_classes, head)
        return kwargs
    return builder


def _vpt(deep: bool) -> Callable:
    def builder(backbone, size, opts, head, num_classes) -> dict:

        dim, depth, patch, _ = _vit_shape(backbone)
        return {"token_prompt": PromptTokens(dim, depth, opts.get("length", 10), deep=deep,
                                             patch_size=patch, dropout=opts.get("dropout", 0.0))}
    return builder


def _msvp(backbone, size, opts, head, num_classes) -> dict:

    # The paper's setting trains the backbone jointly with the prompt (from scratch).
    return {"input_prompt": MultiScalePrompt(3, **_take(opts, ("scales", "fusion", "init_std"))),
            "train_backbone": bool(opts.get("train_backbone", False))}


def _ap(backbone, size, opts, head, num_classes) -> dict:

    if "layer" not in opts:
        raise ValueError(f"ap needs layer=...; {backbone.name} offers: "
                         f"{', '.join(layer_names(backbone))}")
    return {"activation_prompt": ActivationPrompt(
        backbone, opts["layer"], size, shared_over_positions=opts.get("shared_over_positions", False))}


def _take(opts: dict, names: Sequence[str]) -> dict:
    return {k: opts.pop(k) for k in names if k in opts}


INSVP_IMAGE_OPTIONS = ("patch_prompter", "global_prompter", "beta_image", "hidden", "dropout",
                       "global_dilation")
INSVP_FEATURE_OPTIONS = ("length", "layers", "common_tokens", "specific_tokens", "beta_feature",
                         "train_specific")


def _insvp(backbone: Backbone, size: int, opts: dict, head=None, num_classes=None) -> dict:
    """``variant="paper"`` (default): the paper's convex mixing with beta_I = 0.7, beta_F = 0.5,
    feature prompt length L = 9 (Sec. 4.3), every part trained. ``variant="official"``: the
    released code (``p_patch + 2 p_global``, ``common + specific``, specific prompter left
    untrained unless ``train_specific=True``).
    Any component switch or beta given as an option overrides either variant."""

    dim, depth, patch, vit_size = _vit_shape(backbone)
    if size != vit_size:
        raise ValueError(f"insvp on {backbone.name} needs {vit_size} px images, got image_size={size}")
    variant = opts.pop("variant", "paper")
    if variant == "official":
        image_kw, feature_kw = insvp.official_insvp_config()
    elif variant == "paper":
        image_kw = dict(combine="paper", beta_image=0.7)
        feature_kw = dict(combine="paper", beta_feature=0.5, length=9)
    else:
        raise ValueError(f"insvp variant must be 'paper' or 'official', got {variant!r}")
    image_kw.update(_take(opts, INSVP_IMAGE_OPTIONS))
    feature_kw.update(_take(opts, INSVP_FEATURE_OPTIONS))
    return {"input_prompt": insvp.InsVPImagePrompt(vit_size, patch, **image_kw),
            "token_prompt": insvp.InsVPFeaturePrompt(dim, depth, vit_size, patch, **feature_kw)}


# ----------------------------------------------------------------- the registry

@dataclass(frozen=True)
class MethodSpec:
    """What :func:`build` needs to know of a method, in one place: how to build it, which
    options it takes, whether it needs a ViT, which heads it offers, and the starting learning
    rate of ``vplib.experiments`` (a per-method default for AdamW, not a tuned value)."""

    name: str
    builder: Callable[..., dict]
    summary: str
    options: tuple[str, ...] = ()
    vit_only: bool = False
    heads: tuple[str, ...] = ("linear",)
    default_lr: float = 1e-2


_VP_OPTIONS = ("prompt_size", "init")
REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("linear", _backbone_only, "a new linear head on frozen features"),
    MethodSpec("full", _full, "fine-tune the whole backbone and a new head",
               ("train_backbone",), default_lr=1e-4),
    MethodSpec("bias", _backbone_only, "tune biases and norm affines (BitFit) and a new head",
               default_lr=1e-3),
    MethodSpec("vp-pad", _vp("pad"), "a learnable frame around the image", _VP_OPTIONS,
               heads=HEADS),
    MethodSpec("vp-fixed", _vp("fixed"), "a learnable patch in a fixed corner", _VP_OPTIONS,
               heads=HEADS),
    MethodSpec("vp-random", _vp("random"), "a learnable patch at a random place per image",
               _VP_OPTIONS, heads=HEADS),
    MethodSpec("vpt-shallow", _vpt(False), "prompt tokens in the first block's input",
               ("length", "dropout"), vit_only=True),
    MethodSpec("vpt-deep", _vpt(True), "new prompt tokens in every block's input",
               ("length", "dropout"), vit_only=True),
    MethodSpec("msvp", _msvp, "multi-scale prompt maps added to the image",
               ("scales", "fusion", "init_std", "train_backbone")),
    MethodSpec("insvp", _insvp, "instance-wise image and token prompts",
               ("variant",) + INSVP_IMAGE_OPTIONS + INSVP_FEATURE_OPTIONS, vit_only=True,
               default_lr=3e-3),
    MethodSpec("ap", _ap, "a learnable delta added to one layer's output",
               ("layer", "shared_over_positions")),
)}
# insvp: the released code's rate for CIFAR-100 at batch 64. Chapter 05's grid passes its own
# recipe (batch 16, 1e-3, one warmup epoch), which trained better on the source ViT.
METHODS = tuple(REGISTRY)


def method_spec(method: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``method``; an unknown name says which are known."""
    if method not in REGISTRY:
        close = difflib.get_close_matches(str(method), METHODS, n=1)
        raise ValueError(f"Unknown method {method!r}" + (f" (did you mean {close[0]!r}?)" if close
                         else "") + f". Available: {', '.join(METHODS)}.")
    return REGISTRY[method]
