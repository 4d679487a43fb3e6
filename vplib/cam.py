"""Class activation maps for vplib models: where does a (prompted) classifier look?

``cam(model, images)`` returns one heat map per image, in ``[0, 1]`` at the input's resolution,
for a frozen :class:`~vplib.backbones.Backbone` (its ImageNet head) or any
:class:`~vplib.model.PromptedClassifier` (linear probe, VP, VPT, MSVP, InsVP, AP, ...), on CNNs
and ViTs alike. The maps come from pytorch-grad-cam (PyPI ``grad-cam``):

* ``"gradcam"``: Grad-CAM (Selvaraju et al., ICCV 2017). The channel weights are the
  spatially averaged gradients of the class score; the map is ``ReLU(sum_k w_k A_k)``.
* ``"gradcam++"``: Grad-CAM++ (Chattopadhay et al., WACV 2018), which weights positive
  gradients with second-order terms and spreads credit over several object parts.

Both are min-max scaled per image, as the library does, so a map says *where* the evidence is
relative to the rest of the image, not how much of it there is.

What this module adds to the library, and why:

* **ViT tokens to a grid.** A ViT layer outputs a token sequence ``(B, N, D)``. vplib inserts
  prompt tokens right after the class token (``vplib.prompts.tokens``), so the patch tokens are
  always the last ``gh * gw`` of the sequence: the reshape keeps exactly those and drops the
  class and prompt tokens. Any other token count raises instead of reshaping garbage.
* **Frozen backbones.** With a frozen backbone nothing below the head requires gradients, so
  the library's gradient hooks would never fire. The input is marked ``requires_grad`` so the
  activations of every layer are part of the graph.
* **Default layers.** The last stage of a CNN, and ``norm1`` of a ViT's last block (the block's
  input: the last block's output only feeds the class token, so its patch tokens carry no
  gradient from a class-token head).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn as nn

from .backbones import Backbone
from .plots import to_image

CAM_METHODS = ("gradcam", "gradcam++")


def _backbone(model: nn.Module):

    if isinstance(model, Backbone):
        return model
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, Backbone):
        return backbone
    raise TypeError(f"cam() takes a vplib Backbone or a model built by vplib.build, got "
                    f"{type(model).__name__}.")


def default_layer(model: nn.Module) -> str:
    """The layer whose activations ``cam`` uses by default, named relative to
    ``backbone.model`` (pass it, or another name, as ``layer=``)."""
    backbone = _backbone(model)
    net = backbone.model
    if backbone.kind == "vit":
        return f"blocks.{len(net.blocks) - 1}.norm1"
    if hasattr(net, "feature_info"):  # timm CNNs name their stages in feature_info
        return net.feature_info[-1]["module"]
    if isinstance(getattr(net, "features", None), nn.Sequential):  # torchvision MobileNet
        return f"features.{len(net.features) - 1}"
    raise ValueError(f"no default CAM layer for {backbone.name}: pass layer=<module name>.")


class ViTPatchGrid:
    """Reshape transform for a ViT layer: ``(B, N, D)`` tokens -> ``(B, D, gh, gw)``, keeping
    the last ``gh * gw`` tokens (the patches) and dropping class and prompt tokens."""

    def __init__(self, grid: tuple[int, int], num_prefix_tokens: int):
        self.grid = grid
        self.num_prefix_tokens = num_prefix_tokens

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        gh, gw = self.grid
        if tokens.ndim != 3 or tokens.shape[1] < self.num_prefix_tokens + gh * gw:
            raise ValueError(f"expected ViT tokens (B, N, D) with N >= {self.num_prefix_tokens} "
                             f"prefix + {gh * gw} patch tokens, got {tuple(tokens.shape)}: is "
                             "the CAM layer inside the ViT's blocks?")
        patches = tokens[:, -gh * gw:, :]
        return patches.reshape(tokens.shape[0], gh, gw, tokens.shape[2]).permute(0, 3, 1, 2)


def _targets(targets, batch: int):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if targets is None:
        return None
    if isinstance(targets, (int, np.integer)):
        targets = [int(targets)] * batch
    targets = [int(t) for t in (targets.tolist() if hasattr(targets, "tolist") else targets)]
    if len(targets) != batch:
        raise ValueError(f"got {len(targets)} targets for {batch} images: pass one class index "
                         "per image, a single index for all, or None for the predicted class.")
    return [ClassifierOutputTarget(t) for t in targets]


def cam(model: nn.Module, images: torch.Tensor, targets: int | Sequence[int] | None = None, *,
        method: str = "gradcam", layer: str | None = None, batch_size: int = 32) -> np.ndarray:
    """Class activation maps of ``model`` for ``images``.

    Args:
        model: a :class:`~vplib.backbones.Backbone` (explains its ImageNet logits) or a model
            from :func:`vplib.build` (explains its target logits, prompts applied).
        images: float images ``(B, 3, H, W)`` in ``[0, 1]``, as the model takes them.
        targets: class index per image (or one for all); ``None`` explains the predicted class.
        method: one of :data:`CAM_METHODS`.
        layer: module name relative to ``backbone.model`` (default :func:`default_layer`).
        batch_size: images per backward pass. The maps are per image, so the batch changes
            only the memory: each pass keeps the activations of ``batch_size`` images (a
            MobileNetV2 at 224 px: about 70 MB an image).

    Returns:
        ``(B, H, W)`` float32 maps in ``[0, 1]``.
    """
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    classes = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
    if method not in classes:
        raise ValueError(f"Unknown CAM method {method!r}. Available: {', '.join(CAM_METHODS)}.")
    if not torch.is_tensor(images) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a float tensor (B, 3, H, W) in [0, 1], got {shape}; "
                         "add a batch dimension with images[None] and repeat grayscale to RGB.")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0, 1], got {images.dtype}: divide uint8 "
                         "images by 255.")
    backbone = _backbone(model)
    name = layer or default_layer(model)
    try:
        target_layer = backbone.model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{backbone.name} has no layer {name!r}; the default is "
                         f"{default_layer(model)!r}.") from None
    reshape = None
    if backbone.kind == "vit":
        patch = backbone.model.patch_embed.patch_size
        grid = (images.shape[-2] // patch[0], images.shape[-1] // patch[1])
        reshape = ViTPatchGrid(grid, backbone.model.num_prefix_tokens)
    device = next(model.parameters()).device
    was_training = model.training
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    wanted = _targets(targets, len(images))
    extractor = classes[method](model, [target_layer], reshape_transform=reshape)
    try:
        maps = []
        for start in range(0, len(images), batch_size):
            x = images[start:start + batch_size].detach().to(device).requires_grad_(True)
            chunk = None if wanted is None else wanted[start:start + batch_size]
            maps.append(np.asarray(extractor(x, chunk), dtype=np.float32))
    finally:
        extractor.activations_and_grads.release()
        model.train(was_training)
    return np.concatenate(maps)


def overlay(image: torch.Tensor | np.ndarray, heat: np.ndarray, *, alpha: float = 0.5,
            cmap: str = "jet") -> np.ndarray:
    """Blend a heat map ``(H, W)`` in [0, 1] over an image (``(3, H, W)`` tensor or
    ``(H, W, 3)`` array in [0, 1]); returns ``(H, W, 3)`` floats in [0, 1]."""
    import matplotlib

    img = to_image(image) if torch.is_tensor(image) else np.asarray(image, dtype=np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[:2] != heat.shape:
        raise ValueError(f"image {img.shape[:2]} and heat map {heat.shape} differ in size.")
    colours = matplotlib.colormaps[cmap](np.clip(heat, 0, 1))[..., :3]
    return np.clip((1 - alpha) * img + alpha * colours, 0, 1)


def energy_inside(heat: np.ndarray, mask: np.ndarray | torch.Tensor) -> np.ndarray:
    """Share of each map's mass that falls inside a binary mask (``(B, H, W)`` both): 1 means
    all the evidence is on the object, the mask's area fraction is what a flat map scores."""
    mask = mask.numpy() if torch.is_tensor(mask) else np.asarray(mask)
    if mask.shape != heat.shape:
        raise ValueError(f"mask {mask.shape} and heat maps {heat.shape} differ in shape.")
    total = heat.reshape(len(heat), -1).sum(1)
    inside = (heat * mask.astype(heat.dtype)).reshape(len(heat), -1).sum(1)
    return np.divide(inside, total, out=np.full_like(total, np.nan), where=total > 0)


def energy_table(heat: dict, masks: dict, *, reference: str = "linear",
                 frames: dict | None = None):
    """Where each model's maps put their mass, one row per ``(backbone, method)`` key of
    ``heat`` (``{(backbone, method): (B, H, W) maps}``, every method of a backbone on the same
    ``B`` images; ``masks``: ``{backbone: (B, H, W) object mask}``).

    Columns: ``on object``, the mean share of a map's mass on the object (:func:`energy_inside`;
    an empty map, all zero after the ReLU, is left out) and its standard error ``± se``;
    ``vs <reference>``, the mean paired difference from the same backbone's ``reference``
    method on the images where neither map is empty, with its standard error
    ``± se (paired)`` (empty for the reference itself); ``flat map``, the object's share of the
    image (what a flat map scores); ``on frame``, the mean share on ``frames[backbone]`` (a
    second mask, e.g. a VP frame; only when ``frames`` is given); ``empty maps``, their count;
    and ``vs <reference>, 2 se``: "more" or "less" when the paired difference exceeds two
    standard errors, else "no more and no less"."""
    import pandas as pd

    rows = {}
    for (arch, method), maps in heat.items():
        if (arch, reference) not in heat:
            raise ValueError(f"energy_table needs the reference maps {(arch, reference)!r} to "
                             f"pair {(arch, method)!r} with; pass them in heat or choose another "
                             "reference=")
        share = pd.Series(energy_inside(maps, masks[arch]))  # NaN: an empty map
        paired = share - energy_inside(heat[arch, reference], masks[arch])
        if method == reference:
            paired[:] = np.nan  # not compared with itself
        row = {"on object": share.mean(), "± se": share.sem(),  # sem: ddof 1, NaN skipped
               f"vs {reference}": paired.mean(), "± se (paired)": paired.sem(),
               "flat map": float(np.asarray(masks[arch], dtype=float).mean())}
        if frames is not None:
            row["on frame"] = float(np.nanmean(energy_inside(maps, frames[arch])))
        rows[arch, method] = {**row, "empty maps": int(share.isna().sum())}
    table = pd.DataFrame.from_dict(rows, orient="index").rename_axis(["backbone", "method"])
    d, se = table[f"vs {reference}"], table["± se (paired)"]
    table[f"vs {reference}, 2 se"] = np.select([d > 2 * se, d < -2 * se], ["more", "less"],
                                               "no more and no less")
    table.loc[d.isna(), f"vs {reference}, 2 se"] = ""
    return table
