"""One figure style for the whole course, and the plots the chapters share.

Figures have an opaque white background so they stay readable in the book's dark theme. Every
figure a notebook shows fits the book's text column: at most :data:`MAX_WIDTH` inches wide
(768 px at :data:`DPI`), text at least :data:`MIN_FONT` pt at that size, drawn at twice the
resolution for sharp screens (:func:`fit_to_page`, applied by :func:`set_style`'s display
hook). Each method has one colour across the book (:data:`METHOD_COLOURS`).
"""

from __future__ import annotations

import textwrap
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

PALETTE = ["#3b6ea8", "#e07b39", "#4f9d69", "#c44e52", "#8172b3", "#937860", "#da8bc3",
           "#8c8c8c"]
# One colour per method in every chapter's figures (the baselines in greys and browns).
METHOD_COLOURS = {
    "pixels": "#4d4d4d", "linear": "#8c8c8c", "bias": "#937860", "full": "#222222",
    "vp-pad": "#3b6ea8", "vp-fixed": "#6f9bd1", "vp-random": "#a9c4e4",
    "vpt-shallow": "#7fbf8e", "vpt-deep": "#2e7d4a", "msvp": "#da8bc3", "insvp": "#8172b3",
    "ap": "#c44e52",
}
MAX_WIDTH = 8.0   # inches: the book's text column at DPI
MIN_FONT = 10.0   # points, at the displayed size
DPI = 96          # CSS pixels per inch: a figure is shown at its size in inches


def method_colour(method: str) -> str:
    """The book's colour for ``method`` (a key of :data:`METHOD_COLOURS`)."""
    try:
        return METHOD_COLOURS[method]
    except KeyError:
        raise KeyError(f"no colour for method {method!r}; add it to vplib.plots.METHOD_COLOURS "
                       f"(known: {', '.join(METHOD_COLOURS)})") from None


def set_style() -> None:
    """Apply the course style to matplotlib (called by ``vplib.setup``) and, in a notebook,
    show every figure through :func:`fit_to_page` at twice the resolution and give every
    pandas ``Styler`` a LaTeX form (:func:`vplib.tables.styler_latex`) beside its HTML, which
    the book's PDF build uses."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    plt.rcParams.update({
        "figure.facecolor": "white", "axes.facecolor": "white", "savefig.facecolor": "white",
        "figure.dpi": DPI, "axes.titleweight": "bold", "axes.spines.top": False,
        "axes.spines.right": False, "font.size": 11, "axes.titlesize": 12,
        "axes.labelsize": 11, "xtick.labelsize": MIN_FONT, "ytick.labelsize": MIN_FONT,
        "legend.fontsize": MIN_FONT, "legend.title_fontsize": MIN_FONT,
        "figure.titlesize": 12,
    })
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "display_formatter"):
        from matplotlib.figure import Figure
        # matplotlib loads its backend (and the inline backend registers its own PNG
        # formatter) at the first figure: make that happen now, then replace the formatter
        plt.close(plt.figure())
        shell.display_formatter.formatters["image/png"].for_type(Figure, page_png)
        from pandas.io.formats.style import Styler

        from .tables import styler_latex  # the PDF's form of a styled table (the web shows HTML)

        shell.display_formatter.formatters["text/latex"].for_type(Styler, styler_latex)


def fit_to_page(fig) -> bool:
    """Make ``fig`` fit the book's column: wider than :data:`MAX_WIDTH` inches, it is scaled
    down to that width (aspect kept); any text below :data:`MIN_FONT` pt is raised to it.
    When either changed the figure and no layout engine manages it, the layout is redone.
    Returns whether anything changed."""
    import warnings

    from matplotlib.text import Text

    changed = False
    width, height = fig.get_size_inches()
    if width > MAX_WIDTH + 1e-6:
        fig.set_size_inches(MAX_WIDTH, height * MAX_WIDTH / width)
        changed = True
    for text in fig.findobj(Text):
        if text.get_text() and text.get_fontsize() < MIN_FONT:
            text.set_fontsize(MIN_FONT)
            changed = True
    if changed and fig.get_layout_engine() is None and not fig.legends:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "not compatible with tight_layout" for odd axes
            fig.tight_layout()
    return changed


def page_png(fig):
    """A notebook's PNG of ``fig``: fitted to the page (:func:`fit_to_page`), rendered at
    2 x :data:`DPI` and shown at its size in inches (``width``/``height`` metadata)."""
    import io

    fit_to_page(fig)
    buffer = io.BytesIO()
    fig.canvas.print_figure(buffer, format="png", dpi=2 * DPI, bbox_inches="tight",
                            facecolor="white")
    data = buffer.getvalue()
    w, h = _png_size(data)
    # shown at its size, or scaled to the column if what it draws spills past the figure
    scale = min(0.5, MAX_WIDTH * DPI / w)
    return data, {"width": round(w * scale), "height": round(h * scale)}


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) in pixels from a PNG's header."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


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
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            img = to_image(images[i])
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[i], fontsize=10, fontweight="normal")
    if suptitle:
        fig.suptitle(suptitle)
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


def vpt_sequence_figure(depth: int, n_patches: int):
    """Chapter 03's diagram: the inputs of blocks 1 and 2 under VPT-shallow (left) and
    VPT-deep (right), three tokens drawn for the ``L`` prompts, for a ViT of ``depth`` blocks
    and ``n_patches`` patch tokens. Learnable prompts are orange; the frozen blocks' outputs at
    the prompt positions hatched (shallow: carried on) or crossed out (deep: replaced).
    Returns the figure."""
    from matplotlib.patches import FancyBboxPatch, Rectangle

    w, gap, h = 0.78, 0.12, 0.6
    colours = {"cls": "#bdbdbd", "prompt": "#e07b39", "carried": "#f6c9a8", "patch": "#a9c4e4"}
    kinds = ["cls", "prompt", "prompt", "prompt", "patch", "patch", None, "patch"]
    centres = [i * (w + gap) + w / 2 for i in range(len(kinds))]
    right = centres[-1] + w / 2
    fig, axes = plt.subplots(2, 1, figsize=(8, 6.6))

    for ax, deep in zip(axes, (False, True)):
        def row(y, labels, prompt_kind, ax=ax):
            for x, kind, text in zip(centres, kinds, labels):
                kind = prompt_kind if kind == "prompt" else kind
                if kind is not None:
                    ax.add_patch(Rectangle((x - w / 2, y), w, h, facecolor=colours[kind],
                                           edgecolor="#333", lw=0.8,
                                           hatch="///" if kind == "carried" else None))
                box = (dict(facecolor="white", edgecolor="none", pad=1)
                       if kind == "carried" else None)
                ax.text(x, y + h / 2, text, ha="center", va="center", fontsize=10, bbox=box)

        def block(y, label, ax=ax):
            ax.add_patch(FancyBboxPatch((0, y), right, 0.42, boxstyle="round,pad=0.02",
                                        facecolor="#f0f0f0", edgecolor="#777", lw=0.8))
            ax.text(right / 2, y + 0.21, label, ha="center", va="center", fontsize=10)

        def arrows(y_top, y_bottom, crossed=(), ax=ax):
            for i, (x, kind) in enumerate(zip(centres, kinds)):
                if kind is None:
                    continue
                if i in crossed:
                    ax.text(x, (y_top + y_bottom) / 2, "✕", color="#a23b1f", ha="center",
                            va="center", fontsize=11, fontweight="bold")
                else:
                    ax.annotate("", xy=(x, y_bottom), xytext=(x, y_top),
                                arrowprops=dict(arrowstyle="->", color="#777", lw=0.8))

        first = [r"$P_0$"] * 3 if deep else [r"$P$"] * 3
        row(3.2, [r"$x_0$", *first, r"$E_0$", r"$E_0$", r"$\cdots$", r"$E_0$"], "prompt")
        arrows(3.2, 2.82)
        block(2.4, "block 1 (frozen)")
        arrows(2.38, 1.82, crossed=(1, 2, 3) if deep else ())
        second = [r"$P_1$"] * 3 if deep else [r"$Z_1$"] * 3
        row(1.2, [r"$x_1$", *second, r"$E_1$", r"$E_1$", r"$\cdots$", r"$E_1$"],
            "prompt" if deep else "carried")
        arrows(1.2, 0.82)
        block(0.4, f"block 2 (frozen), and so on to block {depth}")
        note = ("block 1's outputs at the prompt\npositions are discarded (✕);\n"
                "fresh learnable $P_1$ enter" if deep else
                "block 1's outputs at the prompt\npositions ($Z_1$) are carried on;\n"
                "nothing new is learned here")
        ax.text(right + 0.3, 1.5, note, fontsize=10.5, va="center",
                color="#a23b1f" if deep else "#7a4a1f")
        for y, label in [(3.5, "input to\nblock 1"), (1.5, "input to\nblock 2")]:
            ax.text(-0.3, y, label, ha="right", va="center", fontsize=10)
        patches = f"{n_patches} patch tokens (+ position)"
        for x, label in [(centres[0], "class"), (centres[2], "L prompt tokens"),
                         ((centres[4] + centres[-1]) / 2, patches)]:
            ax.text(x, 3.95, label, ha="center", fontsize=10.5)
        ax.set_xlim(-1.5, right + 3.0)
        ax.set_ylim(0.3, 4.25)
        ax.set_axis_off()
        ax.set_title(f"VPT-{'deep' if deep else 'shallow'}: "
                     f"{'$MLd$' if deep else '$Ld$'} prompt parameters", fontsize=11)
    fig.tight_layout()
    return fig


def photo_predictions(photos: dict, predictions: Sequence, *, k: int = 3, ncols: int = 4,
                      cell: tuple[float, float] = (2.0, 2.3), suptitle: str | None = None):
    """Photos (``{title: (H, W, 3) array}``) in a grid, each with its top-``k`` predictions
    printed in a box at its bottom left: ``predictions[i]`` is a list of ``(class name,
    probability)``, best first, for the ``i``-th photo. ``cell``: inches per photo (width,
    height). Returns the figure."""
    nrows = int(np.ceil(len(photos) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(cell[0] * ncols, cell[1] * nrows),
                             squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, img), preds in zip(axes.flat, photos.items(), predictions):
        ax.imshow(img)
        ax.set_title(title, fontsize=10)
        text = "\n".join(f"{p:5.1%}  {c}" for c, p in preds[:k])
        ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=10, family="monospace",
                va="bottom", bbox=dict(facecolor="white", alpha=0.85, edgecolor="none"))
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def length_sweep_figure(runs, *, dataset: str = "mnist"):
    """Chapter 03's grid in two panels: test accuracy against prompt length on ``dataset``
    (VPT-shallow and VPT-deep with one-standard-error bars, the linear probe and VP as
    horizontal lines), and below it accuracy against trainable parameters for every run of
    every dataset, in the methods' colours (:data:`METHOD_COLOURS`).

    ``runs``: a :func:`vplib.tables.records_frame` of the grid with ``length`` (the VPT
    prompt length, NaN for other methods), ``se`` (binomial standard error of ``test_acc``)
    and ``setting`` (the label of a line). Returns the figure."""
    from matplotlib.ticker import NullFormatter

    sweep = runs[runs.method.str.startswith("vpt") & (runs.dataset == dataset)]
    sweep = sweep.sort_values("length")
    reference = runs[(runs.dataset == dataset) & runs.method.isin(["linear", "vp-pad"])]
    styles = {"vpt-shallow": "o", "vpt-deep": "s"}
    colours = {m: method_colour(m) for m in ("linear", "vp-pad", *styles)}
    fig, (ax, ax_params) = plt.subplots(2, 1, figsize=(8, 8.4))
    for method, marker in styles.items():
        part = sweep[sweep.method == method]
        ax.errorbar(part.length, 100 * part.test_acc, yerr=100 * part.se, color=colours[method],
                    marker=marker, capsize=3, label=method)
    for (_, row), ls in zip(reference.iterrows(), ["--", "-."]):
        ax.axhline(100 * row.test_acc, color=colours[row.method], ls=ls, lw=1.2,
                   label=row.setting)
    lengths = sorted(sweep.length.unique())
    ax.set_xscale("log")
    ax.set_xticks(lengths, [str(int(n)) for n in lengths])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("prompt length L (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(frameon=False, ncol=2, loc="lower right")
    ax.set_title(f"{'MNIST-5k' if dataset == 'mnist' else dataset}: prompt length sweep")

    names = [dataset] + [d for d in runs.dataset.unique() if d != dataset]
    for name, marker in zip(names, ["o", "^", "s", "D"]):
        part = runs[runs.dataset == name]
        ax_params.scatter(part.trainable_params, 100 * part.test_acc, marker=marker, s=45,
                          color=part.method.map(colours), zorder=3)
        for _, row in part[part.length.notna()].iterrows():
            ax_params.annotate(f"L={int(row.length)}", (row.trainable_params, 100 * row.test_acc),
                               xytext=(5, 3), textcoords="offset points", fontsize=10, color="#555")
        ax_params.scatter([], [], color="k", marker=marker, label=name)
    for method, name in [("linear", "linear probe"), ("vp-pad", "VP (pad)"),
                         ("vpt-shallow", "VPT-shallow"), ("vpt-deep", "VPT-deep")]:
        ax_params.scatter([], [], color=colours[method], marker="s", label=name)
    ax_params.set_xscale("log")
    ticks = [t for t in (1000, 2000, 5000, 10000, 20000, 50000)
             if runs.trainable_params.min() / 1.5 <= t <= runs.trainable_params.max() * 1.5]
    ax_params.set_xticks(ticks, [f"{t // 1000}k" for t in ticks])
    ax_params.xaxis.set_minor_formatter(NullFormatter())
    ax_params.set_xlabel("trainable parameters (log scale)")
    ax_params.set_ylabel("test accuracy (%)")
    ax_params.legend(frameon=False, ncol=1, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax_params.set_title("Accuracy against trainable parameters, every run")
    fig.suptitle(f"Committed grid: standard profile, {runs.epochs.iloc[0]} epochs, one seed\n"
                 "(error bars: one binomial standard error)")
    fig.tight_layout()
    return fig


def attention_shares_figure(shares: dict, *, uniform: float, length: int, title: str):
    """Chapter 03's attention figure: one panel per model (``shares``: name -> a frame with one
    row per block and the columns ``cls → prompts``, ``cls → cls``, ``cls → patches`` and
    ``patches → prompts``, each a share of attention in [0, 1]). The class token's three
    shares are stacked bars (the prompts' at the bottom); for a model with prompts, the patch
    tokens' share on the prompts is a line and ``uniform`` (the prompts' share if attention
    were spread evenly over ``length`` prompts and the other tokens) a dashed one. Returns the
    figure."""
    import pandas as pd

    stacked = {"cls → prompts": "#e07b39", "cls → cls": "#8c8c8c", "cls → patches": "#a9c4e4"}
    fig, axes = plt.subplots(1, len(shares), figsize=(8, 3.4), sharey=True, squeeze=False)
    for ax, (name, table) in zip(axes[0], shares.items()):
        bottom = pd.Series(0.0, index=table.index)
        for column, colour in stacked.items():
            ax.bar(table.index, table[column], bottom=bottom, color=colour, width=0.75,
                   label=column.replace("cls", "class token"))
            bottom += table[column]
        if table["cls → prompts"].abs().sum() > 0:  # a model with prompts
            ax.plot(table.index, table["patches → prompts"], "k-o", ms=4, lw=1.2,
                    label="patch tokens → prompts")
            ax.axhline(uniform, color="#a23b1f", ls="--", lw=1,
                       label=f"uniform share of {length} prompts ({uniform:.0%})")
        ax.set_title(name)
        ax.set_xlabel("block")
        ax.set_xticks(table.index)
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("share of attention")
    handles, labels = axes[0, -1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def ablation_panels(ours: dict, reported, steps: Sequence[str], *, titles: Sequence[str]):
    """An ablation beside the paper's: accuracy as a method's parts are added one at a time.

    ``ours``: label -> a frame indexed by step with ``mean`` and ``sd`` (fractions; a missing
    step is a gap, a missing sd no bar), drawn with error bars on the left; ``reported``: a
    frame of percentages indexed by step, one column per dataset, on the right. ``steps`` is
    the x order and ``titles`` the two panels' titles. Returns the figure."""
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    x = range(len(steps))
    for label, rows in ours.items():
        rows = rows.reindex(steps)
        axes[0].errorbar(x, 100 * rows["mean"], yerr=100 * rows["sd"].fillna(0), marker="o",
                         capsize=3, label=label)
    for column in reported.columns:
        axes[1].plot(x, reported[column].reindex(steps), marker="s", label=column)
    for ax, title in zip(axes, titles):
        ax.set_xticks(x, [s.replace(" tokens", "") for s in steps], rotation=15)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title, fontsize=11)
        ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=1 if len(ax.get_legend_handles_labels()[1]) <= 2 else 2)
    fig.tight_layout()  # the legends sit below the panels, off the data
    return fig


def value_heatmaps(panels: dict, columns: Sequence, rows: Sequence, *, xlabel: str = "",
                   label: str = "", suptitle: str | None = None, vmin: float = 0.0,
                   vmax: float = 1.0, light_from: float = 0.6, figsize=(8, 3.4)):
    """Annotated heatmaps side by side, one per ``{title: (len(rows), len(columns)) array}``
    (a tensor or array), sharing the y axis and one colour bar (``label``, from ``vmin`` to
    ``vmax``). Every cell prints its value with two decimals, in black on cells at or above
    ``light_from`` and in white below. Returns the figure."""
    fig, axes = plt.subplots(1, len(panels), figsize=figsize, sharey=True, squeeze=False,
                             layout="constrained")
    for ax, (title, values) in zip(axes[0], panels.items()):
        values = np.asarray(values, dtype=float)
        im = ax.imshow(values, vmin=vmin, vmax=vmax, cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=10,
                    color="white" if v < light_from else "black")
        ax.set_xticks(range(len(columns)), [str(c) for c in columns])
        ax.set_yticks(range(len(rows)), [str(r) for r in rows])
        ax.set_xlabel(xlabel)
        ax.set_title(title)
        ax.grid(False)
    fig.colorbar(im, ax=list(axes[0]), label=label, shrink=0.9)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def accuracy_bars(frame, *, label: str = "setting", value: str = "test_acc", note=None,
                  panel: str | None = None, chance: float | None = None,
                  xlabel: str = "test accuracy (%)", suptitle: str | None = None,
                  figsize=(8, 3.4)):
    """Horizontal bars of ``frame[value]`` (fractions, drawn in percent), one per row in the
    frame's order from the top, labelled with ``frame[label]``. Each bar carries its value
    (``"93.2%"``) and, when ``note`` (a function of the row) is given, ``" · " + note(row)``
    at its end. Bars take the method's colour (:data:`METHOD_COLOURS`) when the frame has a
    ``method`` column. ``panel``: a column; one subplot per value of it (first-seen order), titled
    with the value. ``chance``: a dashed line at that fraction. Returns the figure."""
    groups = ([(None, frame)] if panel is None
              else [(k, frame[frame[panel] == k]) for k in frame[panel].unique()])
    fig, axes = plt.subplots(1, len(groups), figsize=figsize, squeeze=False)
    for ax, (title, sub) in zip(axes[0], groups):
        colours = ([method_colour(m) for m in sub["method"]] if "method" in sub
                   else [PALETTE[i % len(PALETTE)] for i in range(len(sub))])
        bars = ax.barh([str(s) for s in sub[label]], 100 * sub[value], color=colours)
        for bar, (_, row) in zip(bars, sub.iterrows()):
            text = f"{row[value]:.1%}" + (f" · {note(row)}" if note is not None else "")
            ax.text(bar.get_width() - 1, bar.get_y() + bar.get_height() / 2, text,
                    va="center", ha="right", color="white", fontsize=10, fontweight="bold")
        if chance is not None:
            ax.axvline(100 * chance, color="gray", ls="--", lw=1)
            ax.text(100 * chance + 0.5, -0.45, "chance", color="gray", fontsize=10)
        ax.set_xlim(0, 100)
        if len(groups) == 1:
            ax.set_xlabel(xlabel)
        if title is not None:
            ax.set_title(str(title))
        ax.invert_yaxis()
    if len(groups) > 1:  # one label for the shared axis, not one per panel
        fig.supxlabel(xlabel, fontsize=MIN_FONT + 1)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def signed_images(maps: dict, *, size: tuple[float, float] = (8 / 3, 2.9),
                  suptitle: str | None = None):
    """Signed ``(C, H, W)`` maps (``{title: tensor}``, e.g. learned prompts) side by side, each
    drawn with :func:`signed_image` (its own scale: mid-grey is zero, the largest magnitude
    saturates). ``size``: inches per map (width, height). Returns the figure."""
    fig, axes = plt.subplots(1, len(maps), figsize=(size[0] * len(maps), size[1]),
                             squeeze=False)
    for ax, (title, p) in zip(axes[0], maps.items()):
        ax.imshow(signed_image(p))
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def amplified_prompt(model, gain: float):
    """A copy of ``model`` (a :class:`~vplib.model.PromptedClassifier` with an input prompt)
    whose input prompt's parameters are multiplied by ``gain``; ``model`` is left untouched.
    For a prompt linear in its parameters (the ``vp-*`` prompts) this is the same prompt
    ``gain`` times stronger: pass the copy to :func:`prompted_inputs` to make a faint prompt
    visible."""
    import copy

    if getattr(model, "input_prompt", None) is None:
        raise ValueError("the model has no input prompt to amplify")
    amplified = copy.deepcopy(model)
    with torch.no_grad():
        for p in amplified.input_prompt.parameters():
            p.mul_(gain)
    return amplified


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
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 5.6), sharex=True,
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
        ax.set_xlabel(textwrap.fill(xlabel, 36))
        linear = part[part.method == "linear"]
        if note and len(linear):
            ax.annotate(note, (linear[x].min(), 100 * linear.test_acc_mean.min()),
                        xytext=(0, -28), textcoords="offset points", fontsize=10,
                        color=colours["linear"])
    axes.flat[0].set_ylabel("test accuracy (%), mean ± sd over seeds")
    methods = [Line2D([], [], color=colours[m], marker="o", ls="", label=label)
               for m, label in names.items()]
    keys = [Line2D([], [], color="#444444", marker=markers[ds], ls="",
                   mfc="#444444" if ds == filled else "white", label=label)
            for ds, label in datasets.items()]
    fig.legend(handles=methods, frameon=False, fontsize=10, ncol=3, loc="lower center",
               bbox_to_anchor=(0.5, 0.06))
    fig.legend(handles=keys, frameon=False, fontsize=10, ncol=len(keys), loc="lower center")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.25, 1, 1))
    return fig


def image_rows(rows: dict, *, signed: Sequence[str] = (), row_scale: bool = True,
               size: float = 1.6, suptitle: str | None = None):
    """A grid of images, one row per ``{title: (N, C, H, W) tensor}`` entry (all rows the same
    ``N``), one column per image (chapter 05's prompts of a few test images).

    Rows whose title is in ``signed`` are signed maps (prompts), drawn with
    :func:`signed_image` (mid-grey is zero) on one scale per row, the row's largest magnitude,
    so the panels of a row are comparable; ``row_scale=False`` gives each panel its own scale.
    The other rows are images (uint8, or float in [0, 1]). Returns the figure.
    """
    n = len(next(iter(rows.values())))
    fig, axes = plt.subplots(len(rows), n, figsize=(size * n, size * len(rows)), squeeze=False)
    for ax_row, (title, images) in zip(axes, rows.items()):
        scale = float(images.detach().abs().max()) if title in signed and row_scale else None
        for ax, img in zip(ax_row, images):
            ax.imshow(signed_image(img, scale) if title in signed else to_image(img),
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        ax_row[0].set_ylabel(title, fontsize=10, rotation=0, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def token_heatmaps(tokens: torch.Tensor, titles: Sequence[str], *, suptitle: str | None = None,
                   size: tuple[float, float] = (2.6, 1.9), ncols: int = 3):
    """Prompt tokens of a few images as heatmaps, one panel per image (at most ``ncols`` per
    row, the rows balanced: 4 panels are 2 x 2):
    ``tokens`` is ``(N, L, D)``, a panel's rows are its ``L`` tokens and its columns their
    ``D`` values, on one colour scale for all panels (blue negative, white zero, red positive;
    the largest magnitude saturates). ``size``: inches per panel. Returns the figure."""
    tokens = tokens.detach().float().cpu()
    scale = max(float(tokens.abs().max()), 1e-12)
    nrows = -(-len(tokens) // ncols)
    ncols = -(-len(tokens) // nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                             sharey=True, squeeze=False)
    length = tokens.shape[1]
    for ax, t, title in zip(axes.flat, tokens, titles):
        ax.imshow(t.numpy(), cmap="RdBu_r", vmin=-scale, vmax=scale, aspect="auto",
                  interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("channel (of D)", fontsize=10)
        ax.set_yticks(sorted({0, length - 1}))  # the first and the last token
        ax.grid(False)
    for ax in axes.flat[len(tokens):]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("token")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def sweep_panels(sweeps, defaults: dict, labels: dict, *, log: Sequence[str] = (),
                 ncols: int = 3, ylabel: str = "accuracy (%)", suptitle: str | None = None):
    """One panel per swept setting (chapter 05's hyperparameter sweeps): test and validation
    accuracy (fractions, drawn in percent) against the setting's value, with a dotted line at
    its default.

    ``sweeps`` is a DataFrame with one row per run and the columns ``setting``, ``value``,
    ``test_acc`` and ``val_acc`` (the default run belongs to every setting's rows);
    ``defaults`` maps a setting to its default value and ``labels`` a setting to its x-axis
    label, in panel order. Settings in ``log`` get a log x-axis. Returns the figure.
    """
    nrows = -(-len(labels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(8 / 3 * ncols, 2.6 * nrows), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax, (setting, label) in zip(axes.flat, labels.items()):
        rows = sweeps[sweeps.setting == setting].sort_values("value")
        ax.plot(rows.value, 100 * rows.test_acc, marker="o", label="test")
        ax.plot(rows.value, 100 * rows.val_acc, marker="s", ls="--", alpha=0.6, label="validation")
        ax.axvline(defaults[setting], color="0.6", lw=1, ls=":")
        ax.set_xlabel(label)
        if setting in log:
            ax.set_xscale("log")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)
    axes[0, 0].legend(frameon=False, fontsize=10)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def labelled_points(points, *, x: str, panels: dict, panel: str = "dataset",
                    label: str = "setting", names: dict | None = None, highlight=None,
                    xlabel: str = "", ylabel: str = "test accuracy (%)",
                    suptitle: str | None = None):
    """Mean ± sd accuracies against a count on a log axis, every point labelled (chapter 05's
    accuracy against trained parameters).

    ``points`` has one row per point with ``mean`` and ``sd`` (fractions, drawn in percent; a
    NaN sd draws no error bar, as :func:`vplib.tables.mean_sd` gives for one seed), the x
    column ``x`` and the columns ``panel`` and ``label``. One panel per ``{value of panel:
    title}`` entry of ``panels``; a point's text is ``names.get(label, label)``. Rows for which
    ``highlight(row)`` is true (a row of ``points.itertuples()``) are blue circles, the others
    red squares. Returns the figure.
    """
    names = names or {}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), sharey=True,
                             squeeze=False)
    for ax, (value, title) in zip(axes[0], panels.items()):
        for r in points[points[panel] == value].itertuples():
            marked = bool(highlight(r)) if highlight is not None else True
            ax.errorbar(getattr(r, x), 100 * r.mean, yerr=0 if np.isnan(r.sd) else 100 * r.sd,
                        capsize=3, marker="o" if marked else "s",
                        color=PALETTE[0] if marked else PALETTE[3])
            text = getattr(r, label)
            ax.annotate(names.get(text, text), (getattr(r, x), 100 * r.mean), fontsize=10,
                        xytext=(4, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
    axes[0, 0].set_ylabel(ylabel)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def panel_grid(rows: dict, *, titles: Sequence[str] | None = None, size: float = 1.8,
               suptitle: str | None = None, fontsize: float = 10, heat_cmap: str = "jet",
               alpha: float = 0.5):
    """A grid of image panels, one row per entry of ``rows`` (``{row label: panels}``, the
    label written left of the row) and ``titles`` over the top row's columns; ``size``: inches
    per panel. Returns the figure.

    A panel is an image (a ``(C, H, W)`` tensor, uint8 or float in [0, 1], or an ``(H, W)`` /
    ``(H, W, 3)`` array in [0, 1]; one channel is drawn in grey), or a pair ``(image, heat)``:
    the image with the map ``heat`` (``(h, w)``, any resolution) over it in ``heat_cmap`` at
    opacity ``alpha``, one flat cell per map entry stretched over the image, and scaled to the
    map's own min and max. A row shorter than the longest leaves its last places empty.
    """
    ncols = max(len(panels) for panels in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, squeeze=False, figsize=(
        size * ncols, size * len(rows) + (0.3 if suptitle else 0)))
    for ax_row, (label, panels) in zip(axes, rows.items()):
        for ax in ax_row[len(panels):]:
            ax.axis("off")
        for ax, panel in zip(ax_row, panels):
            image, heat = panel if isinstance(panel, tuple) else (panel, None)
            img = to_image(image) if torch.is_tensor(image) else np.asarray(image)
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            if heat is not None:
                h, w = img.shape[:2]
                ax.imshow(np.asarray(heat), cmap=heat_cmap, alpha=alpha, interpolation="nearest",
                          extent=(-0.5, w - 0.5, h - 0.5, -0.5))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        ax_row[0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=fontsize)
    for ax, title in zip(axes[0], titles or []):
        ax.set_title(title, fontsize=fontsize, fontweight="normal")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def embedding_panels(points: dict, labels, class_names: Sequence[str], *,
                     titles: Sequence[str] | None = None, suptitle: str | None = None,
                     size: float = 4.2):
    """Scatter plots of 2-D embeddings side by side (``{name: (N, 2) array}``, e.g. t-SNE of
    features), each point coloured by its class (``labels``: ``N`` class indices into
    ``class_names``), titled ``titles`` (default: the names), one legend right of the last
    panel; returns the figure."""
    labels = np.asarray(labels)
    fig, axes = plt.subplots(1, len(points), figsize=(size * len(points), size - 0.1),
                             squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, title, e in zip(axes[0], titles or list(points), points.values()):
        e = np.asarray(e)
        for c, name in enumerate(class_names):
            sel = labels == c
            ax.scatter(e[sel, 0], e[sel, 1], s=6, color=colours(c % 10), label=str(name))
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, -1].legend(loc="center left", bbox_to_anchor=(1, 0.5), frameon=False, markerscale=2,
                       fontsize=10)
    if suptitle:
        fig.suptitle(suptitle, y=1.02)
    fig.tight_layout()
    return fig


def msvp_maps_figure(models: dict):
    """Chapter 04's learned MSVP maps: one row per ``{label: (model, image_size)}`` (a
    :class:`~vplib.model.PromptedClassifier` with a
    :class:`~vplib.prompts.msvp.MultiScalePrompt` input prompt), one panel per scale's map
    upsampled to the image size and a last one for their mean (what the add fusion adds),
    each drawn with :func:`signed_image` (mid-grey is zero, its own scale) and titled with
    its largest magnitude. Returns the figure."""
    rows = {label: model.input_prompt.prompt_maps(size) for label, (model, size) in models.items()}
    ncols = 1 + max(len(maps) for maps in rows.values())
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.25 * ncols, 2.8 * len(rows)),
                             squeeze=False)
    for axes_row, (label, maps) in zip(axes, rows.items()):
        maps = {**maps, "mean (added)": torch.stack(list(maps.values())).mean(0)}
        for ax in axes_row:
            ax.axis("off")
        for ax, (name, m) in zip(axes_row, maps.items()):
            ax.imshow(signed_image(m))
            ax.set_title(f"{label}: {name}\n|max| = {m.abs().max():.3f}", fontsize=10)
    fig.tight_layout()
    return fig


def accuracy_and_cost(x, acc, params, *, xlabel: str, title: str | None = None,
                      figsize=(6, 3.4)):
    """A sweep of one setting ``x`` (e.g. a prompt's size): test accuracy (``acc``, fractions,
    drawn in percent with circles on the left axis) and trainable parameters (``params``,
    drawn in thousands with dashed squares on the right axis), one legend below. Returns the
    figure."""
    fig, ax = plt.subplots(figsize=figsize)
    ax.plot(x, 100 * np.asarray(acc, dtype=float), marker="o", label="test accuracy")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax2 = ax.twinx()
    ax2.plot(x, np.asarray(params, dtype=float) / 1e3, marker="s", ls="--", color="#8c8c8c",
             label="trainable parameters")
    ax2.set_ylabel("trainable parameters (thousands)")
    ax2.grid(False)
    if title:
        ax.set_title(title)
    fig.legend(loc="lower center", ncol=2, frameon=False, bbox_to_anchor=(0.5, -0.02))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return fig


def cost_curves(costs, labels: dict, *, title: str | None = None):
    """Chapter 06's cost of one training step against the depth of the prompted layer: the
    activations kept for the backward pass (left) and the time per step (right) of an
    activation prompt at every layer (solid), next to VP (dashed) and, on the right, the
    forward pass alone (dotted); one colour per backbone.

    ``costs`` has one row per (backbone, prompt) with the columns ``backbone``, ``layer``
    (``"input"`` on VP's row), ``relative depth``, ``saved MB``, ``step ms`` and, on VP's row,
    ``forward ms``. ``labels`` maps a backbone to its legend label, in drawing order (colours
    follow :data:`PALETTE`). Returns the figure.
    """
    fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(8, 3.8))
    for colour, (backbone, label) in zip(PALETTE, labels.items()):
        part = costs[costs.backbone == backbone]
        ap, vp = part[part.layer != "input"], part[part.layer == "input"].iloc[0]
        for ax, column in ((ax_mem, "saved MB"), (ax_time, "step ms")):
            ax.plot(ap["relative depth"], ap[column], "o-", color=colour, label=f"AP · {label}")
            ax.axhline(vp[column], color=colour, ls="--", lw=1, label=f"VP · {label}")
        ax_time.axhline(vp["forward ms"], color=colour, ls=":", lw=1,
                        label=f"forward pass only · {label}")
    for ax, ylabel, axis_title in (
            (ax_mem, "saved for backward (MB per step)", "Activations kept for the backward pass"),
            (ax_time, "time per training step (ms)", "Time of one training step")):
        ax.set_xlabel("relative depth k / L of the prompted layer")
        ax.set_ylabel(ylabel)
        ax.set_title(axis_title)
        ax.set_ylim(bottom=0)
    fig.legend(*ax_time.get_legend_handles_labels(), frameon=False, fontsize=10, ncol=3,
               loc="lower center")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    return fig


def layer_sweep(sweep, baselines: dict, *, panels: dict, labels: dict,
                title: str | None = None):
    """Chapter 06's layer sweep: test accuracy (in %, error bars one binomial SE) of a prompt
    at each layer against the layer's relative depth, one panel per dataset and one colour
    and marker per backbone; a star marks the layer with the best validation accuracy.

    ``sweep`` has one row per run with ``backbone``, ``dataset``, ``depth``, ``test_acc``,
    ``val_acc`` and ``se`` (fractions). ``baselines`` maps ``(backbone, dataset)`` to
    ``{"linear": acc, "vp": acc}``: the linear probe is drawn as a dashed line, VP as an open
    marker at depth 0 (the input). ``panels`` maps a dataset to its panel title, ``labels`` a
    backbone to its legend name, in drawing order (colours follow :data:`PALETTE`). Returns
    the figure.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.0), sharey=True,
                             squeeze=False)
    for ax, (dataset, panel_title) in zip(axes[0], panels.items()):
        for colour, marker, (backbone, name) in zip(PALETTE, "os^D", labels.items()):
            part = sweep[(sweep.backbone == backbone) & (sweep.dataset == dataset)]
            part = part.sort_values("depth")
            ax.errorbar(part.depth, 100 * part.test_acc, yerr=100 * part.se, color=colour,
                        marker=marker, ms=4, capsize=2, label=f"AP per position · {name}")
            if len(part):
                best = part.loc[part.val_acc.idxmax()]
                ax.plot(best.depth, 100 * best.test_acc, marker="*", ms=15, color=colour,
                        markeredgecolor="black", ls="none")
            base = baselines.get((backbone, dataset), {})
            if "linear" in base:
                ax.axhline(100 * base["linear"], color=colour, ls="--", lw=1,
                           label=f"linear probe · {name}")
            if "vp" in base:
                ax.plot(0, 100 * base["vp"], marker=marker, ms=8, ls="none",
                        markerfacecolor="white", markeredgecolor=colour,
                        label=f"VP (input) · {name}")
        ax.set_xlabel("relative depth of the prompted layer, k / L\n"
                      "(k = 1 is the first block; 0 is the input: VP)")
        ax.set_title(panel_title)
    axes[0, 0].set_ylabel("test accuracy (%)")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), frameon=False, fontsize=10, ncol=3,
               loc="lower center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    return fig


def line_panels(panels: dict, *, xlabel: str = "epoch", ylabel: str | None = None,
                hlines: dict | None = None, vline: float | None = None, marker: str = "o",
                size: tuple[float, float] = (4.0, 3.2), suptitle: str | None = None):
    """Line plots side by side, one panel per ``{title: {label: values}}`` entry, each series
    drawn with ``marker`` and labelled: ``values`` is a sequence (drawn against 1, 2, ...,
    e.g. a validation curve per epoch) or a pair ``(x, y)``. ``hlines``: ``{title: {label:
    y}}``, dashed grey reference lines on that panel (e.g. a baseline's accuracy); ``vline``:
    the x of a dashed grey line on every panel (e.g. the chosen epoch). ``ylabel`` goes on the
    first panel, the legend (series and reference lines) too. ``size``: inches per panel.
    Returns the figure."""
    fig, axes = plt.subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]),
                             squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items()):
        for label, values in series.items():
            x, y = values if isinstance(values, tuple) else (range(1, len(values) + 1), values)
            ax.plot(list(x), list(y), marker=marker, label=label)
        for label, y in (hlines or {}).get(title, {}).items():
            ax.axhline(y, color="gray", ls="--", lw=1, label=label)
        if vline is not None:
            ax.axvline(vline, color="gray", ls="--", lw=1)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
    if ylabel:
        axes[0, 0].set_ylabel(ylabel)
    axes[0, 0].legend(frameon=False, fontsize=10)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig
