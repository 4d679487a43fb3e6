"""The shipped source ViTs (`vplib.load("vit_distilled")`, `vplib.load("vit_fashion")`):
offline, frozen, verified, and as accurate as their model cards say."""

import json

import pytest
import torch

import vplib
from vplib import data
from vplib.backbones import ASSETS_DIR, SOURCE_VITS, sha256sum
from vplib.pretrain import SLICE, ViTConfig, slice_accuracy

CARDS = {name: json.loads((ASSETS_DIR / f"{name}.json").read_text()) for name in SOURCE_VITS}


@pytest.mark.parametrize("name", SOURCE_VITS)
def test_loads_offline_frozen_and_checksum_verified(name):
    card = CARDS[name]
    vit = vplib.load(name)
    assert vit.source.startswith("offline") and "sha256 verified" in vit.source
    assert sha256sum(ASSETS_DIR / f"{name}.safetensors") == card["sha256"]
    assert not any(p.requires_grad for p in vit.parameters()) and not vit.model.training
    assert sum(p.numel() for p in vit.parameters()) == card["params"]
    assert vit.input_size == ViTConfig(**card["config"]).img_size == 28
    assert vit.kind == "vit" and len(vit.class_names) == card["config"]["num_classes"]


def test_first_source_reached_its_recorded_test_accuracy():
    card = CARDS["vit_fashion"]
    assert card["test_acc"] >= 0.89 and card["n_test"] == 10_000


def test_distilled_source_was_chosen_on_validation_and_kept_its_best_epoch():
    card = CARDS["vit_distilled"]
    epochs = card["history"]["epochs"]
    best = min(epochs, key=lambda r: r["val_loss"])
    assert card["best_epoch"] == best["epoch"] == card["history"]["best_epoch"]
    assert card["recipe"]["teacher"] == "mobilenet_v2" and card["class_names"] == "imagenet"


@pytest.mark.skipif(data._fashion_mnist_offline() is None,
                    reason="dataset-fashion-mnist (Debian package) is not installed")
@pytest.mark.parametrize("name", SOURCE_VITS)
def test_reaches_its_recorded_accuracy_on_the_test_slice(name):
    card = CARDS[name]
    acc = slice_accuracy(vplib.load(name), card)
    assert card["test_slice"]["first"] == SLICE
    assert abs(acc - card["test_slice"]["acc"]) <= 2 / SLICE, (acc, card["test_slice"])


def test_block_features_of_the_last_block_start_with_the_class_token():
    from vplib.pretrain import block_features, class_token_features, transfer

    vit = vplib.load("vit_distilled")
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    last = block_features(vit, images, len(vit.model.blocks))
    width = vit.model.embed_dim
    assert last.shape == (4, 2 * width)
    assert torch.allclose(last[:, :width], class_token_features(vit, images))
    assert not torch.allclose(block_features(vit, images, 1)[:, :width], last[:, :width])
    with pytest.raises(ValueError, match="block must be in 1..6"):
        block_features(vit, images, 0)
    with pytest.raises(ValueError, match="raw pixels have no blocks"):
        transfer(None, block=1)
