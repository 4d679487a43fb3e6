"""The helpers the chapters share: tables, checks, measurements, attention weights, live runs."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import torch.nn as nn

import vplib
from vplib import checks, measure, tables
from vplib.data import load_dataset


def _record(method, seed, acc, dataset="mnist", **options):
    return {"dataset": dataset, "backbone": "vit_distilled", "method": method, "seed": seed,
            "options": options, "fit": {"lr": 1e-2, "epochs": 4, "batch_size": 64},
            "test_acc": acc, "val_acc": acc + 0.01, "best_epoch": 3, "n_train": 1000,
            "n_test": 500, "trainable_params": 10, "backbone_params": 1000,
            "seconds_per_epoch": 2.0}


RECORDS = ([_record("linear", s, a) for s, a in enumerate([0.80, 0.82, 0.81])]
           + [_record("vpt-deep", s, a, length=10) for s, a in enumerate([0.85, 0.88, 0.86])])


def test_records_frame_mean_sd_and_lookups():
    frame = tables.records_frame(RECORDS)
    assert list(frame.setting.unique()) == ["linear", "vpt-deep length=10"]
    assert frame.trainable_pct.iloc[0] == pytest.approx(1.0)
    stats = tables.mean_sd(frame, "setting").set_index("setting")
    assert stats.loc["linear", "mean"] == pytest.approx(0.81)
    assert stats.loc["linear", "sd"] == pytest.approx(0.01)  # sample sd (ddof 1)
    assert stats.loc["linear", "cell"] == "81.0 ± 1.0"
    assert tables.format_mean_sd(0.5, float("nan"), 1) == "50.0"
    assert tables.pick(frame, setting="linear", seed=1) == pytest.approx(0.82)
    assert tables.mean_of(frame, "val_acc", method="vpt-deep") == pytest.approx(0.8733, abs=1e-4)
    with pytest.raises(LookupError, match="3 rows"):
        tables.pick(frame, setting="linear")
    with pytest.raises(LookupError, match="no rows"):
        tables.mean_of(frame, method="ap")
    with pytest.raises(KeyError, match="no column"):
        tables.pick(frame, lenght=10)
    with pytest.raises(ValueError, match="no records"):
        tables.records_frame([])


def test_paired_differences_and_verdicts():
    frame = tables.records_frame(RECORDS)
    out = tables.paired_differences(frame, "vpt-deep length=10", "linear").iloc[0]
    assert out["diff"] == pytest.approx(0.0533, abs=1e-4) and out["n"] == 3
    assert out["diff_sd"] == pytest.approx(pd.Series([0.05, 0.06, 0.05]).std())
    assert out["p"] < 0.05 and out["verdict"] == "vpt-deep length=10 better"
    noisy = RECORDS[:3] + [_record("ap", s, a) for s, a in enumerate([0.90, 0.70, 0.83])]
    out = tables.paired_differences(tables.records_frame(noisy), "ap", "linear").iloc[0]
    assert out["verdict"] == "not resolved"
    single = tables.paired_differences(tables.records_frame(RECORDS[:1] + RECORDS[3:4]),
                                       "vpt-deep length=10", "linear").iloc[0]
    assert math.isnan(single["p"]) and single["verdict"] == "not resolved"
    with pytest.raises(ValueError, match="no seed has both"):
        tables.paired_differences(frame, "linear", "ap")


def test_provenance_lists_commands_commits_and_profiles():
    text = tables.provenance({"commands": ["python -m vplib.experiments --out x"],
                              "git_commits": ["abc"], "profiles": ["standard"]})
    assert text.splitlines() == ["$ python -m vplib.experiments --out x",
                                 "commit(s): abc · profile(s): standard"]


def test_chance_margin_and_backbone_snapshot():
    assert checks.chance_margin(900, 10) == pytest.approx(0.1 + 3 * 0.01)
    assert checks.beats_chance(0.131, 900, 10) and not checks.beats_chance(0.129, 900, 10)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    ref = checks.snapshot(net)
    checks.assert_unchanged(net, ref)
    net(torch.randn(4, 3))  # training-mode BatchNorm updates its running statistics
    assert checks.changed(net, ref) == ["1.num_batches_tracked", "1.running_mean", "1.running_var"]
    with pytest.raises(AssertionError, match="the backbone changed: 3 of 7"):
        checks.assert_unchanged(net, ref)


def test_seconds_per_call_mean_and_min_and_flops():
    calls = []
    assert measure.seconds_per_call(lambda: calls.append(1), 3) >= 0
    assert len(calls) == 4  # one warm-up call, then three timed
    assert measure.seconds_per_call(lambda: None, 2, reduce="min") >= 0
    with pytest.raises(ValueError, match="reduce"):
        measure.seconds_per_call(lambda: None, 2, reduce="median")
    with torch.device("meta"):
        layer, x = nn.Linear(8, 4), torch.empty(5, 8)
    assert measure.forward_flops(layer, x) == 2 * 5 * 8 * 4
    assert measure.bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert measure.bf16_peak("NVIDIA H200") == 989.4e12 and measure.bf16_peak("Tesla T4") is None


def test_attention_weights_are_the_ones_the_vit_uses():
    backbone = vplib.load("vit_distilled")
    vit = backbone.model
    x = torch.rand(3, 3, 28, 28)
    with torch.no_grad():
        weights, error = vplib.vit.attention_weights(vit, lambda: backbone(x))
    n = vit.patch_embed.num_patches + vit.num_prefix_tokens
    assert sorted(weights) == list(range(len(vit.blocks)))
    assert weights[0].shape == (3, vit.blocks[0].attn.num_heads, n, n)
    torch.testing.assert_close(weights[2].sum(-1), torch.ones(3, 4, n))
    assert error < 1e-4
    heads, _ = vplib.vit.attention_weights(vit, lambda: backbone(x), blocks=[1],
                                           reduce=lambda w: w.mean(1))
    assert list(heads) == [1] and heads[1].shape == (3, n, n)
    with pytest.raises(RuntimeError, match="did not call"):
        vplib.vit.attention_weights(vit, lambda: None)


def test_live_run_has_the_grid_record_schema():
    from vplib import experiments

    data = load_dataset("mnist", size=28, rgb=True, max_train=60, max_eval=40)
    run = experiments.live_run("linear", "vit_distilled", data, epochs=2, lr=1e-2, batch_size=32)
    rec = run.record
    opts = {"epochs": 2, "lr": 1e-2, "batch_size": 32}  # options hashed into the key, as a grid's
    assert rec["key"] == experiments.Run("linear", "vit_distilled", "mnist", 0, opts).key
    assert rec["fit"] == {"epochs": 2, "lr": 1e-2, "batch_size": 32}
    assert rec["test_acc"] == pytest.approx(vplib.evaluate(run.model, data.test)["acc"])
    assert rec["train_seconds"] > 0 and rec["image_size"] == 28
    assert tables.records_frame([rec]).setting.iloc[0] == "linear batch_size=32 epochs=2 lr=0.01"
    with pytest.raises(ValueError, match="load_dataset"):
        experiments.live_run("linear", "vit_distilled", data, max_train=10)
    with pytest.raises(ValueError, match="with model="):
        experiments.live_run("vp-pad", "vit_distilled", data, model=run.model, prompt_size=3)


def test_live_run_seeds_a_from_scratch_backbone_like_a_grid_run():
    from vplib import experiments

    data = load_dataset("mnist", size=28, rgb=True, max_train=40, max_eval=20)
    runs = []
    for noise in (1, 2):  # different global random states before the call
        torch.manual_seed(noise)
        torch.rand(noise)
        runs.append(experiments.live_run("linear", "msvp_cnn", data, epochs=1, batch_size=20))
    a, b = (r.model.backbone.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_fit_cost_counts_what_fit_runs():
    """A linear model on 4 x 4 images: training costs epochs x (train x step + val x forward),
    forward being 2 x 48 x 3 FLOPs an image; the cached probe costs one forward pass over
    train + val; and nothing in the model moves (batch-norm statistics included)."""
    from vplib.data import Split

    torch.manual_seed(0)
    train = Split(torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8), torch.arange(10) % 3)
    val = train.select(torch.arange(4))
    net = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(48), nn.Linear(48, 3)).train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cost = measure.fit_cost(net, train, val, epochs=2, batch_size=8)
    forward = 2 * 48 * 3
    assert cost["forward_flops_per_image"] == forward and not cost["cached_features"]
    step = measure.step_flops(net.eval(), train.images[:1].float(), train.labels[:1])
    assert cost["flops"] == 2 * (10 * step + 4 * forward)
    assert cost["activation_bytes"] > 0 and net.train().training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # BN stats too

    net.frozen_features = True  # what fit's feature cache looks for
    cached = measure.fit_cost(net, train, val, epochs=2, batch_size=8)
    assert cached["cached_features"] and cached["flops"] == 14 * forward
    assert cached["activation_bytes"] == 0
    assert measure.gpu_hours(3600 * 65e12 * 0.3, "T4") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="gpu must be one of"):
        measure.gpu_hours(1.0, "V100")


def test_step_flops_of_a_depthwise_convolution_count_its_groups():
    """torch's own counter charges a 32-group convolution's backward as if it were dense (33x
    its forward here); vplib counts one forward per gradient: input and weight, 2x forward."""
    conv = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32), nn.Flatten(),
                         nn.Linear(32 * 8 * 8, 4))
    x, y = torch.randn(2, 32, 8, 8), torch.tensor([0, 1])
    forward = measure.forward_flops(conv, x)
    assert forward == 2 * 2 * 32 * 64 * 9 + 2 * 2 * 2048 * 4
    # the conv's input is the data (no gradient): its weight gradient only (1x forward); the
    # linear layer's input and weight gradients (2x forward); plus the forward itself
    assert measure.step_flops(conv, x, y) == forward + 2 * 2 * 32 * 64 * 9 + 2 * (2 * 2 * 2048 * 4)


def test_beats_needs_a_margin_of_three_standard_errors_over_the_baseline():
    from vplib.checks import beats

    se = (0.8 * 0.2 / 400) ** 0.5  # 2 points on 400 images
    assert beats(0.8 + 3 * se + 1e-6, 0.8, 400) and not beats(0.8 + 3 * se - 1e-6, 0.8, 400)
    assert not beats(0.79, 0.8, 400)
    with pytest.raises(ValueError, match="reference in"):
        beats(0.9, 80, 400)


def test_styler_latex_keeps_formats_escapes_and_bolds():
    frame = pd.DataFrame({"method": ["vp_pad", "ap"], "test_acc": [0.853, 0.9], "% stopped": [1, 2]})
    bold = pd.DataFrame("", index=frame.index, columns=frame.columns)
    bold.iloc[1, 1] = "font-weight: bold"
    styler = (tables.styled(frame).apply(lambda _: bold, axis=None)
              .set_caption("Tuned grid: 3 seeds & 60 epochs"))
    latex = tables.styler_latex(styler)
    assert "85.3\\%" in latex and "\\bfseries 90.0\\%" in latex  # the table's own formats, bold
    assert "vp\\_pad" in latex and "\\% stopped" in latex         # cells and headers escaped
    assert latex.startswith("\\par\\noindent\\emph{Tuned grid: 3 seeds \\& 60 epochs}")
    assert "\\caption" not in latex and "\\begin{tabular}" in latex
    assert "test acc" in latex and "\\toprule" in latex
    html = styler.to_html()  # the web page's table is untouched by the LaTeX form
    assert "vp_pad" in html and "vp\\_pad" not in html and "85.3%" in html
    assert tables.latex_escape("a_b {50%} ~^\\") == (
        "a\\_b \\{50\\%\\} \\textasciitilde{}\\textasciicircum{}\\textbackslash{}")
