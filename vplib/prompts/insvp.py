"""Instance visual prompting (InsVP): prompts generated from the image itself.

Liu, Peng, Zhou. "InsVP: Efficient Instance Visual Prompting from Image Itself", ACM MM 2024.

InsVP gives every image its own prompts, at two levels:

* **image level** (:class:`InsVPImagePrompt`): a *patch prompter* (a two-layer MLP applied to
  each non-overlapping ``P x P`` patch, shared over patches) and a *global prompter* (two
  large-kernel convolutions over the whole image) each produce a ``(B, C, H, W)`` prompt;
  their weighted sum is added to the normalised image.
* **feature level** (:class:`InsVPFeaturePrompt`): VPT-deep style tokens in front of the patch
  tokens of every prompted ViT block. Each block has its own learnable *common tokens*
  ``(L, D)``; a small CNN, the *specific prompter*, turns the (already image-prompted) image
  into ``(B, L, D)`` *specific tokens* that are added to every block's common tokens.

The defaults follow the authors' released code (see ``official_insvp_config``), whose
parameter count for ViT-B/16 at 224 px with ``L = 16`` is 271,661 (head excluded):

=======================  ==========================================  =======
patch prompter           768*16 + 16 + 16*768 + 768                   25,360
global prompter          3*6*11*11 + 6 + 6*3*25*25 + 3                13,437
common tokens            12 * 16 * 768                               147,456
specific prompter        (3*16*7*7 + 16) + (16*48*9*9 + 48)
                         + (48*48*3*3 + 48)                           85,408
=======================  ==========================================  =======

The released code never passes the specific prompter to the optimizer, so only
25,360 + 13,437 + 147,456 = 186,253 parameters are trained there; ``train_specific=False``
reproduces that (the specific prompter stays at its random init but still counts in the total).

Mixing weights. The paper writes convex combinations, ``p_I = b_I * p_global + (1 - b_I) *
p_patch`` (b_I = 0.7) and ``p_F = b_F * p_common + (1 - b_F) * p_specific`` (b_F = 0.5); the
released code uses ``p_patch + 2 * p_global`` and ``p_common + p_specific``. Since each prompter
ends in a linear layer, the two forms differ only by a constant rescaling of each term (the
paper's 0.7/0.3 is a global:patch ratio of 2.33, close to the code's 2). Default here:
``combine="official"``, where ``beta_image`` multiplies the global prompt (2.0) and
``beta_feature`` multiplies the specific tokens (1.0); ``combine="paper"`` switches to the
paper's convex form, so the paper's beta sweeps can be reproduced with the paper's values.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

Combine = Literal["official", "paper"]


def _check_image(z: Tensor, channels: int, image_size: int, patch_size: int, who: str) -> None:
    """Raise a ValueError that says exactly which dimension of ``z`` is wrong."""
    if z.dim() != 4:
        raise ValueError(f"{who}: expected an image batch (B, C, H, W), got shape {tuple(z.shape)}")
    _, c, h, w = z.shape
    if c != channels:
        raise ValueError(f"{who}: expected {channels} channels, got {c} (shape {tuple(z.shape)})")
    if h % patch_size or w % patch_size:
        raise ValueError(f"{who}: image size {h}x{w} is not divisible by patch size {patch_size}")
    if h != image_size or w != image_size:
        raise ValueError(f"{who}: built for {image_size}x{image_size} images, got {h}x{w}")


def _check_sizes(image_size: int, patch_size: int) -> None:
    if image_size < 1 or patch_size < 1:
        raise ValueError(f"image_size and patch_size must be positive, got {image_size}, {patch_size}")
    if image_size % patch_size:
        raise ValueError(f"image_size {image_size} is not divisible by patch_size {patch_size}")


def _mix(a: Tensor | None, b: Tensor | None, beta: float, combine: Combine) -> Tensor | None:
    """``a + beta * b`` (official) or ``beta * b + (1 - beta) * a`` (paper); a missing term is 0."""
    wa, wb = (1.0, beta) if combine == "official" else (1.0 - beta, beta)
    terms = [w * t for w, t in ((wa, a), (wb, b)) if t is not None]
    return sum(terms[1:], terms[0]) if terms else None


# ---------------------------------------------------------------------------------------------
# Image level
# ---------------------------------------------------------------------------------------------

class PatchPrompter(nn.Module):
    """Shared MLP over non-overlapping patches: (B, C, H, W) -> (B, C, H, W).

    Each ``P x P x C`` patch is flattened, sent through ``Linear -> ReLU -> Linear`` (bottleneck
    ``hidden``) and put back in place, so the prompt for a patch depends only on that patch.
    """

    def __init__(self, patch_size: int, channels: int = 3, hidden: int = 16, dropout: float = 0.1):
        super().__init__()
        self.patch_size = patch_size
        dim = channels * patch_size * patch_size
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, z: Tensor) -> Tensor:
        B, C, H, W = z.shape
        P = self.patch_size
        nh, nw = H // P, W // P
        # (B, C, nh, P, nw, P) -> (B, nh, nw, C, P, P): one row per patch, flattened C-major
        # like the released code, so its weights would load unchanged.
        patches = z.reshape(B, C, nh, P, nw, P).permute(0, 2, 4, 1, 3, 5).reshape(B, nh * nw, C * P * P)
        out = self.mlp(patches)
        out = out.reshape(B, nh, nw, C, P, P).permute(0, 3, 1, 4, 2, 5).reshape(B, C, H, W)
        return self.dropout(out)


class GlobalPrompter(nn.Module):
    """Two "same"-padded convolutions over the whole image: (B, C, H, W) -> (B, C, H, W).

    ``Conv(C -> hidden, k1) -> ReLU -> Conv(hidden -> C, k2) -> Dropout``. The paper says the
    convolutions are dilated (for a larger receptive field at no parameter cost); the released
    code uses ``dilation=1`` and so does the default here. ``dilation > 1`` gives the paper's
    variant with the same parameter count (padding grows so the output size is unchanged).
    """

    def __init__(self, channels: int = 3, hidden: int = 6, kernels: tuple[int, int] = (11, 25),
                 dropout: float = 0.1, dilation: int = 1):
        super().__init__()
        k1, k2 = kernels
        if k1 % 2 == 0 or k2 % 2 == 0:
            raise ValueError(f"global prompter kernels must be odd for 'same' padding, got {kernels}")
        self.conv1 = nn.Conv2d(channels, hidden, k1, padding=dilation * (k1 - 1) // 2, dilation=dilation)
        self.conv2 = nn.Conv2d(hidden, channels, k2, padding=dilation * (k2 - 1) // 2, dilation=dilation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, z: Tensor) -> Tensor:
        return self.dropout(self.conv2(F.relu(self.conv1(z))))


class InsVPImagePrompt(nn.Module):
    """InsVP image-level prompt: ``z -> z + p_I(z)``, shapes (B, C, H, W) -> (B, C, H, W).

    ``p_I = p_patch + beta_image * p_global`` (``combine="official"``, released code, beta 2)
    or ``beta_image * p_global + (1 - beta_image) * p_patch`` (``combine="paper"``, paper Eq. 6,
    beta 0.7). A disabled prompter contributes 0; with both disabled this is the identity.
    ``z`` is the *normalised* image (the prompt is added after normalisation, as in the code).
    Deviation: ``global_dilation`` (default 1, as the released code) offers the paper's dilated
    convolutions.
    """

    def __init__(self, image_size: int, patch_size: int, channels: int = 3, *, patch_prompter: bool = True,
                 global_prompter: bool = True, beta_image: float = 2.0, hidden: int = 16,
                 dropout: float = 0.1,
                 global_kernels: tuple[int, int] = (11, 25), global_hidden: int = 6,
                 combine: Combine = "official", global_dilation: int = 1):
        super().__init__()
        _check_sizes(image_size, patch_size)
        if combine not in ("official", "paper"):
            raise ValueError(f"combine must be 'official' or 'paper', got {combine!r}")
        self.image_size, self.patch_size, self.channels = image_size, patch_size, channels
        self.beta_image, self.combine = beta_image, combine
        self.patch = PatchPrompter(patch_size, channels, hidden, dropout) if patch_prompter else None
        self.glob = (GlobalPrompter(channels, global_hidden, tuple(global_kernels), dropout, global_dilation)
                     if global_prompter else None)

    def prompt(self, z: Tensor) -> Tensor | None:
        """The image prompt ``p_I`` (B, C, H, W), or None when both prompters are disabled."""
        _check_image(z, self.channels, self.image_size, self.patch_size, type(self).__name__)
        p_patch = self.patch(z) if self.patch is not None else None
        p_global = self.glob(z) if self.glob is not None else None
        return _mix(p_patch, p_global, self.beta_image, self.combine)

    def forward(self, z: Tensor) -> Tensor:
        p = self.prompt(z)
        return z if p is None else z + p


# ---------------------------------------------------------------------------------------------
# Feature level
# ---------------------------------------------------------------------------------------------

def _token_layout(embed_dim: int, channels: int) -> tuple[int, int, int]:
    """How one token of width ``embed_dim`` is read out of a conv feature map: (c, gh, gw).

    The paper reshapes a ``P x P x (C * L)`` map into ``L`` tokens of width ``P * P * C``, which
    equals D for ViT-B/16 (16 * 16 * 3 = 768). In general we keep ``c = C`` channels per token
    when C divides D (else 1) and lay the remaining ``D / c`` values on the most square grid.
    """
    c = channels if embed_dim % channels == 0 else 1
    n = embed_dim // c
    gh = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return c, gh, n // gh


def _centre_crop(x: Tensor, h: int, w: int) -> Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top:top + h, left:left + w]


class SpecificPrompter(nn.Module):
    """The specific prompter G_s: image (B, C, H, W) -> specific tokens (B, L, D).

    Three "same"-padded convolutions (kernels 7, 9, 3 by default), LeakyReLU after the first
    two, and between them a centre crop + max-pool that shrink the map to a ``gh x gw`` grid
    (see ``_token_layout``); the last map has ``c * L`` channels and is reshaped channel-major
    into ``L`` tokens of ``c * gh * gw = D`` values (token i = channels ``c*i .. c*i + c - 1``).

    Channels ``C -> L -> c*L -> c*L`` (3 -> 16 -> 48 -> 48 for ViT-B/16 with L = 16). This is
    the only choice of two hidden widths that gives the released code's 85,408 parameters with
    kernels 7/9/3 and output ``c*L = 48`` channels (the paper's "P x P x (C * L)" map):
    ``148 a + 81 a b + 433 b + 48 = 85,408`` has the single solution a = 16, b = 48 (checked
    for all a, b < 400, with and without 48-channel outputs or biases).

    Crops and pools are derived from the shapes: the total downsampling ``f = H // gh`` is split
    into two max-pools ``s1 = ceil(sqrt(f))`` and ``s2 = f // s1``; stage 1 first drops a border
    of ``P // 2`` pixels (if that still leaves room) and crops to a multiple of ``s1``; stage 2
    centre-crops to ``s2 * gh``. For 224 px / P = 16 / D = 768 this is the released code's
    224 -> crop 208 -> pool 4 -> 52 -> crop 48 -> pool 3 -> 16. If the grid is not reached
    exactly (odd sizes), a final adaptive max-pool makes it ``gh x gw``.
    """

    def __init__(self, embed_dim: int, image_size: int, patch_size: int, channels: int = 3, *,
                 length: int = 16, kernels: tuple[int, int, int] = (7, 9, 3), dropout: float = 0.1):
        super().__init__()
        if any(k % 2 == 0 for k in kernels):
            raise ValueError(f"specific prompter kernels must be odd for 'same' padding, got {kernels}")
        self.length = length
        c, self.gh, self.gw = _token_layout(embed_dim, channels)
        k1, k2, k3 = kernels
        self.conv1 = nn.Conv2d(channels, length, k1, padding=k1 // 2)
        self.conv2 = nn.Conv2d(length, c * length, k2, padding=k2 // 2)
        self.conv3 = nn.Conv2d(c * length, c * length, k3, padding=k3 // 2)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.plan = self._plan(image_size, patch_size)

    def _plan(self, size: int, patch_size: int) -> tuple[int, int, int, int]:
        """(crop1, pool1, crop2, pool2) for a square image of side ``size``."""
        g = max(self.gh, self.gw)
        f = max(1, size // g)
        s1 = math.ceil(math.sqrt(f))
        s2 = max(1, f // s1)
        # Stage 1: drop a border of half a patch like the released code, unless too small.
        crop1 = (size - 2 * (patch_size // 2)) // s1 * s1
        if crop1 < s1 * s2 * g:
            crop1 = size // s1 * s1
        n1 = crop1 // s1
        crop2 = min(n1 // s2 * s2, s2 * g)
        return crop1, s1, crop2, s2

    def forward(self, z: Tensor) -> Tensor:
        crop1, s1, crop2, s2 = self.plan
        x = F.leaky_relu(self.conv1(z))
        x = self.drop1(F.max_pool2d(_centre_crop(x, crop1, crop1), s1))
        x = F.leaky_relu(self.conv2(x))
        x = self.drop2(F.max_pool2d(_centre_crop(x, crop2, crop2), s2))
        if x.shape[-2:] != (self.gh, self.gw):
            x = F.adaptive_max_pool2d(x, (self.gh, self.gw))
        x = self.conv3(x)  # no activation: tokens may take any sign, like the common tokens
        return x.reshape(x.shape[0], self.length, -1)


class InsVPFeaturePrompt(nn.Module):
    """Per-block prompt tokens for a timm VisionTransformer, VPT-deep style.

    Before every prompted block ``i`` the caller puts ``tokens(i, B)`` (B, L, D) right after the
    class token (inserted at the first prompted block, *replacing* the L prompt positions at
    later ones). The tokens are ``p_common[i] + beta_feature * p_specific`` (``combine=
    "official"``, released code, beta 1) or ``beta_feature * p_common[i] + (1 - beta_feature) *
    p_specific`` (``combine="paper"``, paper Eq. 10, beta 0.5); a disabled part contributes 0,
    and with both disabled ``tokens`` is always None. Common tokens: one ``(L, D)`` set per
    prompted block, init uniform(-1, 1), dropout (as the released code). Specific tokens:
    :class:`SpecificPrompter` on the image given to :meth:`setup`.

    Deviations from the released code, both for clarity and speed: the specific prompter runs
    once per forward (in ``setup``) and its tokens are shared by all blocks, whereas the code
    reruns it before each block (identical in eval mode; in training only the dropout masks
    differ per block). ``layers`` may be any set of blocks (the code prompts the first k).
    ``train_specific=False`` reproduces the code's untrained specific prompter by freezing it.
    """

    def __init__(self, embed_dim: int, depth: int, image_size: int, patch_size: int, channels: int = 3, *,
                 length: int = 16, layers: Sequence[int] | None = None,
                 common_tokens: bool = True, specific_tokens: bool = True, beta_feature: float = 1.0,
                 train_specific: bool = True, dropout: float = 0.1,
                 specific_kernels: tuple[int, int, int] = (7, 9, 3), combine: Combine = "official"):
        super().__init__()
        _check_sizes(image_size, patch_size)
        if length < 1:
            raise ValueError(f"prompt length must be at least 1, got {length}")
        if combine not in ("official", "paper"):
            raise ValueError(f"combine must be 'official' or 'paper', got {combine!r}")
        layers = list(range(depth)) if layers is None else sorted(set(int(i) for i in layers))
        if any(not 0 <= i < depth for i in layers):
            raise ValueError(f"prompted layers must lie in [0, {depth}), got {layers}")
        self.embed_dim, self.depth, self.length = embed_dim, depth, length
        self.image_size, self.patch_size, self.channels = image_size, patch_size, channels
        self.layers, self.beta_feature, self.combine = layers, beta_feature, combine
        self._slot = {block: k for k, block in enumerate(layers)}  # block index -> row of `common`

        self.common = (nn.Parameter(torch.empty(len(layers), length, embed_dim).uniform_(-1.0, 1.0))
                       if common_tokens else None)
        self.common_dropout = nn.Dropout(dropout)
        self.specific = (SpecificPrompter(embed_dim, image_size, patch_size, channels, length=length,
                                          kernels=tuple(specific_kernels), dropout=dropout)
                         if specific_tokens else None)
        if self.specific is not None and not train_specific:
            self.specific.requires_grad_(False)  # released code: never given to the optimizer
        self._specific_tokens: Tensor | None = None

    @property
    def enabled(self) -> bool:
        return self.common is not None or self.specific is not None

    def setup(self, z: Tensor) -> None:
        """Compute and store the specific tokens (B, L, D) from the image-prompted image z."""
        _check_image(z, self.channels, self.image_size, self.patch_size, type(self).__name__)
        self._specific_tokens = self.specific(z) if self.specific is not None else None

    def tokens(self, block_index: int, batch_size: int) -> Tensor | None:
        """Prompt tokens (B, L, D) for block ``block_index``, or None if it is not prompted."""
        if not self.enabled or block_index not in self._slot:
            return None
        common = None
        if self.common is not None:
            common = self.common_dropout(self.common[self._slot[block_index]].expand(batch_size, -1, -1))
        specific = None
        if self.specific is not None:
            specific = self._specific_tokens
            if specific is None:
                raise RuntimeError("InsVPFeaturePrompt.tokens() called before setup(z)")
            if specific.shape[0] != batch_size:
                raise ValueError(f"setup() saw a batch of {specific.shape[0]}, tokens() asked "
                                 f"for {batch_size}")
        return _mix(common, specific, self.beta_feature, self.combine)


# ---------------------------------------------------------------------------------------------
# The released-code configuration
# ---------------------------------------------------------------------------------------------

def official_insvp_config() -> tuple[dict, dict]:
    """Keyword arguments (image prompt, feature prompt) matching the authors' released code."""
    image = dict(patch_prompter=True, global_prompter=True, beta_image=2.0, hidden=16, dropout=0.1,
                 global_kernels=(11, 25), global_hidden=6, combine="official", global_dilation=1)
    feature = dict(length=16, layers=None, common_tokens=True, specific_tokens=True, beta_feature=1.0,
                   train_specific=False, dropout=0.1, specific_kernels=(7, 9, 3), combine="official")
    return image, feature


def build_official(embed_dim: int, depth: int, image_size: int, patch_size: int,
                   channels: int = 3) -> tuple[InsVPImagePrompt, InsVPFeaturePrompt]:
    """(image_prompt, feature_prompt) with the released code's settings (length 16, all blocks,
    beta_image 2, beta_feature 1, untrained specific prompter)."""
    image_kw, feature_kw = official_insvp_config()
    return (InsVPImagePrompt(image_size, patch_size, channels, **image_kw),
            InsVPFeaturePrompt(embed_dim, depth, image_size, patch_size, channels, **feature_kw))
