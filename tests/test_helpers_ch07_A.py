"""Figure helpers of chapter 07 and appendix A: panel grids with overlays, embeddings, curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from vplib import plots


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_panel_grid_draws_images_overlays_and_labels():
    images = torch.rand(3, 3, 28, 28)
    gray = (torch.rand(2, 1, 28, 28) * 255).to(torch.uint8)
    heat = np.zeros((7, 7))
    heat[2, 3] = 1.0
    fig = plots.panel_grid({"rgb": images, "gray": gray, "overlay": list(zip(images, [heat] * 3))},
                           titles=["a", "b", "c"], suptitle="grid")
    axes = np.array(fig.axes).reshape(3, 3)
    assert [ax.get_title() for ax in axes[0]] == ["a", "b", "c"]
    assert [ax.get_ylabel() for ax in axes[:, 0]] == ["rgb", "gray", "overlay"]
    assert fig._suptitle.get_text() == "grid"
    # an image tensor becomes one image; a (C=1) uint8 tensor is drawn in grey in [0, 1]
    (rgb,) = axes[0, 0].get_images()
    assert rgb.get_array().shape == (28, 28, 3)
    (g,) = axes[1, 0].get_images()
    assert g.get_array().shape == (28, 28) and g.get_cmap().name == "gray"
    assert np.allclose(g.get_array(), gray[0, 0].numpy() / 255)
    # an (image, heat) pair draws the map over the whole image at its own resolution
    _, over = axes[2, 0].get_images()
    assert over.get_array().shape == (7, 7) and over.get_alpha() == 0.5
    assert over.get_extent() == [-0.5, 27.5, 27.5, -0.5]
    assert over.get_interpolation() == "nearest"
    # the short row's missing place is left empty
    assert not axes[1, 2].axison and not axes[1, 2].get_images()


def test_panel_grid_heat_colours_and_signed_arrays():
    p = plots.signed_image(torch.randn(3, 8, 8))
    fig = plots.panel_grid({"": [p, (torch.rand(3, 8, 8), np.ones((2, 2)))]}, heat_cmap="magma",
                           alpha=0.6)
    first, second = fig.axes
    assert np.allclose(first.get_images()[0].get_array(), p)
    over = second.get_images()[1]
    assert over.get_cmap().name == "magma" and over.get_alpha() == 0.6
    assert first.get_title() == ""


def test_embedding_panels_colour_points_by_class():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 0, 1, 2, 2])
    points = {"A": rng.normal(size=(7, 2)), "B": rng.normal(size=(7, 2))}
    fig = plots.embedding_panels(points, labels, ["x", "y", "z"], titles=["first", "second"],
                                 suptitle="t-SNE")
    ax_a, ax_b = fig.axes[:2]
    assert ax_a.get_title() == "first" and ax_b.get_title() == "second"
    sizes = [len(c.get_offsets()) for c in ax_a.collections]
    assert sizes == [2, 2, 3]  # one scatter per class, with that class's points
    assert np.allclose(ax_a.collections[2].get_offsets(), points["A"][labels == 2])
    legend = ax_b.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == ["x", "y", "z"]
    assert ax_a.get_legend() is None
    # default titles are the names
    fig = plots.embedding_panels(points, labels, ["x", "y", "z"])
    assert [ax.get_title() for ax in fig.axes[:2]] == ["A", "B"]


def test_line_panels_series_reference_lines_and_labels():
    fig = plots.line_panels(
        {"mnist": {"run": [0.5, 0.6, 0.7], "pairs": ([2, 4], [0.1, 0.2])}, "fashion": {"run": [1]}},
        hlines={"mnist": {"probe": 0.65}}, vline=2, ylabel="acc", xlabel="step", suptitle="s")
    ax, ax2 = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["run"].get_xdata()) == [1, 2, 3]  # a sequence is drawn against 1, 2, ...
    assert list(lines["pairs"].get_xdata()) == [2, 4]   # an (x, y) pair as given
    assert list(lines["probe"].get_ydata()) == [0.65, 0.65]
    assert "probe" not in [line.get_label() for line in ax2.get_lines()]
    verticals = [line for line in ax2.get_lines() if list(line.get_xdata()) == [2, 2]]
    assert len(verticals) == 1  # the vline is on every panel
    assert ax.get_ylabel() == "acc" and ax2.get_ylabel() == "" and ax2.get_xlabel() == "step"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["run", "pairs", "probe"]
    assert [a.get_title() for a in fig.axes] == ["mnist", "fashion"]
