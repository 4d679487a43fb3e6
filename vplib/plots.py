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


def accuracy_against_cost(summary, x: str, *, panels: dict, names: dict, datasets: dict,
                          colours: dict, xlabel: str, title: str, note: str | None = None):
    """Test accuracy (mean ± sd over seeds, in %) against a cost on a log axis, one panel per
    backbone, each panel with its own accuracy range (chapter 08's accuracy-versus-cost plots).

    ``summary`` has one row per (backbone, dataset, method) with ``test_acc_mean``,
    ``test_acc_sd`` (NaN for one seed: no error bar) and the cost column ``x`` (as
    ``vplib.experiments.summarize`` returns). ``panels`` maps backbone -> panel title,
    ``names`` method -> legend label (in legend order), ``datasets`` dataset -> label (one
    marker each: the first filled, the others hollow) and ``colours`` method -> colour.
    ``note`` is written below each panel's lowest linear-probe point. Returns the figure.
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter

    markers = dict(zip(datasets, "os^Dv"))
    filled = next(iter(datasets))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.75 * len(panels), 4.8), sharex=True,
                             squeeze=False)
    for ax, (backbone, panel_title) in zip(axes.flat, panels.items()):
        part = summary[summary.backbone == backbone]
        for row in part.itertuples():
            sd = 0.0 if np.isnan(row.test_acc_sd) else 100 * row.test_acc_sd
            colour = colours[row.method]
            ax.errorbar(getattr(row, x), 100 * row.test_acc_mean, yerr=sd,
                        fmt=markers[row.dataset], color=colour, ms=7, capsize=3, mew=1.5,
                        mfc=colour if row.dataset == filled else "white")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.6)
        ax.grid(True, which="minor", axis="x", alpha=0.2)
        ax.set_title(panel_title)
        ax.set_xlabel(xlabel)
        linear = part[part.method == "linear"]
        if note and len(linear):
            ax.annotate(note, (linear[x].min(), 100 * linear.test_acc_mean.min()),
                        xytext=(0, -28), textcoords="offset points", fontsize=8,
                        color=colours["linear"])
    axes.flat[0].set_ylabel("test accuracy (%), mean ± sd over seeds")
    methods = [Line2D([], [], color=colours[m], marker="o", ls="", label=label)
               for m, label in names.items()]
    keys = [Line2D([], [], color="#444444", marker=markers[ds], ls="",
                   mfc="#444444" if ds == filled else "white", label=label)
            for ds, label in datasets.items()]
    fig.legend(handles=methods, frameon=False, fontsize=8, ncol=5, loc="lower center",
               bbox_to_anchor=(0.5, 0.05))
    fig.legend(handles=keys, frameon=False, fontsize=8, ncol=len(keys), loc="lower center")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig
