"""One figure style for the whole course, and the plots the chapters share.

Figures have an opaque white background so they stay readable in the book's dark theme.
"""

from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

PALETTE = ["#3b6ea8", "#e07b39", "#4f9d69", "#c44e52", "#8172b3", "#937860", "#da8bc3",
           "#8c8c8c"]


def set_style() -> None:
    """Apply the course style to matplotlib (called by ``vplib.setup``)."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    plt.rcParams.update({
        "figure.facecolor": "white", "axes.facecolor": "white", "savefig.facecolor": "white",
        "figure.dpi": 110, "axes.titleweight": "bold", "axes.spines.top": False,
        "axes.spines.right": False,
    })


def to_image(x: torch.Tensor) -> np.ndarray:
    """A ``(C, H, W)`` tensor (uint8, or float in [0, 1]) -> an ``(H, W[, 3])`` array."""
    x = x.detach().cpu()
    if x.dtype == torch.uint8:
        x = x.float() / 255
    x = x.clamp(0, 1)
    return x[0].numpy() if x.shape[0] == 1 else x.permute(1, 2, 0).numpy()


def image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, *, ncols: int = 8,
               size: float = 1.4, suptitle: str | None = None):
    """Show ``(N, C, H, W)`` images in a grid with optional titles; returns the figure."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = to_image(images[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[i], fontsize=8, fontweight="normal")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def training_curves(histories: dict, *, metric: str = "val_acc", ax=None):
    """Plot ``metric`` per epoch for each ``{label: History}``; returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    for label, h in histories.items():
        ax.plot(h.column("epoch"), h.column(metric), marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric.replace("_", " "))
    ax.legend(frameon=False)
    return ax


def signed_image(p: torch.Tensor, scale: float | None = None) -> np.ndarray:
    """A signed ``(C, H, W)`` map (a prompt) -> an image in [0, 1] with 0 at mid-grey:
    ``0.5 + p / (2 * scale)``, ``scale`` defaulting to ``max |p|``, so the largest value
    is saturated and the sign is visible per channel."""
    p = p.detach().float().cpu()
    scale = float(p.abs().max()) if scale is None else float(scale)
    return to_image(0.5 + p / (2 * max(scale, 1e-12)))


@torch.no_grad()
def prompted_inputs(model, images: torch.Tensor) -> torch.Tensor:
    """What a :class:`~vplib.model.PromptedClassifier`'s backbone sees, in pixel space: the
    images (uint8 or float in [0, 1]) normalised, passed through the input prompt, and mapped
    back with the backbone's mean and std; clipped to [0, 1] for display."""
    backbone = model.backbone
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    x = x.to(backbone.mean.device)
    was_training = model.training
    model.eval()
    z = backbone.normalize(x)
    if model.input_prompt is not None:
        z = model.input_prompt(z)
    model.train(was_training)
    return (z * backbone.std + backbone.mean).clamp(0, 1).cpu()
