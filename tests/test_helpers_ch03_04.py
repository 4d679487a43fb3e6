"""Helpers that chapters 03 and 04 call: binomial_se, styled, paired_table and three figures."""

from __future__ import annotations

import types

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from vplib import plots, tables  # noqa: E402
from vplib.prompts.msvp import MultiScalePrompt  # noqa: E402


def _record(method, seed, acc, dataset="mnist", backbone="msvp_cnn", **options):
    return {"dataset": dataset, "backbone": backbone, "method": method, "seed": seed,
            "options": options, "fit": {"lr": 1e-3, "epochs": 5, "batch_size": 128},
            "test_acc": acc, "val_acc": acc, "best_epoch": 4, "n_train": 3600,
            "n_test": 1000, "trainable_params": 1000 + 81 * (method == "msvp"),
            "backbone_params": 100_000, "seconds_per_epoch": 3.0}


def test_binomial_se_scalars_and_series():
    assert tables.binomial_se(0.5, 100) == pytest.approx(0.05)
    assert tables.binomial_se(1.0, 10) == 0
    numpy_scalar = tables.binomial_se(np.float32(0.9), np.int64(100))
    assert type(numpy_scalar) is float and numpy_scalar == pytest.approx(0.03)  # glue-able
    se = tables.binomial_se(pd.Series([0.9, 0.5]), pd.Series([100, 400]))
    assert se.tolist() == pytest.approx([0.03, 0.025])


def test_styled_formats_known_columns_and_hides_the_index():
    frame = tables.records_frame([_record("full", 0, 0.9734), _record("msvp", 0, 0.979)],
                                 setting=None, train_seconds=lambda r: 21.4)
    html = tables.styled(frame, ["method", "trainable_params", "test_acc", "train_seconds"],
                         method="[{}]").to_html()
    for text in ("97.3%", "97.9%", "1,081", "21", "[msvp]"):
        assert text in html, text
    assert "0.9734" not in html and "val_acc" not in html
    assert "trainable params" in html and "train time (s)" in html and "test_acc" not in html
    with pytest.raises(KeyError):
        tables.styled(frame, ["no such column"])


def test_paired_table_cells_differences_and_order():
    accs = {"full": [0.970, 0.980, 0.975], "msvp": [0.975, 0.990, 0.970]}
    records = [_record(m, s, a) for m, seeds in accs.items() for s, a in enumerate(seeds)]
    records += [_record(m, s, a, dataset="fashion_mnist")
                for m, a in (("full", 0.85), ("msvp", 0.86)) for s in (0,)]
    frame = tables.records_frame(records)
    table = tables.paired_table(frame, "msvp", "full", column="method",
                                by=["backbone", "dataset"], labels={"msvp": "MSVP"}, digits=2)
    assert list(table.columns) == ["backbone", "dataset", "MSVP", "full", "n", "MSVP - full",
                                   "p", "verdict"]
    assert list(table.dataset) == ["mnist", "fashion_mnist"]  # first-seen order
    mnist = table.iloc[0]
    diffs = np.subtract(accs["msvp"], accs["full"])
    mean, sd = 100 * np.mean(accs["msvp"]), 100 * np.std(accs["msvp"], ddof=1)
    assert mnist["MSVP"] == f"{mean:.2f} ± {sd:.2f}"
    assert mnist["MSVP - full"] == f"{100 * diffs.mean():+.2f} ± {100 * diffs.std(ddof=1):.2f}"
    assert mnist["n"] == 3 and mnist["verdict"] == "not resolved"  # the seeds disagree in sign
    single = table.iloc[1]  # one seed: no sd, no test
    assert single["MSVP - full"] == "+1.00" and single["MSVP"] == "86.00" and np.isnan(single["p"])


def test_vpt_sequence_figure_draws_both_variants():
    fig = plots.vpt_sequence_figure(depth=6, n_patches=49)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["VPT-shallow: $Ld$ prompt parameters", "VPT-deep: $MLd$ prompt parameters"]
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert "49 patch tokens (+ position)" in texts and texts.count("✕") == 3
    assert "block 2 (frozen), and so on to block 6" in texts
    assert "✕" not in [t.get_text() for t in fig.axes[0].texts]
    plt.close(fig)


def test_length_sweep_figure_plots_the_grid():
    records = [_record(m, 0, 0.5 + 0.01 * n, backbone="vit_fashion", length=n)
               for m in ("vpt-shallow", "vpt-deep") for n in (1, 5, 10, 25)]
    records += [_record("linear", 0, 0.59, backbone="vit_fashion"),
                _record("vp-pad", 0, 0.62, backbone="vit_fashion", prompt_size=4),
                _record("linear", 0, 0.63, dataset="animal_silhouettes", backbone="vit_fashion")]
    runs = tables.records_frame(records, length=lambda r: r["options"].get("length"))
    runs["se"] = tables.binomial_se(runs.test_acc, runs.n_test)
    fig = plots.length_sweep_figure(runs, dataset="mnist")
    sweep_ax, params_ax = fig.axes
    assert sweep_ax.get_title() == "MNIST-5k: prompt length sweep"
    labels = sweep_ax.get_legend_handles_labels()[1]
    assert set(labels) == {"vpt-shallow", "vpt-deep", "linear", "vp-pad prompt_size=4"}
    ticks = [t.get_text() for t in sweep_ax.get_xticklabels()]
    assert ticks == ["1", "5", "10", "25"]
    assert [t.get_text() for t in params_ax.get_xticklabels()] == ["1k"]  # only ticks inside the data
    assert params_ax.get_legend_handles_labels()[1][:2] == ["mnist", "animal_silhouettes"]
    assert "5 epochs" in fig._suptitle.get_text()
    plt.close(fig)


def test_attention_shares_figure_stacks_the_class_tokens_shares():
    blocks = pd.Index([0, 1, 2], name="block")
    none = pd.DataFrame({"cls → cls": [0.5, 0.4, 0.3], "cls → prompts": 0.0,
                         "cls → patches": [0.5, 0.6, 0.7], "patches → prompts": 0.0}, index=blocks)
    prompted = pd.DataFrame({"cls → cls": [0.2, 0.2, 0.1], "cls → prompts": [0.6, 0.3, 0.1],
                             "cls → patches": [0.2, 0.5, 0.8], "patches → prompts": [0.4, 0.2, 0.1]},
                            index=blocks)
    fig = plots.attention_shares_figure({"no prompts": none, "VPT-deep": prompted},
                                        uniform=0.05, length=10, title="attention")
    bare, deep = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["no prompts", "VPT-deep"]
    assert len(bare.lines) == 0 and len(deep.lines) == 2  # the patch-token line and the uniform share
    tops = [bar.get_y() + bar.get_height() for bar in deep.patches]
    np.testing.assert_allclose(tops[-3:], [1.0, 1.0, 1.0])  # the three shares stack to 1
    np.testing.assert_allclose([bar.get_height() for bar in deep.patches[:3]], [0.6, 0.3, 0.1])
    assert deep.get_ylim() == (0, 1)
    plt.close(fig)


def test_msvp_maps_figure_one_row_per_model():
    prompts = {"frozen": (types.SimpleNamespace(input_prompt=MultiScalePrompt(3)), 64),
               "scratch": (types.SimpleNamespace(
                   input_prompt=MultiScalePrompt(3, scales=("global", "mid"))), 28)}
    fig = plots.msvp_maps_figure(prompts)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(fig.axes) == 8  # 2 rows x (3 scales + mean)
    assert titles[0].startswith("frozen: global") and titles[3].startswith("frozen: mean (added)")
    assert titles[6].startswith("scratch: mean (added)") and titles[7] == ""  # a spare panel
    assert fig.axes[0].get_images()[0].get_array().shape == (64, 64, 3)
    plt.close(fig)
