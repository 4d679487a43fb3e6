"""Draws the method schematics that chapters 04, 05 and 06 show (book/images/*.svg).

    python book/images/schematics.py

Boxes and arrows only: what each method computes and where it enters a frozen backbone.
Learnable parts are drawn in the method's colour (vplib.plots.METHOD_COLOURS), frozen ones in
blue-grey.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from vplib.plots import METHOD_COLOURS, set_style  # noqa: E402

FROZEN = "#dfe7f2"
HERE = Path(__file__).parent


def box(ax, x, y, w, h, text, colour=FROZEN, *, fontsize=10, light=False):
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02", facecolor=colour,
                                edgecolor="#555", lw=0.8, alpha=0.35 if light else 1.0))
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=fontsize)


def arrow(ax, start, end, *, colour="#555", style="-|>", ls="-"):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=colour,
                                 lw=1.0, ls=ls, shrinkA=2, shrinkB=2))


def canvas(width, height, xlim, ylim):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_axis_off()
    return fig, ax


def msvp():
    c = METHOD_COLOURS["msvp"]
    fig, ax = canvas(8, 3.6, (0, 16), (-1.2, 6.2))
    box(ax, 0.2, 2.4, 2.2, 1.6, "image $x$\n$(3, S, S)$")
    for i, (name, grid) in enumerate([("global", "1 x 1"), ("mid", "4 x 4"), ("local", "8 x 8")]):
        y = 4.6 - 2.1 * i
        box(ax, 3.4, y, 2.6, 1.3, f"{name} map\n3 x {grid}", c)
        box(ax, 6.8, y, 2.2, 1.3, "upsample\nto $S \\times S$", "#f2f2f2")
        arrow(ax, (6.0, y + 0.65), (6.8, y + 0.65))
        arrow(ax, (9.0, y + 0.65), (9.9, 3.2))
    box(ax, 9.9, 2.4, 2.5, 1.6, "fuse:\nadd, concat\nor gated", c)
    arrow(ax, (1.3, 2.4), (1.3, -0.1), style="-", ls="--")
    arrow(ax, (1.3, -0.1), (11.15, -0.1), style="-", ls="--")
    arrow(ax, (11.15, -0.1), (11.15, 2.4), ls="--")
    ax.text(6.0, -0.5, "$x$ itself", fontsize=10, color="#555", va="top")
    box(ax, 13.1, 2.4, 2.7, 1.6, "frozen\nbackbone\n+ new head")
    arrow(ax, (12.4, 3.2), (13.1, 3.2))
    return fig


def insvp():
    c = METHOD_COLOURS["insvp"]
    fig, ax = canvas(8, 4.4, (0, 16), (0, 8.8))
    box(ax, 0.1, 5.6, 2.4, 1.4, "image $z$\n(normalised)")
    box(ax, 3.1, 6.6, 3.4, 1.3, "patch prompter\n(an MLP per patch)", c)
    box(ax, 3.1, 4.6, 3.4, 1.3, "global prompter\n(two wide convs)", c)
    arrow(ax, (2.5, 6.3), (3.1, 7.2))
    arrow(ax, (2.5, 6.3), (3.1, 5.2))
    box(ax, 7.1, 5.6, 2.2, 1.4, "mix with $\\beta_I$,\nadd to $z$", c)
    arrow(ax, (6.5, 7.2), (7.1, 6.5))
    arrow(ax, (6.5, 5.2), (7.1, 6.1))
    box(ax, 10.0, 5.6, 2.2, 1.4, "prompted\nimage $z'$")
    arrow(ax, (9.3, 6.3), (10.0, 6.3))
    box(ax, 10.0, 2.4, 2.2, 1.6, "specific\nprompter\n$G_s(z')$", c)
    arrow(ax, (11.1, 5.6), (11.1, 4.0))
    box(ax, 7.1, 2.4, 2.2, 1.6, "common\ntokens\n(per block)", c)
    box(ax, 3.1, 2.4, 3.4, 1.6, "mix with $\\beta_F$:\ntoken prompts\nof each block", c)
    arrow(ax, (10.0, 3.2), (9.3, 3.2))
    arrow(ax, (7.1, 3.2), (6.5, 3.2))
    box(ax, 13.0, 2.4, 2.8, 4.6, "frozen ViT\nblocks\n+ new head")
    arrow(ax, (12.2, 6.3), (13.0, 6.3))
    arrow(ax, (4.8, 2.4), (4.8, 1.2), style="-")
    arrow(ax, (4.8, 1.2), (14.4, 1.2), style="-")
    arrow(ax, (14.4, 1.2), (14.4, 2.4))
    ax.text(6.5, 0.5, "tokens enter every block (deep prompts)", fontsize=10, color="#444")
    return fig


def ap():
    c = METHOD_COLOURS["ap"]
    fig, ax = canvas(8, 2.9, (0, 16), (0, 5.8))
    names = ["image", "layer 1", "· · ·", "layer $k$", "layer $k{+}1$", "· · ·", "head"]
    x = [0.2 + 2.25 * i for i in range(len(names))]
    for xi, name in zip(x, names):
        box(ax, xi, 2.6, 1.8, 1.3, name, FROZEN if "layer" in name else "#f2f2f2")
    for a, b in zip(x, x[1:]):
        arrow(ax, (a + 1.8, 3.25), (b, 3.25))
    box(ax, x[3] + 1.2, 4.3, 1.9, 1.1, "$+\\,\\delta$", c)
    arrow(ax, (x[3] + 2.15, 4.3), (x[3] + 2.0, 3.4))
    ax.annotate("", xy=(x[3] + 0.9, 2.2), xytext=(x[6] + 1.8, 2.2),
                arrowprops=dict(arrowstyle="-|>", color=c, lw=1.5))
    ax.text(x[4] - 0.2, 1.5, "gradient: head back to layer $k$ only", fontsize=10, color=c)
    ax.text(x[0], 1.5, "below $k$: forward only,\nno activations kept", fontsize=10,
            color="#444", va="top")
    ax.text(x[3] + 3.3, 4.85, "$\\delta$: one value per channel and position of layer $k$'s "
            "output", fontsize=10, va="center", color="#444")
    return fig


if __name__ == "__main__":
    set_style()
    for name, draw in [("msvp", msvp), ("insvp", insvp), ("ap", ap)]:
        fig = draw()
        # SVG for the web pages, PDF for the LaTeX build (`make pdf`); no dates: reproducible
        for suffix, metadata in [(".svg", {"Date": None}), (".pdf", {"CreationDate": None})]:
            out = HERE / f"schematic_{name}{suffix}"
            fig.savefig(out, bbox_inches="tight", metadata=metadata)
            print(f"wrote {out}")
