"""The helpers chapters 05 and 06 call: vplib.plots figures and vplib.checks.prompt_vs_shift."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from vplib import checks, plots
from vplib.backbones import Backbone
from vplib.prompts.activation import layer_names


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _pixels(ax) -> np.ndarray:
    return np.asarray(ax.get_images()[0].get_array())


def test_image_rows_draws_prompts_signed_on_one_scale_per_row():
    images = torch.rand(3, 3, 8, 8)
    prompt = torch.zeros(3, 3, 8, 8)
    prompt[0] = 1.0  # image 0 has the row's largest magnitude, image 1 a quarter of it
    prompt[1] = 0.25
    fig = plots.image_rows({"input": images, "prompt": prompt}, signed=["prompt"])
    axes = np.array(fig.axes).reshape(2, 3)
    assert np.allclose(_pixels(axes[0, 0]), images[0].permute(1, 2, 0).numpy())
    assert np.allclose(_pixels(axes[1, 0]), 1.0)  # 0.5 + 1 / (2 * 1)
    assert np.allclose(_pixels(axes[1, 1]), 0.625)  # 0.5 + 0.25 / 2: same scale as image 0
    assert np.allclose(_pixels(axes[1, 2]), 0.5)  # zero is mid-grey
    assert axes[1, 0].get_ylabel() == "prompt"


def test_image_rows_can_scale_each_panel_on_its_own():
    prompt = torch.zeros(2, 3, 4, 4)
    prompt[0], prompt[1] = 1.0, 0.25
    fig = plots.image_rows({"p": prompt}, signed=["p"], row_scale=False, suptitle="t")
    assert np.allclose(_pixels(fig.axes[1]), 1.0)  # 0.25 is its own panel's maximum
    assert fig._suptitle.get_text() == "t"


def test_token_heatmaps_share_one_symmetric_scale():
    tokens = torch.zeros(2, 4, 5)
    tokens[0, 0, 0], tokens[1, 1, 1] = 2.0, -0.5
    fig = plots.token_heatmaps(tokens, ["a", "b"], suptitle="tokens")
    assert len(fig.axes) == 2
    for ax, title in zip(fig.axes, "ab"):
        image = ax.get_images()[0]
        assert image.get_clim() == (-2.0, 2.0)
        assert ax.get_title() == title
    assert fig.axes[0].get_ylabel() == "token"
    assert list(fig.axes[0].get_yticks()) == [0, 3]  # the first and the last token
    plt.close(fig)
    fig = plots.token_heatmaps(torch.zeros(5, 4, 5), list("abcde"))  # at most 3 per row
    assert [ax.get_visible() for ax in fig.axes] == [True] * 5 + [False]
    assert fig.axes[3].get_ylabel() == "token"  # the first panel of the second row
    plt.close(fig)
    fig = plots.token_heatmaps(torch.zeros(4, 4, 5), list("abcd"))
    assert len(fig.axes) == 4 and fig.axes[2].get_ylabel() == "token"  # 2 x 2
    plt.close(fig)


def test_sweep_panels_one_panel_per_setting_sorted_with_the_default_marked():
    sweeps = pd.DataFrame({"setting": ["a", "a", "a", "b", "b"], "value": [3, 1, 2, 0.1, 0.01],
                           "test_acc": [0.3, 0.1, 0.2, 0.5, 0.4],
                           "val_acc": [0.35, 0.15, 0.25, 0.55, 0.45]})
    fig = plots.sweep_panels(sweeps, {"a": 2, "b": 0.1}, {"a": "A", "b": "B"}, log=["b"])
    axes = fig.axes
    assert len(axes) == 3 and not axes[2].axison  # two settings in a 1 x 3 grid
    test_line = axes[0].get_lines()[0]
    assert list(test_line.get_xdata()) == [1, 2, 3]
    assert np.allclose(test_line.get_ydata(), [10, 20, 30])  # percent
    assert axes[0].get_lines()[2].get_xdata()[0] == 2  # the default
    assert axes[1].get_xscale() == "log" and axes[0].get_xscale() == "linear"
    assert axes[0].get_xlabel() == "A"


def test_labelled_points_annotates_every_point_and_colours_the_highlighted():
    points = pd.DataFrame({"dataset": ["x", "x", "y"], "setting": ["p", "q", "p"],
                           "method": ["insvp", "linear", "insvp"], "n_params": [10, 100, 10],
                           "mean": [0.5, 0.6, 0.7], "sd": [0.01, np.nan, 0.02]})
    fig = plots.labelled_points(points, x="n_params", panels={"x": "X", "y": "Y"},
                                names={"q": "the probe"}, highlight=lambda r: r.method == "insvp")
    ax_x, ax_y = fig.axes
    assert sorted(t.get_text() for t in ax_x.texts) == ["p", "the probe"]
    assert [t.get_text() for t in ax_y.texts] == ["p"]
    assert ax_x.get_xscale() == "log" and ax_x.get_title() == "X"


def test_cost_curves_and_layer_sweep_draw_each_backbone():
    costs = pd.DataFrame({"backbone": ["a", "a", "a"], "layer": ["l1", "l2", "input"],
                          "relative depth": [0.5, 1.0, 0.0], "saved MB": [2.0, 1.0, 3.0],
                          "step ms": [5.0, 4.0, 6.0], "forward ms": [np.nan, np.nan, 2.0]})
    fig = plots.cost_curves(costs, {"a": "A"}, title="cost")
    ax_mem, ax_time = fig.axes[:2]
    assert list(ax_mem.get_lines()[0].get_ydata()) == [2.0, 1.0]
    assert len(ax_time.get_lines()) == 3  # AP, VP and the forward pass alone
    sweep = pd.DataFrame({"backbone": ["a", "a"], "dataset": ["d", "d"], "depth": [1.0, 0.5],
                          "test_acc": [0.8, 0.9], "val_acc": [0.7, 0.95], "se": [0.01, 0.01]})
    fig = plots.layer_sweep(sweep, {("a", "d"): {"linear": 0.5, "vp": 0.6}},
                            panels={"d": "D"}, labels={"a": "A"})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert sorted(labels) == ["AP per position · A", "VP (input) · A", "linear probe · A"]


class _Tiny(nn.Module):
    """A CNN with a `features` stage list: BatchNorm last (exact), ReLU last (not)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)),
            nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()))
        self.classifier = nn.Linear(4, 5)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


def _tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    model = _Tiny()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so the ReLU clips
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return Backbone("tiny", model, mean=(0.5,) * 3, std=(0.25,) * 3, input_size=8,
                    crop_pct=1.0, interpolation="bilinear", class_names=None, source="test")


def test_prompt_vs_shift_is_exact_after_a_batchnorm_and_not_after_a_relu():
    backbone = _tiny_backbone()
    assert layer_names(backbone, "stages") == ["features.0", "features.1"]
    images = torch.rand(4, 3, 8, 8)
    v = 3 * torch.randn(4)
    before = checks.snapshot(backbone)
    exact, scale = checks.prompt_vs_shift(backbone, images, v, at="features.0",
                                          shift="features.0.1.bias")
    assert exact < 1e-5 * scale
    clipped, _ = checks.prompt_vs_shift(backbone, images, v, at="features.1",
                                        shift="features.1.1.bias")
    assert clipped > 1e-3 * scale  # the ReLU after the BatchNorm breaks the identity
    hooked, _ = checks.prompt_vs_shift(backbone, images, v, at="features.1.1",
                                       shift="features.1.1.bias", hook=True)
    assert hooked < 1e-5 * scale  # a plain hook right after the BatchNorm: exact again
    checks.assert_unchanged(backbone, before)
    assert not any(m._forward_hooks for m in backbone.modules())  # no hook left behind


def test_ablation_panels_put_ours_and_the_reported_numbers_on_the_same_steps():
    steps = ["none", "+ patch", "+ global"]
    ours = {"MNIST": pd.DataFrame({"mean": [0.5, 0.7], "sd": [0.01, None]},
                                  index=["none", "+ global"])}  # "+ patch" was not run
    reported = pd.DataFrame({"CUB": [85.3, 87.1, 87.9]}, index=steps)
    fig = plots.ablation_panels(ours, reported, steps, titles=("ours", "reported"))
    left, right = fig.axes
    y = np.asarray(left.lines[0].get_ydata(), dtype=float)
    np.testing.assert_allclose(y[[0, 2]], [50.0, 70.0])
    assert np.isnan(y[1])  # a step that was not run is a gap, not a zero
    np.testing.assert_allclose(right.lines[0].get_ydata(), [85.3, 87.1, 87.9])
    assert [t.get_text() for t in right.get_xticklabels()] == steps
    assert [ax.get_title() for ax in fig.axes] == ["ours", "reported"]
    plt.close(fig)
