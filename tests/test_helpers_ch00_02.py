"""The figure helpers of chapters 00-02 (vplib.plots): what they draw, read back from the axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import vplib  # noqa: E402
from vplib import plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_photo_predictions_print_the_top_k_of_each_photo():
    photos = {f"photo {i}": np.full((8, 12, 3), 40 * i, dtype=np.uint8) for i in range(3)}
    predictions = [[("cat", 0.7), ("dog", 0.2), ("fox", 0.05), ("owl", 0.01)],
                   [("cup", 0.99), ("bowl", 0.004), ("pot", 0.001)],
                   [("kite", 0.5), ("bird", 0.3), ("plane", 0.1)]]
    fig = plots.photo_predictions(photos, predictions, k=2, ncols=2, suptitle="top-2")
    axes = fig.axes
    assert len(axes) == 4  # a 2 x 2 grid for three photos; the spare one stays empty
    assert [ax.get_title() for ax in axes[:3]] == list(photos)
    assert axes[0].texts[0].get_text() == "70.0%  cat\n20.0%  dog"  # k=2: the owl is left out
    assert axes[1].texts[0].get_text() == "99.0%  cup\n 0.4%  bowl"
    assert not axes[3].images and not axes[3].texts
    assert fig._suptitle.get_text() == "top-2"


def test_value_heatmaps_annotate_every_cell_and_share_one_colour_bar():
    values = torch.tensor([[0.9, 0.1, 0.6], [0.0, 0.59, 1.0]])
    fig = plots.value_heatmaps({"a": values, "b": 1 - values}, [224, 64, 32], ["x", "y"],
                               xlabel="size", label="p")
    panel_a, panel_b, colour_bar = fig.axes
    assert (panel_a.get_title(), panel_b.get_title()) == ("a", "b")
    assert np.allclose(panel_a.images[0].get_array(), values.numpy())
    texts = {t.get_text(): t.get_color() for t in panel_a.texts}
    assert len(panel_a.texts) == 6
    assert texts["0.90"] == "black" and texts["0.60"] == "black"  # at or above light_from
    assert texts["0.10"] == "white" and texts["0.59"] == "white"
    assert [t.get_text() for t in panel_a.get_xticklabels()] == ["224", "64", "32"]
    assert [t.get_text() for t in panel_a.get_yticklabels()] == ["x", "y"]
    assert colour_bar.get_ylabel() == "p"


def test_accuracy_bars_one_panel_per_group_in_frame_order():
    frame = pd.DataFrame({"dataset": ["mnist", "mnist", "animals"],
                          "setting": ["probe", "full", "probe"],
                          "test_acc": [0.93, 0.985, 0.9], "train_seconds": [7.4, 55.8, 12.0]})
    fig = plots.accuracy_bars(frame, panel="dataset", chance=0.1,
                              note=lambda row: f"{row.train_seconds:.0f} s")
    mnist, animals = fig.axes
    assert (mnist.get_title(), animals.get_title()) == ("mnist", "animals")
    widths = [bar.get_width() for bar in mnist.patches]
    assert widths == pytest.approx([93.0, 98.5])
    labels = [t.get_text() for t in mnist.texts]
    assert "93.0% · 7 s" in labels and "98.5% · 56 s" in labels and "chance" in labels
    assert [t.get_text() for t in mnist.get_yticklabels()] == ["probe", "full"]
    assert mnist.yaxis_inverted()  # the frame's first row on top
    chance_line = [line for line in mnist.lines if line.get_linestyle() == "--"]
    assert chance_line and chance_line[0].get_xdata()[0] == pytest.approx(10.0)
    single = plots.accuracy_bars(frame.iloc[:1])  # no panel: one axes, the value alone
    assert len(single.axes) == 1 and [t.get_text() for t in single.axes[0].texts] == ["93.0%"]


def test_signed_images_draw_each_map_with_zero_at_mid_grey():
    maps = {"first": torch.tensor([[[-1.0, 0.0, 1.0]]]).repeat(3, 1, 1),
            "second": torch.zeros(3, 2, 2)}
    fig = plots.signed_images(maps, suptitle="prompts")
    assert [ax.get_title() for ax in fig.axes] == ["first", "second"]
    first = fig.axes[0].images[0].get_array()
    assert first.shape == (1, 3, 3)
    assert np.allclose(first[0, :, 0], [0.0, 0.5, 1.0])
    assert np.allclose(fig.axes[1].images[0].get_array(), 0.5)


def test_amplified_prompt_scales_a_copy_and_leaves_the_model_alone():
    model = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4)
    with torch.no_grad():
        model.input_prompt.top.fill_(0.01)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    louder = plots.amplified_prompt(model, 5.0)
    assert torch.allclose(louder.input_prompt.prompt(), 5.0 * model.input_prompt.prompt())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    faint = plots.prompted_inputs(model, images)
    strong = plots.prompted_inputs(louder, images)
    assert (strong[:, :, :4] - faint[:, :, :4]).abs().min() > 0  # the frame shows more
    assert torch.equal(strong[:, :, 4:-4, 4:-4], faint[:, :, 4:-4, 4:-4])  # the centre does not
    with pytest.raises(ValueError, match="no input prompt"):
        plots.amplified_prompt(vplib.build("linear", "mobilenet_v2", 10), 2.0)


def test_accuracy_and_cost_plots_both_series_on_their_axes():
    fig = plots.accuracy_and_cost([2, 4, 8], [0.9, 0.92, 0.915], [1488, 2880, 5376],
                                  xlabel="frame width", title="sweep")
    left, right = fig.axes
    assert np.allclose(left.lines[0].get_ydata(), [90.0, 92.0, 91.5])
    assert np.allclose(right.lines[0].get_ydata(), [1.488, 2.88, 5.376])
    assert left.get_title() == "sweep" and left.get_xlabel() == "frame width"
    assert right.get_ylabel() == "trainable parameters (thousands)"
    assert len(fig.legends) == 1
