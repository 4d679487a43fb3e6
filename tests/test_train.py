import json
import warnings

import pytest
import torch
import torch.nn as nn

import vplib
from vplib.data import Split, load_dataset
from vplib.train import History, augment_batch, evaluate, fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def small_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(16 * 64, 10))


def test_loss_falls_and_beats_chance_on_a_real_task(digits):
    model = small_net()
    before = evaluate(model, digits.val)
    hist = fit(model, digits.train, digits.val, epochs=4, lr=3e-3, batch_size=32,
               augment="none", device="cpu", verbose=False)
    losses = hist.column("train_loss")
    assert losses[-1] < 0.5 * losses[0]
    after = evaluate(model, digits.val)
    assert after["loss"] < before["loss"]
    assert after["acc"] > 0.85  # chance is 0.10


def _strip_times(hist):
    return [{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
            for r in hist.epochs]


def test_resume_after_interruption_reproduces_uninterrupted_run(digits, tmp_path):
    kwargs = dict(epochs=3, lr=2e-3, batch_size=64, augment="crop", seed=7, device="cpu",
                  warmup_epochs=1, label_smoothing=0.1, verbose=False)
    reference = small_net()
    ref_hist = fit(reference, digits.train, digits.val, **kwargs)

    class Killed(Exception):
        pass

    def kill_during_epoch_2(epoch, record, model):
        if epoch == 2:  # dies after the epoch-2 work, before its checkpoint is written
            raise Killed

    interrupted = small_net()
    with pytest.raises(Killed):
        fit(interrupted, digits.train, digits.val, checkpoint_dir=tmp_path,
            on_epoch_end=kill_during_epoch_2, **kwargs)
    saved = torch.load(tmp_path / "last.pt", weights_only=False)
    assert saved["epoch"] == 0  # only epoch 1 survived: at most one epoch is lost

    resumed = small_net(seed=123)  # a fresh process would build a differently-initialised model
    hist = fit(resumed, digits.train, digits.val, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert _strip_times(hist) == _strip_times(ref_hist)
    assert hist.best_epoch == ref_hist.best_epoch
    for (k, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_resume_with_other_settings_is_refused(digits, tmp_path):
    fit(small_net(), digits.train, digits.val, epochs=1, device="cpu", checkpoint_dir=tmp_path,
        verbose=False)
    with pytest.raises(ValueError, match="other settings"):
        fit(small_net(), digits.train, digits.val, epochs=1, lr=0.5, device="cpu",
            checkpoint_dir=tmp_path, resume=True, verbose=False)


def test_validation_not_test_picks_the_epoch(digits):
    # A validation set whose labels are shuffled differs from the test set in which epoch
    # looks best; fit must restore the epoch that is best on the split it was given.
    gen = torch.Generator().manual_seed(0)
    noisy_val = Split(digits.val.images, digits.val.labels[torch.randperm(len(digits.val), generator=gen)])
    model = small_net()
    hist = fit(model, digits.train, noisy_val, epochs=5, lr=3e-3, augment="none",
               device="cpu", verbose=False)
    val_accs = hist.column("val_acc")
    assert hist.best_epoch == 1 + val_accs.index(max(val_accs))
    assert evaluate(model, noisy_val)["acc"] == pytest.approx(hist.best["val_acc"], abs=1e-6)


def test_history_round_trips_through_json(digits, tmp_path):
    hist = fit(small_net(), digits.train, digits.val, epochs=2, device="cpu", verbose=False)
    hist.to_json(tmp_path / "h.json")
    again = History.from_json(tmp_path / "h.json")
    assert again.epochs == json.loads(json.dumps(hist.epochs)) and again.best_epoch == hist.best_epoch
    assert {"train_loss", "val_acc", "lr", "seconds", "images_per_s", "peak_mem_mb"} <= set(hist.epochs[0])


def test_linear_probe_caches_features_and_leaves_backbone_untouched():
    data = load_dataset("mnist", size=32, rgb=True, max_train=300, max_eval=150)
    model = vplib.PromptedClassifier(vplib.load("mobilenet_v2"), data.num_classes)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    hist = fit(model, data.train, data.val, epochs=5, lr=3e-3, device="cpu", verbose=False)
    assert hist.config["cached_features"] is True
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert evaluate(model, data.test)["acc"] > 0.5  # chance 0.10
    counts = model.param_counts()
    assert counts["trainable"] == counts["head"] == 1280 * 10 + 10


def test_full_fine_tuning_trains_the_backbone():
    data = load_dataset("mnist", size=32, rgb=True, max_train=128, max_eval=64)
    model = vplib.PromptedClassifier(vplib.load("mobilenet_v2"), 10, train_backbone=True)
    first = model.backbone.model.features[0][0].weight.clone()
    hist = fit(model, data.train, data.val, epochs=1, device="cpu", verbose=False)
    assert hist.config["cached_features"] is False
    assert not torch.equal(first, model.backbone.model.features[0][0].weight)
    unused = sum(p.numel() for p in model.backbone.source_classifier.parameters())
    assert model.param_counts()["trainable"] == model.param_counts()["total"] - unused


def test_augment_batch_shifts_within_padding_and_keeps_range():
    x = torch.zeros(4, 1, 16, 16, dtype=torch.uint8)
    x[:, :, 8, 8] = 255
    out = augment_batch(x, "crop", torch.Generator().manual_seed(0))
    assert out.shape == (4, 1, 16, 16) and out.dtype == torch.float32
    assert out.max() == 1.0 and out.min() == 0.0
    for img in out:
        r, c = (img[0] == 1).nonzero()[0].tolist()
        assert abs(r - 8) <= 2 and abs(c - 8) <= 2
    with pytest.raises(ValueError, match="augment"):
        augment_batch(x, "rotate", torch.Generator())


def test_model_without_trainable_parameters_is_an_error(digits):
    model = small_net()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        fit(model, digits.train, digits.val, epochs=1, device="cpu", verbose=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_uses_bf16_channels_last_and_learns(digits):
    data = load_dataset("mnist", size=32, rgb=True, max_train=512, max_eval=256)
    model = vplib.PromptedClassifier(vplib.load("mobilenet_v2"), 10, train_backbone=True)
    hist = fit(model, data.train, data.val, epochs=3, lr=1e-3, device="cuda", verbose=False)
    assert hist.epochs[-1]["peak_mem_mb"] > 0
    assert next(model.parameters()).is_cuda
    assert evaluate(model, data.test, device="cuda")["acc"] > 0.3


def _no_dropout_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 64, 10))


def test_compile_falls_back_to_eager_with_a_warning(digits, monkeypatch):
    kwargs = {"epochs": 1, "lr": 3e-3, "device": "cpu", "verbose": False}
    reference = fit(_no_dropout_net(), digits.train, digits.val, **kwargs)

    def broken_compile(fn, backend):
        def compiled(x):
            raise RuntimeError("no C++ compiler here")
        return compiled

    monkeypatch.setattr(torch, "compile", broken_compile)
    with pytest.warns(UserWarning, match="torch.compile failed.*no C\\+\\+ compiler"):
        hist = fit(_no_dropout_net(), digits.train, digits.val, compile=True, **kwargs)
    assert _strip_times(hist) == _strip_times(reference)


def test_compile_fallback_also_covers_the_first_backward(digits, monkeypatch):
    """A compiled forward that works but whose backward fails (as inductor's backward graph,
    compiled at its first call, can): training goes on in eager mode, exactly as without
    compiling, batch-norm statistics and gradients untouched by the trial."""
    kwargs = {"epochs": 1, "lr": 3e-3, "device": "cpu", "verbose": False}
    reference = fit(_no_dropout_net(), digits.train, digits.val, **kwargs)

    class BrokenBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            raise RuntimeError("backward graph failed to compile")

    def compile_with_a_broken_backward(fn, backend):
        return lambda x: BrokenBackward.apply(fn(x))

    monkeypatch.setattr(torch, "compile", compile_with_a_broken_backward)
    with pytest.warns(UserWarning, match="torch.compile failed.*backward graph"):
        hist = fit(_no_dropout_net(), digits.train, digits.val, compile=True, **kwargs)
    assert _strip_times(hist) == _strip_times(reference)


def test_precision_follows_the_device_capability(monkeypatch):
    from vplib.train import precision_for

    assert precision_for(torch.device("cpu")) == "fp32"
    assert precision_for(torch.device("cpu"), "bf16") == "bf16"
    with pytest.raises(ValueError, match="fp16 autocast needs a CUDA device"):
        precision_for(torch.device("cpu"), "fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        precision_for(torch.device("cpu"), "half")
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # T4
    assert precision_for(gpu) == "fp16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))  # H100
    assert precision_for(gpu) == "bf16" and precision_for(gpu, "fp32") == "fp32"


def test_the_precision_used_is_recorded(digits):
    kwargs = {"epochs": 1, "lr": 3e-3, "device": "cpu", "verbose": False, "augment": "none"}
    assert fit(_no_dropout_net(), digits.train, digits.val, **kwargs).config["precision"] == "fp32"
    hist = fit(_no_dropout_net(), digits.train, digits.val, precision="bf16", **kwargs)
    assert hist.config["precision"] == "bf16" and hist.best["val_acc"] > 0.5


def test_predict_runs_where_the_model_is_and_never_moves_it(digits, monkeypatch):
    model = _no_dropout_net()
    expected = model(digits.val.images[:8].float() / 255)
    monkeypatch.setattr(vplib.train, "default_device", lambda: torch.device("meta"))
    logits = vplib.train.predict(model, digits.val.images[:8])  # was: moved to default_device()
    assert next(model.parameters()).device.type == "cpu" and logits.device.type == "cpu"
    torch.testing.assert_close(logits, expected)
    with pytest.raises(ValueError, match="the model is on cpu, not cuda.*model.to"):
        evaluate(model, digits.val, device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_label_mapping_with_the_data_in_host_memory(monkeypatch):
    """FLM / ILM compute the source predictions where the model is, also when fit keeps the
    training images in host memory (a dataset too big for the GPU)."""
    data = load_dataset("mnist", size=32, rgb=True, max_train=256, max_eval=128)
    monkeypatch.setattr("vplib.train._fits_on", lambda *a, **k: False)
    for head in ("flm", "ilm"):
        model = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4, head=head)
        hist = fit(model, data.train, data.val, epochs=2, lr=1e-2, device="cuda", verbose=False)
        assert hist.config["data_on_device"] is False
        assert len(set(model.label_mapping.mapping.tolist())) == 10
        assert evaluate(model, data.test)["n"] == len(data.test)  # on the GPU, CPU images


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fp16_with_a_gradient_scaler_learns(monkeypatch):
    """The path of a GPU without native bf16 (a T4), forced on this GPU."""
    data = load_dataset("mnist", size=32, rgb=True, max_train=512, max_eval=256)
    model = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4)
    hist = fit(model, data.train, data.val, epochs=2, lr=1e-2, device="cuda",
               precision="fp16", verbose=False)
    assert hist.config["precision"] == "fp16" and hist.best["val_acc"] > 0.3
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert vplib.train.precision_for(torch.device("cuda")) == "fp16"


def test_compiled_training_matches_eager(digits):
    """Dynamo traces the model (the ``eager`` backend: no code generation, so no compiler is
    needed); the result must agree with plain eager training."""
    kwargs = {"epochs": 1, "lr": 3e-3, "device": "cpu", "verbose": False}
    eager = _no_dropout_net()
    fit(eager, digits.train, digits.val, **kwargs)
    traced = _no_dropout_net()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a silent fallback would make this test meaningless
        hist = fit(traced, digits.train, digits.val, compile="eager", **kwargs)
    assert hist.config["compile"] == "eager"
    for a, b in zip(traced.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pinned_host_path_and_compile(monkeypatch):
    data = load_dataset("mnist", size=32, rgb=True, max_train=512, max_eval=256)
    kwargs = {"epochs": 2, "lr": 1e-2, "device": "cuda", "verbose": False}
    on_device = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4)
    ref = fit(on_device, data.train, data.val, **kwargs)
    assert ref.config["data_on_device"] is True
    assert all(p.grad is None for p in on_device.backbone.parameters())  # frozen: no gradients

    monkeypatch.setattr("vplib.train._fits_on", lambda *a, **k: False)  # "too big for the GPU"
    pinned = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4)
    hist = fit(pinned, data.train, data.val, **kwargs)
    assert hist.config["data_on_device"] is False
    assert abs(hist.best["val_acc"] - ref.best["val_acc"]) <= 0.05
    monkeypatch.undo()

    compiled = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile")  # no silent fallback on a GPU
        hist = fit(compiled, data.train, data.val, compile=True, **kwargs)
    assert abs(hist.best["val_acc"] - ref.best["val_acc"]) <= 0.05


def test_saved_for_backward_bytes_counts_activations_not_parameters():
    torch.manual_seed(0)
    x, y = torch.randn(8, 32), torch.randint(0, 4, (8,))
    linear = nn.Linear(32, 4)
    # A linear layer saves its input (8 x 32 floats) for the weight gradient; its weight is
    # a parameter and is left out.
    assert vplib.train.saved_for_backward_bytes(linear, x, y) >= 8 * 32 * 4
    deep = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 4))
    assert vplib.train.saved_for_backward_bytes(deep, x, y) > 8 * 256 * 4
    assert linear.weight.grad is None  # gradients of the measuring step are cleared


def test_activation_prompt_saves_less_for_backward_than_an_input_prompt():
    x, y = torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,))
    vp = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4)
    ap = vplib.build("ap", "mobilenet_v2", 10, image_size=32, layer="features.14")
    vp_bytes = vplib.train.saved_for_backward_bytes(vp, x, y)
    ap_bytes = vplib.train.saved_for_backward_bytes(ap, x, y)
    assert 0 < ap_bytes < vp_bytes / 2


def test_torchrun_puts_each_process_on_its_local_gpu_whatever_cuda_device_was_asked(monkeypatch):
    """Under torchrun, "cuda:0" (e.g. a grid's --device) must not put every rank on GPU 0."""
    from vplib import train

    monkeypatch.setattr(train, "distributed_context", lambda device=None: train._Dist(1, 2, 1))
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    for asked in ("cuda", "cuda:0"):
        device, ctx = train._place(asked, batch_size=64)
        assert device == torch.device("cuda", 1) and ctx.local_rank == 1
    assert train._place("cpu", batch_size=64)[0] == torch.device("cpu")
    with pytest.raises(ValueError, match="global batch"):
        train._place("cpu", batch_size=1)


def test_max_epochs_variable_caps_every_run_and_its_warmup(digits, monkeypatch):
    """VPLIB_MAX_EPOCHS (the paper-profile dry run) caps the epochs a run asks for, and its
    warmup with it; the record shows what ran."""
    monkeypatch.setenv("VPLIB_MAX_EPOCHS", "1")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    hist = fit(model, digits.train, digits.val, epochs=5, warmup_epochs=2, batch_size=64,
               verbose=False)
    assert len(hist.epochs) == 1 and hist.config["epochs"] == 1
    assert hist.config["warmup_epochs"] == 1


def test_patience_stops_a_run_whose_validation_stopped_improving(digits, tmp_path):
    """At a learning rate too small to change any prediction, validation accuracy never beats
    epoch 1: with patience 2 the run ends after epoch 3 (of a cap of 10), says so, keeps the
    best epoch, and a resume from its checkpoint trains nothing more."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    kw = dict(epochs=10, lr=1e-12, batch_size=64, patience=2, schedule="constant",
              augment="none", device="cpu", verbose=False, checkpoint_dir=tmp_path)
    hist = fit(model, digits.train, digits.val, **kw)
    assert hist.stopped_early and len(hist.epochs) == 3 and hist.best_epoch == 1
    assert hist.config["patience"] == 2 and hist.config["schedule"] == "constant"
    again = fit(model, digits.train, digits.val, resume=True, **kw)
    assert again.stopped_early and _strip_times(again) == _strip_times(hist)


def test_a_run_that_keeps_improving_reaches_its_cap_without_an_early_stop(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    hist = fit(model, digits.train, digits.val, epochs=3, lr=1e-2, batch_size=64, patience=5,
               augment="none", device="cpu", verbose=False)
    assert not hist.stopped_early and len(hist.epochs) == 3


def test_constant_schedule_holds_the_rate_after_warmup(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    kw = dict(epochs=4, lr=1e-2, batch_size=64, warmup_epochs=1, augment="none",
              device="cpu", verbose=False)
    constant = fit(model, digits.train, digits.val, schedule="constant", **kw).column("lr")
    cosine = fit(model, digits.train, digits.val, **kw).column("lr")
    assert constant == [pytest.approx(1e-2)] * 4
    assert cosine[1] > cosine[2] > cosine[3] and cosine[3] < 1e-3  # decays to zero at the cap


@pytest.mark.parametrize("bad, error", [({"patience": 0}, ValueError), ({"patience": 1.5}, TypeError),
                                        ({"schedule": "linear"}, ValueError)])
def test_bad_patience_or_schedule_is_refused(digits, bad, error):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    with pytest.raises(error, match=next(iter(bad))):
        fit(model, digits.train, digits.val, epochs=1, verbose=False, **bad)


def test_plateau_schedule_drops_the_rate_twice_then_stops(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    hist = fit(model, digits.train, digits.val, epochs=20, lr=1e-12, batch_size=64,
               patience=2, schedule="plateau", augment="none", device="cpu", verbose=False)
    assert hist.lr_drops == [3, 5] and hist.stopped_early and len(hist.epochs) == 7
    lrs = hist.column("lr")
    assert lrs[2] == pytest.approx(1e-12) and lrs[3] == pytest.approx(1e-13)
    assert lrs[5] == pytest.approx(1e-14)
    with pytest.raises(ValueError, match="patience"):
        fit(model, digits.train, digits.val, epochs=2, schedule="plateau", verbose=False)


def test_resume_after_a_plateau_drop_reproduces_the_uninterrupted_run(digits, tmp_path):
    """A run killed after its rate dropped resumes at the dropped rate: same history, drops
    and weights as the run that was never interrupted."""
    kwargs = dict(epochs=9, lr=3e-3, batch_size=64, seed=3, device="cpu", patience=1,
                  schedule="plateau", verbose=False)
    reference = small_net()
    ref_hist = fit(reference, digits.train, digits.val, **kwargs)
    assert ref_hist.lr_drops, "the test needs a run whose rate drops"
    kill_at = ref_hist.lr_drops[0] + 1

    class Killed(Exception):
        pass

    def kill(epoch, record, model):
        if epoch == kill_at:
            raise Killed

    with pytest.raises(Killed):
        fit(small_net(), digits.train, digits.val, checkpoint_dir=tmp_path, on_epoch_end=kill,
            **kwargs)
    resumed = small_net(seed=5)
    hist = fit(resumed, digits.train, digits.val, checkpoint_dir=tmp_path, resume=True, **kwargs)
    assert _strip_times(hist) == _strip_times(ref_hist) and hist.lr_drops == ref_hist.lr_drops
    for (k, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
