"""The shipped source ViT (`vplib.load("vit_fashion")`): offline, frozen, verified, and as
accurate as its model card says."""

import json

import pytest
import torch

import vplib
from vplib import data
from vplib.backbones import ASSETS_DIR, sha256sum
from vplib.pretrain import SLICE, ViTConfig
from vplib.train import evaluate

CARD = json.loads((ASSETS_DIR / "vit_fashion.json").read_text())


def test_loads_offline_frozen_and_checksum_verified():
    vit = vplib.load("vit_fashion")
    assert vit.source.startswith("offline") and "sha256 verified" in vit.source
    assert sha256sum(ASSETS_DIR / "vit_fashion.safetensors") == CARD["sha256"]
    assert not any(p.requires_grad for p in vit.parameters()) and not vit.model.training
    assert sum(p.numel() for p in vit.parameters()) == CARD["params"]
    assert vit.input_size == ViTConfig(**CARD["config"]).img_size == 28
    assert CARD["test_acc"] >= 0.89 and CARD["n_test"] == 10_000  # the CPU target


@pytest.mark.skipif(data._fashion_mnist_offline() is None,
                    reason="dataset-fashion-mnist (Debian package) is not installed")
def test_reaches_its_recorded_accuracy_on_the_test_slice():
    test = data.load_dataset("fashion_mnist", size=28, rgb=True).test
    acc = evaluate(vplib.load("vit_fashion"), test.select(torch.arange(SLICE)))["acc"]
    assert CARD["test_slice"]["first"] == SLICE
    assert abs(acc - CARD["test_slice"]["acc"]) <= 2 / SLICE, (acc, CARD["test_slice"])
