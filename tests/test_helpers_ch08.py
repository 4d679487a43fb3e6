"""Chapter 08's helpers: Welch's test, every method against the best, accuracy-versus-cost plot."""

from __future__ import annotations

import math

import matplotlib
import pandas as pd
import pytest
from scipy import stats

from vplib import plots, tables

matplotlib.use("Agg")


def _frame():
    rows = []
    accs = {("a", "linear"): [0.80, 0.81, 0.79], ("a", "full"): [0.90, 0.91, 0.89],
            ("a", "vp"): [0.88, 0.93, 0.83], ("a", "ap"): [0.70],
            ("b", "linear"): [0.60, 0.62, 0.61], ("b", "full"): [0.55, 0.56, 0.54]}
    for (dataset, method), values in accs.items():
        rows += [{"dataset": dataset, "method": method, "seed": s, "test_acc": v}
                 for s, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_welch_p_matches_scipy_and_handles_degenerate_cases():
    a, b = [0.80, 0.81, 0.79], [0.88, 0.93, 0.83]
    assert tables.welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    assert tables.welch_p(a, b) != pytest.approx(stats.ttest_ind(a, b).pvalue)  # not Student's
    assert math.isnan(tables.welch_p(a, [0.9]))
    assert tables.welch_p([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert tables.welch_p([0.5, 0.5], [0.6, 0.6]) == 0.0


def test_against_best_verdicts_gaps_and_order():
    out = tables.against_best(_frame(), "dataset").set_index(["dataset", "method"])
    assert list(out.index) == [("a", "linear"), ("a", "full"), ("a", "vp"), ("a", "ap"),
                               ("b", "linear"), ("b", "full")]
    assert out.verdict["a", "full"] == "best" and out.verdict["b", "linear"] == "best"
    assert out.verdict["a", "linear"] == "below the best"  # 10 points, tight seeds
    assert out.verdict["a", "vp"] == "not resolved from the best"  # 2 points, noisy seeds
    assert out.verdict["a", "ap"] == "too few seeds" and math.isnan(out.sd["a", "ap"])
    assert out.verdict["b", "full"] == "below the best"
    assert out.gap["a", "linear"] == pytest.approx(0.10)
    assert out.gap["a", "full"] == 0 and out.n["a", "vp"] == 3
    assert out.sd["a", "vp"] == pytest.approx(0.05)
    assert out.p["a", "vp"] == pytest.approx(tables.welch_p([0.90, 0.91, 0.89],
                                                            [0.88, 0.93, 0.83]))
    strict = tables.against_best(_frame(), ["dataset"], alpha=1e-9)
    assert (strict.verdict == "below the best").sum() == 0
    with pytest.raises(ValueError, match="no rows"):
        tables.against_best(_frame().iloc[:0], "dataset")


def test_accuracy_against_cost_draws_one_point_per_row():
    summary = pd.DataFrame([
        {"backbone": bb, "dataset": ds, "method": m, "test_acc_mean": acc,
         "test_acc_sd": sd, "trainable_params": n}
        for bb in ("vit", "cnn") for ds in ("mnist", "shapes")
        for m, acc, sd, n in (("linear", 0.5, 0.01, 100), ("full", 0.7, float("nan"), 10_000))])
    fig = plots.accuracy_against_cost(
        summary, "trainable_params", panels={"vit": "ViT", "cnn": "CNN"},
        names={"linear": "linear probe", "full": "full fine-tuning"},
        datasets={"mnist": "MNIST", "shapes": "shapes"},
        colours={"linear": "#8c8c8c", "full": "#222222"}, xlabel="params", title="t",
        note="head only")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["ViT", "CNN"]
    assert all(ax.get_xscale() == "log" for ax in axes)
    assert all(len(ax.containers) == 4 for ax in axes)  # one errorbar per (dataset, method)
    assert [t.get_text() for t in axes[0].texts] == ["head only"]
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["linear probe", "full fine-tuning", "MNIST", "shapes"]
    matplotlib.pyplot.close(fig)


def _tuned(method, lr, seed, chosen, *, lrs=(0.01, 0.04), stopped=True, epochs=12, cap=60):
    return {"dataset": "d", "backbone": "b", "method": method, "seed": seed, "best_epoch": 5,
            "stopped_early": stopped, "epochs_run": epochs, "fit": {"epochs": cap, "lr": lr},
            "lr_selection": {"lrs": list(lrs), "val_acc": [0.5, 0.6][:len(lrs)],
                             "chosen": chosen, "extended": 0, "at_edge": True,
                             "selected": lr == chosen}}


def test_tuned_grid_tables_report_the_choice_and_how_runs_ended():
    records = [_tuned("linear", 0.01, 0, 0.04), _tuned("linear", 0.04, 0, 0.04),
               _tuned("linear", 0.04, 1, 0.04, stopped=False, epochs=60),
               _tuned("full", 0.001, 0, 0.001, lrs=(0.001,), stopped=False, epochs=20)]
    assert [r["lr_selection"]["selected"] for r in tables.selected(records)] == [True] * 3
    assert len(tables.selected([{"method": "untuned"}])) == 1
    choices = tables.lr_choices(records)
    assert choices.method.tolist() == ["linear", "full"]
    assert choices.chosen.tolist() == [0.04, 0.001] and choices.seeds.tolist() == [2, 1]
    ended = tables.convergence(records)
    assert ended.runs[0] == 4 and ended.stopped[0] == 2 and ended.capped[0] == 1
    assert ended.stopped_pct[0] == 50 and ended.epochs_max[0] == 60
    per = tables.convergence(records, by=["method"]).set_index("method")
    assert per.stopped_pct["linear"] == pytest.approx(200 / 3) and per.capped["full"] == 0
    stale = _tuned("linear", 0.16, 1, 0.16, lrs=(0.01, 0.04, 0.16))
    with pytest.raises(ValueError, match="disagree"):
        tables.lr_choices(records + [stale])
    with pytest.raises(ValueError, match="not tuned"):
        tables.lr_choices([{"dataset": "d"}])
