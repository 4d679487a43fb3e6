"""vplib.experiments: grids through fit, one record per run, finished runs skipped."""

import json
from pathlib import Path

import pytest

from vplib import experiments
from vplib.profiles import get_profile


def test_grid_expands_every_combination_and_rejects_unknown_methods():
    runs = experiments.grid(["linear", "vp-pad"], ["mobilenet_v2"], ["digits", "mnist"],
                            seeds=[0, 1], options={"vp-pad": [{"prompt_size": 2}, {}]})
    assert len(runs) == 2 * (1 + 2) * 2
    assert len({r.key for r in runs}) == len(runs)
    assert experiments.Run("ap", "b", "d", 0, {"layer": "x"}).key != \
        experiments.Run("ap", "b", "d", 0, {"layer": "y"}).key
    with pytest.raises(ValueError, match="unknown method"):
        experiments.grid(["vp-huge"], ["mobilenet_v2"], ["digits"])


def test_run_grid_records_skips_finished_runs_and_summarizes(tmp_path, monkeypatch):
    quick = get_profile("quick")
    runs = experiments.grid(["linear", "vp-pad"], ["mobilenet_v2"], ["digits"], seeds=[0, 1],
                            options=[{"epochs": 1, "prompt_size": 2}])
    runs = [r if r.method == "vp-pad" else experiments.Run(r.method, r.backbone, r.dataset,
                                                           r.seed, {"epochs": 1})
            for r in runs]
    records = experiments.run_grid(runs, tmp_path, quick, device="cpu", verbose=False)
    assert [r["key"] for r in records] == [r.key for r in runs]
    for record in records:
        assert 0.0 <= record["test_acc"] <= 1.0 and record["seconds_per_epoch"] > 0
        assert record["environment"]["profile"] == "quick" and record["image_size"] == 32
        assert record["fit"]["epochs"] == 1
        assert record["epochs_run"] == 1 and record["stopped_early"] is False
        assert record["vplib_source"] == experiments.vplib_source_hash()
        saved = json.loads((tmp_path / f"{record['key']}.json").read_text())
        assert saved["test_acc"] == record["test_acc"]
    linear = next(r for r in records if r["method"] == "linear")
    vp = next(r for r in records if r["method"] == "vp-pad")
    assert linear["cached_features"] and not vp["cached_features"]
    pad_prompt = 3 * (32 * 32 - 28 * 28)  # a 2-pixel frame on 32 px RGB
    assert vp["trainable_params"] == linear["trainable_params"] + pad_prompt

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(experiments, "run_one", no_training)
    again = experiments.run_grid(runs, tmp_path, quick, verbose=False)
    assert [r["test_acc"] for r in again] == [r["test_acc"] for r in records]
    with pytest.raises(ValueError, match="profile"):
        experiments.run_grid(runs, tmp_path, get_profile("standard"), verbose=False)

    table = experiments.summarize(again)
    assert len(table) == 2 and set(table["seeds"]) == {2}
    row = table[table["method"] == "linear"].iloc[0]
    accs = [r["test_acc"] for r in records if r["method"] == "linear"]
    assert row["test_acc_mean"] == pytest.approx(sum(accs) / 2)


def test_data_options_and_export_merge(tmp_path):
    quick = get_profile("quick")
    runs = experiments.grid(["msvp"], ["msvp_cnn"], ["digits"],
                            options=[{"epochs": 1, "train_backbone": True, "max_train": 50}])
    records = experiments.run_grid(runs, tmp_path / "runs", quick, device="cpu", verbose=False)
    assert records[0]["image_size"] == 28 and records[0]["n_train"] == 50  # native size, capped
    path = experiments.export(records, "grid", "cmd one", results_dir=tmp_path)
    other = dict(records[0], key="another")
    experiments.export([other], "grid", "cmd two", results_dir=tmp_path)
    experiments.export(records, "grid", "cmd one", results_dir=tmp_path)  # same key: replaced
    saved = json.loads(path.read_text())
    assert sorted(r["key"] for r in saved["records"]) == sorted([records[0]["key"], "another"])
    assert saved["commands"] == ["cmd two", "cmd one"] and saved["profiles"] == ["quick"]


def test_select_then_seed_picks_the_rate_on_validation_and_repeats_it(tmp_path, monkeypatch):
    """The rate with the best *validation* accuracy is repeated over the other seeds, even
    when another rate has the better test accuracy."""
    calls = []

    def fake_run_one(run, out_dir, profile=None, **kwargs):
        lr = run.options["lr"]
        calls.append((run.seed, lr))
        val = {0.1: 0.5, 0.01: 0.9, 0.001: 0.7, 6.4: 2.0, 25.6: 0.0}.get(lr, lr)
        if run.options.get("epochs") == 4:  # the smaller the rate, the better
            val = 1 / lr
        record = {"key": run.key, "val_acc": val, "test_acc": 1 - val, "fit": {"lr": lr},
                  "seconds_per_epoch": 1.0, "environment": {"profile": "quick"}}
        (Path(out_dir) / f"{run.key}.json").write_text(json.dumps(record))
        return record

    monkeypatch.setattr(experiments, "run_one", fake_run_one)
    settings = experiments.grid(["linear"], ["b"], ["d"], options=[{"epochs": 3}])
    records = experiments.select_then_seed(settings, [0.1, 0.01, 0.001], tmp_path,
                                           get_profile("quick"), seeds=(0, 1, 2),
                                           verbose=False)
    assert calls == [(0, 0.001), (0, 0.01), (0, 0.1), (1, 0.01), (2, 0.01)]
    assert len(records) == 5
    sel = records[0]["lr_selection"]
    assert sel["lrs"] == [0.001, 0.01, 0.1] and sel["val_acc"] == [0.7, 0.9, 0.5]
    assert sel["chosen"] == 0.01 and not sel["at_edge"] and sel["extended"] == 0
    assert [r["lr_selection"]["selected"] for r in records] == [False, True, False, True, True]
    calls.clear()  # resumed: nothing retrains; a grid per method when lrs is None
    experiments.select_then_seed(settings, [0.1, 0.01, 0.001], tmp_path, get_profile("quick"),
                                 verbose=False)
    assert calls == []
    # best at the top end: the grid grows upwards until the best is inside it (6.4 here) ...
    edge = experiments.select_then_seed(experiments.grid(["linear"], ["b"], ["d"], options=[
        {"lr": 0.4}]), None, tmp_path, get_profile("quick"), seeds=(0,), verbose=False)
    sel = edge[0]["lr_selection"]
    assert sel["lrs"] == [0.1, 0.4, 1.6, 6.4, 25.6] and len(edge) == 5
    assert sel["chosen"] == 6.4 and sel["extended"] == 2 and not sel["at_edge"]
    # ... or it has grown EDGE_EXTENSIONS times; below the bottom end it grows downwards
    capped = experiments.select_then_seed(experiments.grid(["linear"], ["b"], ["d"], options=[
        {"lr": 100.0}]), None, tmp_path, get_profile("quick"), seeds=(0,), verbose=False)
    sel = capped[0]["lr_selection"]
    assert sel["lrs"] == [25.0, 100.0, 400.0, 1600.0, 6400.0] and sel["at_edge"]
    assert sel["chosen"] == 6400.0 and sel["extended"] == experiments.EDGE_EXTENSIONS
    low = experiments.select_then_seed(experiments.grid(["linear"], ["b"], ["d"], options=[
        {"epochs": 4}]), [0.7, 2.8, 11.2], tmp_path, get_profile("quick"), seeds=(0,),
        extend=1, verbose=False)  # best at the bottom, one extension allowed
    sel = low[0]["lr_selection"]
    assert sel["lrs"] == [0.175, 0.7, 2.8, 11.2] and sel["chosen"] == 0.175 and sel["at_edge"]
    with pytest.raises(ValueError, match="at least one"):
        experiments.select_then_seed(settings, [], tmp_path)


def test_grid_data_cache_holds_one_dataset_at_a_time(monkeypatch):
    loaded = []

    def fake_load(name, *, size, rgb, max_train, max_eval):
        loaded.append(name)
        return object()

    monkeypatch.setattr("vplib.experiments.load_dataset", fake_load)
    experiments._data.cache_clear()
    try:
        first = experiments._data("mnist", 28, 100, 50)
        assert experiments._data("mnist", 28, 100, 50) is first  # reused within a dataset
        experiments._data("animal_silhouettes", 28, 100, 50)
        assert experiments._data.cache_info().currsize == 1  # the earlier dataset was released
        assert loaded == ["mnist", "animal_silhouettes"]
    finally:
        experiments._data.cache_clear()


def test_lr_grid_spans_the_base_rate():
    assert experiments.lr_grid("linear", {"lr": 0.04}) == [0.01, 0.04, 0.16]
    assert experiments.lr_grid("full") == [
        float(f"{experiments.DEFAULT_LR['full'] * f:.3g}") for f in experiments.LR_FACTORS]


def test_save_refuses_to_train_from_a_modified_checkout(tmp_path, monkeypatch):
    """--save checks the checkout before any run trains, and again on the records found."""
    trained = []
    monkeypatch.setattr(experiments, "run_one", lambda *a, **k: trained.append(a))
    monkeypatch.setattr(experiments, "_git_commit", lambda: "0123abc-dirty")
    argv = ["--out", str(tmp_path), "--methods", "linear", "--backbones", "b", "--datasets",
            "d", "--profile", "quick", "--save", "x"]
    with pytest.raises(SystemExit, match="modified checkout"):
        experiments.main(argv)
    assert trained == []
    monkeypatch.setattr(experiments, "_git_commit", lambda: "0123abc")
    run = experiments.grid(["linear"], ["b"], ["d"])[0]
    (tmp_path / f"{run.key}.json").write_text(json.dumps(
        {"key": run.key, "git_commit": "0123abc-dirty", "environment": {"profile": "quick"}}))
    with pytest.raises(SystemExit, match="modified or unknown checkout"):
        experiments.main(argv)


def test_vplib_source_hash_changes_with_the_code(tmp_path, monkeypatch):
    import shutil

    import vplib

    here = experiments.vplib_source_hash()
    assert len(here) == 16 and here == experiments.vplib_source_hash()
    copy = tmp_path / "vplib"
    shutil.copytree(Path(vplib.__file__).parent, copy)
    fake = copy / "experiments.py"
    monkeypatch.setattr(experiments, "__file__", str(fake))
    assert experiments.vplib_source_hash() == here
    (copy / "train.py").write_text((copy / "train.py").read_text() + "\n# changed\n")
    assert experiments.vplib_source_hash() != here


def test_restore_brings_committed_records_back_so_a_fresh_clone_does_not_retrain(tmp_path,
                                                                                  monkeypatch):
    trained = []
    monkeypatch.setattr(experiments, "run_one", lambda run, *a, **k: trained.append(run.key) or
                        {"key": run.key, "environment": {"profile": "quick"}, "test_acc": 0.5,
                         "seconds_per_epoch": 1.0})
    runs = experiments.grid(["linear"], ["b"], ["d"], seeds=[0, 1])
    done = {"key": runs[0].key, "environment": {"profile": "quick"}, "test_acc": 0.7,
            "lr_selection": {"chosen": 0.1}}
    results = tmp_path / "results"
    results.mkdir()
    (results / "g.json").write_text(json.dumps({"records": [done]}))
    out = tmp_path / "runs"
    assert experiments.restore("g", out, results) == 1
    assert experiments.restore("g", out, results) == 0  # already there: nothing rewritten
    assert experiments.restore("absent", out, results) == 0
    assert "lr_selection" not in json.loads((out / f"{runs[0].key}.json").read_text())
    records = experiments.run_grid(runs, out, experiments.get_profile("quick"), verbose=False)
    assert trained == [runs[1].key] and records[0]["test_acc"] == 0.7


def test_a_checkout_is_dirty_when_code_changes_but_not_when_a_grid_writes_its_results(
        tmp_path, monkeypatch):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    (tmp_path / "vplib").mkdir()
    (tmp_path / "book" / "results").mkdir(parents=True)
    (tmp_path / "vplib" / "experiments.py").write_text("x = 1\n")
    (tmp_path / "book" / "results" / "grid.json").write_text("{}\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    monkeypatch.setattr(experiments, "__file__", str(tmp_path / "vplib" / "experiments.py"))
    assert not experiments._git_commit().endswith("-dirty")
    (tmp_path / "book" / "results" / "grid.json").write_text('{"records": []}\n')
    assert not experiments._git_commit().endswith("-dirty")
    (tmp_path / "vplib" / "experiments.py").write_text("x = 2\n")
    assert experiments._git_commit().endswith("-dirty")
