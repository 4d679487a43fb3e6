"""The book's figure rules: at most MAX_WIDTH inches, text at least MIN_FONT pt, sharp PNGs shown
at their size, one colour per method."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from vplib import plots  # noqa: E402


def test_a_wide_figure_with_small_text_is_fitted_to_the_column():
    fig, ax = plt.subplots(figsize=(13, 4))
    ax.set_title("small", fontsize=7)
    ax.plot([0, 1])
    assert plots.fit_to_page(fig)
    width, height = fig.get_size_inches()
    assert width == pytest.approx(plots.MAX_WIDTH) and height == pytest.approx(4 * 8 / 13)
    assert ax.title.get_fontsize() == plots.MIN_FONT
    plt.close(fig)


def test_a_figure_that_already_fits_is_left_alone():
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.set_title("fine", fontsize=12)
    assert not plots.fit_to_page(fig)
    assert tuple(fig.get_size_inches()) == (6, 3) and ax.title.get_fontsize() == 12
    plt.close(fig)


def test_page_png_is_drawn_at_twice_the_size_it_is_shown():
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.plot([0, 1])
    data, meta = plots.page_png(fig)
    w, h = plots._png_size(data)
    shown = meta["width"], meta["height"]
    assert shown == (round(w / 2), round(h / 2))
    assert shown[0] <= plots.MAX_WIDTH * plots.DPI
    plt.close(fig)


def test_accuracy_bars_colour_each_method_alike_and_start_at_zero():
    frame = pd.DataFrame({"setting": ["a", "b", "c"], "method": ["linear", "vp-pad", "linear"],
                          "test_acc": [0.9, 0.8, 0.7]})
    fig = plots.accuracy_bars(frame)
    ax = fig.axes[0]
    colours = [matplotlib.colors.to_hex(bar.get_facecolor()) for bar in ax.patches]
    assert colours == [plots.METHOD_COLOURS[m] for m in frame.method]
    assert ax.get_xlim()[0] == 0
    assert fig.get_size_inches()[0] <= plots.MAX_WIDTH
    plt.close(fig)


def test_an_unknown_method_has_no_colour_and_says_where_to_add_one():
    with pytest.raises(KeyError, match="METHOD_COLOURS"):
        plots.method_colour("prompt-of-the-week")
