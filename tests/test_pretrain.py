"""The source-ViT pretraining script, on a small slice (the full recipe runs for an hour)."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from vplib import data
from vplib.pretrain import Recipe, ViTConfig, create_vit, pretrain


@pytest.mark.skipif(data._fashion_mnist_offline() is None,
                    reason="dataset-fashion-mnist (Debian package) is not installed")
def test_smoke_run_writes_a_loadable_checksummed_fp16_checkpoint(tmp_path):
    config = ViTConfig(embed_dim=48, depth=2, num_heads=3)
    card = pretrain(tmp_path, config, Recipe(epochs=2, batch_size=64), max_train=256,
                    max_eval=128, resume=False)
    weights = tmp_path / "vit_fashion.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["sha256"]
    assert json.loads((tmp_path / "vit_fashion.json").read_text()) == json.loads(json.dumps(card))
    state = load_file(str(weights))
    assert all(v.dtype == torch.float16 for v in state.values())
    vit = create_vit(config)
    vit.load_state_dict({k: v.float() for k, v in state.items()})
    assert card["n_train"] <= 256 and card["n_test"] == 128
    assert json.loads((tmp_path / "history.json").read_text())["best_epoch"] == card["best_epoch"]


@pytest.mark.skipif(data._fashion_mnist_offline() is None,
                    reason="dataset-fashion-mnist (Debian package) is not installed")
def test_pretraining_is_deterministic_on_cpu(tmp_path):
    config = ViTConfig(embed_dim=32, depth=1, num_heads=2)
    cards = [pretrain(tmp_path / str(i), config, Recipe(epochs=1, batch_size=32), max_train=96,
                      max_eval=32, resume=False) for i in range(2)]
    assert cards[0]["sha256"] == cards[1]["sha256"]


def test_conv_stem_keeps_the_patch_grid_and_works_with_token_prompts():
    import vplib
    from vplib.backbones import Backbone

    vit = create_vit(ViTConfig(embed_dim=32, depth=2, num_heads=2))
    assert vit.patch_embed.grid_size == (7, 7) and vit.patch_embed.patch_size == (4, 4)
    assert vit.patch_embed(torch.zeros(2, 3, 28, 28)).shape == (2, 49, 32)
    backbone = Backbone("tiny_conv_vit", vit, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=28,
                        crop_pct=1.0, interpolation="bilinear", class_names=None, source="test")
    for method in ["vpt-deep", "insvp"]:
        model = vplib.build(method, backbone, 5)
        assert model(torch.rand(2, 3, 28, 28)).shape == (2, 5)
    with pytest.raises(ValueError, match="power-of-two"):
        create_vit(ViTConfig(patch_size=7, stem="conv"))
    with pytest.raises(ValueError, match="unknown stem"):
        create_vit(ViTConfig(stem="hybrid"))
