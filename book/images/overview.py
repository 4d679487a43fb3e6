"""Draws book/images/overview.svg, the course's overview figure (the intro shows it).

    python book/images/overview.py

A frozen backbone as a row of stages, and for each method of the course where its learnable
numbers sit (orange) and how far back its gradient has to travel (the bar under the row).
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch, Rectangle  # noqa: E402

from vplib.plots import METHOD_COLOURS, set_style  # noqa: E402

STAGES = ["image", "stem", "block 1", "block 2", "· · ·", "block M", "head"]
# method: (label, chapter, stages holding learnable numbers, first stage the gradient reaches)
METHODS = [
    ("linear", "linear probe · 01", [6], 6),
    ("bias", "bias + norm tuning · 08", [1, 2, 3, 5, 6], 1),
    ("vp-pad", "VP: a pixel frame · 02", [0, 6], 0),
    ("msvp", "MSVP: multi-scale maps · 04", [0, 6], 0),
    ("insvp", "InsVP: prompts from the image · 05", [0, 2, 3, 5, 6], 0),
    ("vpt-shallow", "VPT-shallow: tokens at block 1 · 03", [2, 6], 2),
    ("vpt-deep", "VPT-deep: tokens at every block · 03", [2, 3, 5, 6], 2),
    ("ap", "AP: a shift of one layer · 06", [3, 6], 3),
    ("full", "full fine-tuning · 01", [1, 2, 3, 5, 6], 1),
]


def draw():
    set_style()
    w, gap = 1.25, 0.15
    x = [i * (w + gap) for i in range(len(STAGES))]
    fig, ax = plt.subplots(figsize=(8, 5.4))
    top = len(METHODS) + 0.6
    for xi, label in zip(x, STAGES):
        frozen = label not in ("image", "head", "· · ·")
        ax.add_patch(FancyBboxPatch((xi, top), w, 0.9, boxstyle="round,pad=0.03",
                                    facecolor="#dfe7f2" if frozen else "#f2f2f2",
                                    edgecolor="#555", lw=0.8))
        ax.text(xi + w / 2, top + 0.45, label, ha="center", va="center", fontsize=10)
    ax.text(x[2] - 0.1, top + 1.15, "frozen backbone (blue): never updated", fontsize=10,
            color="#3b5b86")
    for row, (method, label, where, reach) in enumerate(METHODS):
        y = len(METHODS) - 1 - row
        colour = METHOD_COLOURS[method]
        ax.text(-0.2, y + 0.35, label, ha="right", va="center", fontsize=10)
        # the gradient's extent: from the head back to the first stage it must reach
        ax.add_patch(Rectangle((x[reach], y + 0.28), x[-1] + w - x[reach], 0.14,
                               facecolor=colour, alpha=0.25, edgecolor="none"))
        for stage in where:
            if STAGES[stage] == "· · ·":
                continue
            ax.add_patch(Rectangle((x[stage] + 0.2, y + 0.1), w - 0.4, 0.5, facecolor=colour,
                                   edgecolor="#333", lw=0.6))
    ax.text(x[0], -0.75, "squares: where the learnable numbers sit;  band: how far back the "
            "gradient must go\n(the backward pass, and the activations it keeps, cover the band)",
            fontsize=10, va="center", color="#444")
    ax.set_xlim(-5.4, x[-1] + w + 0.1)
    ax.set_ylim(-1.2, top + 1.5)
    ax.set_axis_off()
    return fig


if __name__ == "__main__":
    fig = draw()
    # SVG for the web pages, PDF for the LaTeX build (`make pdf`); no dates: reproducible files
    for suffix, metadata in [(".svg", {"Date": None}), (".pdf", {"CreationDate": None})]:
        out = Path(__file__).with_name("overview" + suffix)
        fig.savefig(out, bbox_inches="tight", metadata=metadata)
        print(f"wrote {out}")
