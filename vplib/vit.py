"""The architecture of the course's source ViTs (``vit_distilled``, ``vit_fashion``).

timm ``VisionTransformer`` s (Dosovitskiy et al., ICLR 2021) with 28 px inputs, a 7x7 token
grid of width 160 and 6 blocks of 4 heads, so that every method of ``vplib.METHODS`` accepts
them. Only the patch embedding is the course's own, one of three (``ViTConfig.stem``):

* ``"patch"``: timm's linear patch embedding;
* ``"conv"``: :class:`ConvStem`, a small convolutional stem (Xiao et al., NeurIPS 2021,
  "Early convolutions help transformers see better"; the layout is ours);
* ``"hybrid"``: :class:`HybridStem`, the first four stages of the ImageNet MobileNetV2 as the
  patch embedding (the hybrid ViT of Dosovitskiy et al., section 3.1).

Both stems keep timm's ``PatchEmbed`` interface and token grid, so everything that reads
``patch_embed`` (token prompts, InsVP) works unchanged. How the weights are trained and shipped
is :mod:`vplib.pretrain`; loading them is :func:`vplib.backbones.source_vit`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import VisionTransformer


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 28
    patch_size: int = 4
    embed_dim: int = 160
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    stem: str = "conv"  # "patch" (timm's linear), "conv" (ConvStem) or "hybrid" (HybridStem)


class ConvStem(PatchEmbed):
    """timm's ``PatchEmbed`` with its single strided projection replaced by a small
    convolutional stem: ``log2(patch)`` stages of two 3x3 conv + BN + GELU layers (the first
    with stride 2), then a 1x1 projection to the embedding width. Same interface and token grid
    as a ``patch``-sized patch embedding."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim, **kwargs):
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                         embed_dim=embed_dim, **kwargs)
        stages = patch_size.bit_length() - 1
        if 2 ** stages != patch_size:
            raise ValueError(f"the conv stem needs a power-of-two patch size, got {patch_size}")
        layers, width = [], in_chans
        for i in range(stages):
            out = embed_dim // 2 ** (stages - i)
            for stride in (2, 1):
                layers += [nn.Conv2d(width, out, 3, stride=stride, padding=1, bias=False),
                           nn.BatchNorm2d(out), nn.GELU()]
                width = out
        layers.append(nn.Conv2d(width, embed_dim, 1))
        self.proj = nn.Sequential(*layers)


class HybridStem(PatchEmbed):
    """timm's ``PatchEmbed`` whose projection is the first four feature stages of
    torchvision's MobileNetV2 (Sandler et al., CVPR 2018; stride 4, 24 channels) followed by a
    1x1 projection to the embedding width. The MobileNetV2 layers start from the offline
    ImageNet weights (:mod:`vplib.pretrain` loads them) and stay frozen while the transformer is
    trained. Same token grid as a patch-4 embedding."""

    def __init__(self, img_size, patch_size, in_chans, embed_dim, **kwargs):
        import torchvision

        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                         embed_dim=embed_dim, **kwargs)
        if patch_size not in (4, (4, 4)):
            raise ValueError(f"the hybrid stem has stride 4: patch_size must be 4, "
                             f"got {patch_size}")
        cnn = torchvision.models.mobilenet_v2().features[:4]
        self.proj = nn.Sequential(cnn, nn.Conv2d(24, embed_dim, 1))


STEMS = {"patch": PatchEmbed, "conv": ConvStem, "hybrid": HybridStem}


def create_vit(config: ViTConfig) -> VisionTransformer:
    """A randomly initialised source ViT of architecture ``config``."""
    if config.stem not in STEMS:
        raise ValueError(f"unknown stem {config.stem!r}; use one of {sorted(STEMS)}")
    return VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, in_chans=3,
                             embed_dim=config.embed_dim, depth=config.depth,
                             num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                             num_classes=config.num_classes, embed_layer=STEMS[config.stem])


def attention_weights(vit: VisionTransformer, run, blocks=None, reduce=None):
    """The attention weights every block of a timm ``VisionTransformer`` uses while ``run()``
    executes (``run`` calls the model, or a prompted model built on it, under ``no_grad``).

    timm computes attention in a fused kernel and does not return the weights, so a forward
    hook on each block's attention module recomputes them from the module's own query and key
    projections, and rebuilds the module's output from them as a check.

    Returns ``(weights, error)``: ``weights[i]`` is block ``i``'s softmax attention
    ``(B, heads, N, N)`` (``N`` counts every token in the sequence, prompts included), or
    ``reduce(w)`` of each call's weights when ``reduce`` is given (e.g. ``lambda w: w.mean(1)``
    to average over heads and keep memory small), concatenated over calls; and
    ``error`` the largest difference between an attention module's output and the output
    rebuilt from the recomputed weights, relative to the output's largest value (about 1e-6
    when the weights are the ones the model used).
    """
    indices = range(len(vit.blocks)) if blocks is None else blocks
    weights, errors = {}, []

    def hook(index):
        def record(attn, inputs, output):
            x = inputs[0]
            b, n, _ = x.shape
            qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
            w = (q @ k.transpose(-2, -1) * attn.scale).softmax(-1)
            rebuilt = attn.proj(attn.norm((w @ v).transpose(1, 2).reshape(b, n, -1)))
            errors.append(((rebuilt - output).abs().max() / output.abs().max()).item())
            weights.setdefault(index, []).append(w if reduce is None else reduce(w))
        return record

    handles = [vit.blocks[i].attn.register_forward_hook(hook(i)) for i in indices]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    if not errors:
        raise RuntimeError("run() did not call the ViT's attention modules")
    import torch

    return {i: torch.cat(ws) for i, ws in weights.items()}, max(errors)
