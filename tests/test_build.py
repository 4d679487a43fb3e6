"""Every method of vplib.METHODS, built by vplib.build and trained for a few steps on real data.

For each method: the backbone is frozen (no gradient flag, eval mode, weights bit-identical after
training); only prompt and head parameters are trainable; every trainable prompt parameter gets a
gradient; and the training loss falls.
"""

import pytest
import torch
from test_prompts import tiny_vit  # noqa: E402

import vplib
from vplib.data import load_dataset
from vplib.train import fit

CNN_CASES = [
    ("linear", {}), ("full", {}), ("bias", {}),
    ("vp-pad", {"prompt_size": 4}), ("vp-fixed", {"prompt_size": 8}),
    ("vp-random", {"prompt_size": 8}),
    ("vp-pad", {"prompt_size": 4, "head": "flm"}), ("vp-pad", {"prompt_size": 4, "head": "ilm"}),
    ("msvp", {"fusion": "add"}), ("msvp", {"fusion": "concat"}), ("msvp", {"fusion": "gated"}),
    ("ap", {"layer": "features.14"}), ("ap", {"layer": "features.14", "shared_over_positions": True}),
]
VIT_CASES = [
    ("linear", {}), ("vpt-shallow", {"length": 4}), ("vpt-deep", {"length": 4}),
    ("insvp", {"length": 4}), ("insvp", {"variant": "official"}),
    ("insvp", {"variant": "official", "train_specific": True}),
    ("ap", {"layer": "blocks.0"}), ("vp-pad", {"prompt_size": 4}), ("msvp", {}),
]


@pytest.fixture(scope="module")
def digits32():
    return load_dataset("mnist", size=32, rgb=True, max_train=256, max_eval=128)


def _backbone(kind):
    return vplib.load("mobilenet_v2") if kind == "cnn" else tiny_vit()


def _prompt_params(model):
    return [(n, p) for m in model.prompt_modules for n, p in m.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("kind, method, options",
                         [("cnn", m, o) for m, o in CNN_CASES] + [("vit", m, o) for m, o in VIT_CASES],
                         ids=lambda v: v if isinstance(v, str)
                         else "-".join(f"{k}={x}" for k, x in v.items()))
def test_method_trains_only_its_prompt_and_head(kind, method, options, digits32):
    torch.manual_seed(0)
    model = vplib.build(method, _backbone(kind), 10, image_size=32, **options)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    counts = model.param_counts()

    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    prompt_and_head = {id(p) for m in model.prompt_modules + [model.head] if m is not None
                       for p in m.parameters() if p.requires_grad}
    if method in ("full", "bias"):
        assert trainable > prompt_and_head
    else:
        assert trainable == prompt_and_head
        assert not any(p.requires_grad for p in model.backbone.parameters())
    model.train()
    assert model.backbone.model.training == (method == "full")

    # every trainable prompt parameter receives a gradient (after one step, so that parameters
    # initialised at zero behind a zero-initialised layer have started to move)
    x, y = digits32.train.images[:32].float() / 255, digits32.train.labels[:32]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if _ == 0:
            opt.step()
    for name, p in _prompt_params(model):
        assert p.grad is not None and p.grad.abs().sum() > 0, name

    lr = 0.05 if options.get("head") in ("flm", "ilm") else 3e-3
    hist = fit(model, digits32.train, digits32.val, epochs=3, lr=lr, batch_size=32,
               augment="none", device="cpu", verbose=False)
    losses = hist.column("train_loss")
    assert losses[-1] < losses[0], losses

    after = model.backbone.state_dict()
    changed = [k for k in after if not torch.equal(after[k], backbone_before[k])]
    if method in ("full", "bias"):
        assert changed
        if method == "bias":  # only biases and norm affine parameters moved; BN statistics did not
            tuned = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
            assert set(changed) <= tuned and len(tuned) < len(list(model.backbone.parameters()))
    else:
        assert not changed, changed[:3]
    assert counts["trainable"] == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_label_mapping_is_recomputed_each_epoch_only_for_ilm(digits32, monkeypatch):
    for head, expected in (("flm", 1), ("ilm", 3)):
        model = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4, head=head)
        calls = []
        update = model.label_mapping.update
        monkeypatch.setattr(model.label_mapping, "update",
                            lambda *a: (calls.append(1), update(*a))[1])
        fit(model, digits32.train, digits32.val, epochs=3, lr=0.05, device="cpu", verbose=False)
        assert len(calls) == expected
        assert len(set(model.label_mapping.mapping.tolist())) == 10  # one-to-one


def test_zero_input_prompt_leaves_the_model_unchanged(digits32):
    x = digits32.test.images[:4].float() / 255
    for method, options in (("vp-pad", {"prompt_size": 4}), ("vp-fixed", {}),
                            ("ap", {"layer": "features.7"})):
        torch.manual_seed(0)
        prompted = vplib.build(method, "mobilenet_v2", 10, image_size=32, **options)
        torch.manual_seed(0)
        plain = vplib.build("linear", "mobilenet_v2", 10)
        with torch.no_grad():
            assert torch.allclose(prompted(x), plain(x), atol=1e-6), method


@pytest.mark.parametrize("length", [1, 16])
def test_reference_parameter_counts_on_vit_b16(length):
    vit_b = vplib.load("vit_base_patch16_224", pretrained=False)
    assert vplib.build("vpt-deep", vit_b, 100, length=length).param_counts()["prompt"] == 9_216 * length
    official = vplib.build("insvp", vit_b, 100, variant="official").param_counts()
    assert official["prompt"] == 271_661
    assert official["trainable"] - official["head"] == 186_253
    assert vplib.build("vp-pad", vit_b, 100, prompt_size=30).param_counts()["prompt"] == 69_840


def test_misuse_gives_clear_errors():
    cnn = vplib.load("mobilenet_v2")
    with pytest.raises(ValueError, match="Vision Transformer"):
        vplib.build("vpt-deep", cnn, 10)
    with pytest.raises(ValueError, match="Unknown method.*vp-pad"):
        vplib.build("prompt-magic", cnn, 10)
    with pytest.raises(ValueError, match="label mapping"):
        vplib.build("vpt-deep", tiny_vit(), 10, head="ilm")
    with pytest.raises(ValueError, match="does not take"):
        vplib.build("vp-pad", cnn, 10, image_size=32, prompt_size=4, length=3)
    with pytest.raises(ValueError, match="features.14"):
        vplib.build("ap", cnn, 10, image_size=32)
    with pytest.raises(ValueError, match="features"):
        vplib.build("ap", cnn, 10, image_size=32, layer="blocks.0")
    with pytest.raises(TypeError, match=r"got a VisionTransformer.*vplib.load\(name\)"):
        vplib.build("vpt-deep", tiny_vit().model, 10)  # a bare timm model, not a Backbone
    assert set(vplib.METHODS) == {"linear", "full", "bias", "vp-pad", "vp-fixed", "vp-random",
                                  "vpt-shallow", "vpt-deep", "msvp", "insvp", "ap"}


@pytest.mark.parametrize("kind", ["cnn", "vit"])
@pytest.mark.parametrize("method", ["full", "bias"])
def test_trainable_count_is_what_receives_a_gradient(kind, method, digits32):
    backbone = vplib.load("mobilenet_v2") if kind == "cnn" else vplib.load("vit_distilled")
    size = 32 if kind == "cnn" else 28
    model = vplib.build(method, backbone, 10, image_size=size)
    x = torch.nn.functional.interpolate(digits32.train.images[:8].float() / 255, size=size)
    torch.nn.functional.cross_entropy(model(x), digits32.train.labels[:8]).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None for p in trainable)  # nothing trainable is left unused
    assert model.param_counts()["trainable"] == sum(p.numel() for p in trainable)
    assert not any(p.requires_grad for p in model.backbone.source_classifier.parameters())


def test_reference_trainable_counts_on_mobilenet_v2():
    counts = {m: vplib.build(m, "mobilenet_v2", 10).param_counts()["trainable"]
              for m in ("linear", "full", "bias")}
    assert counts == {"linear": 12_810, "full": 2_236_682, "bias": 46_922}


def test_one_method_registry_drives_methods_defaults_and_errors(monkeypatch):
    from vplib import experiments, model

    assert vplib.METHODS == tuple(model.REGISTRY)
    assert experiments.DEFAULT_LR == {m: s.default_lr for m, s in model.REGISTRY.items()}
    built = []
    import dataclasses

    spy = dataclasses.replace(model.REGISTRY["vp-pad"], builder=lambda *a: built.append(a) or {})
    monkeypatch.setitem(model.REGISTRY, "vp-pad", spy)
    with pytest.raises(ValueError, match=r"'prompt_sz' \(did you mean 'prompt_size'\?\)"):
        vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_sz=4)
    assert not built  # the unknown name is reported before anything is built
    vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4)
    assert len(built) == 1 and built[0][2] == {"prompt_size": 4}  # the spy does see builds
    with pytest.raises(ValueError, match=r"did you mean 'vpt-deep'"):
        vplib.build("vpt_deep", "vit_distilled", 10)
    with pytest.raises(ValueError, match="inserts tokens into a Vision Transformer"):
        vplib.build("insvp", "mobilenet_v2", 10)


def test_backbone_registry_names_every_offline_backbone():
    from vplib import backbones

    assert set(backbones.BACKBONES) == ({"mobilenet_v2", "efficientnet_lite0"}
                                        | set(backbones.SOURCE_VITS) | set(backbones.SCRATCH))
    assert vplib.load("msvp_cnn").source.startswith("random init")
    with pytest.raises(ValueError, match="Unknown backbone 'mobilenet_v3_tiny'"):
        vplib.load("mobilenet_v3_tiny", pretrained=False)
