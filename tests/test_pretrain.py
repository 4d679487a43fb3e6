"""The source-ViT pretraining script, on small slices (the full recipes run for an hour)."""

import dataclasses
import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from vplib import data
from vplib import pretrain as P
from vplib.pretrain import Recipe, ViTConfig, create_vit, pretrain

needs_fashion = pytest.mark.skipif(data._fashion_mnist_offline() is None,
                                   reason="dataset-fashion-mnist (Debian package) is not installed")
TINY = ViTConfig(embed_dim=32, depth=1, num_heads=2, num_classes=1000)
TINY_RECIPE = P.DistillRecipe(pool_per_source=300, n_views=192, n_val=64, epochs=2,
                              batch_size=64)


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
        create_vit(ViTConfig(stem="linear"))


@needs_fashion
def test_distillation_is_deterministic_and_resumes_exactly(tmp_path):
    """Two runs give the same weights; a run killed after its first epoch and started again
    ends with the same weights and history as an uninterrupted one."""
    first = P.distill(tmp_path / "a", TINY, TINY_RECIPE, resume=False, verbose=False)
    again = P.distill(tmp_path / "b", TINY, TINY_RECIPE, resume=False, verbose=False)
    assert first["sha256"] == again["sha256"]

    class Killed(Exception):
        pass

    def kill(epoch, record):
        if epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        P.distill(tmp_path / "c", TINY, TINY_RECIPE, resume=False, verbose=False,
                  on_epoch_end=kill)
    resumed = P.distill(tmp_path / "c", TINY, TINY_RECIPE, resume=True, verbose=False)
    assert resumed["sha256"] == first["sha256"]
    history = [json.loads((tmp_path / d / "history.json").read_text()) for d in ("a", "c")]
    strip = [[{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
              for r in h["epochs"]] for h in history]
    assert strip[0] == strip[1] and len(strip[0]) == 2
    with pytest.raises(ValueError, match="other settings"):
        P.distill(tmp_path / "c", TINY, dataclasses.replace(TINY_RECIPE, epochs=3),
                  verbose=False)


@needs_fashion
def test_distillation_pool_never_holds_fashion_validation_or_test_images():
    pool = P.distill_pool(("fashion",), 28, 10**6, seed=0)
    assert torch.equal(pool, data.load_dataset("fashion_mnist", seed=0).train.images)
    with pytest.raises(ValueError, match="unknown distillation source"):
        P.distill_pool(("cifar10",), 28, 10, seed=0)


def test_fractal_classes_are_seeded_distinct_and_non_empty():
    x, y = P.fractal_images(6, 5, 28, seed=3)
    assert x.shape == (30, 1, 28, 28) and x.dtype == torch.uint8 and y.tolist() == sorted(y.tolist())
    x2, _ = P.fractal_images(6, 5, 28, seed=3)
    assert torch.equal(x, x2)
    fill = (x > 0).float().mean((1, 2, 3))
    assert fill.min() > 0.01
    means = torch.stack([x[y == c].float().mean(0) for c in range(6)])
    assert (torch.cdist(means.flatten(1), means.flatten(1)) + torch.eye(6) * 1e9).min() > 1


def test_views_are_seeded_and_in_range():
    pool = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    views = [P.make_views(pool, 50, min_scale=0.25, mix_prob=0.5,
                          generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(*views) and views[0].shape == (50, 1, 28, 28)


def test_hybrid_stem_is_a_frozen_cnn_under_every_vit_method():
    import vplib
    from vplib.backbones import Backbone

    def backbone():
        vit = create_vit(ViTConfig(embed_dim=32, depth=2, num_heads=2, stem="hybrid"))
        assert vit.patch_embed.grid_size == (7, 7) and vit.patch_embed.patch_size == (4, 4)
        return Backbone("tiny_hybrid", vit, mean=(0.5,) * 3, std=(0.5,) * 3, input_size=28,
                        crop_pct=1.0, interpolation="bilinear", class_names=None,
                        source="test")

    for method, opts in [("vpt-deep", {}), ("insvp", {}), ("ap", {"layer": "blocks.0"})]:
        model = vplib.build(method, backbone(), 5, **opts)
        assert model(torch.rand(2, 3, 28, 28)).shape == (2, 5)
    with pytest.raises(ValueError, match="stride 4"):
        create_vit(ViTConfig(patch_size=8, stem="hybrid"))


def test_logistic_probe_selects_on_validation_and_reports_test_only_when_asked():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.randn(300, 5, generator=g) + 3 * torch.nn.functional.one_hot(y, 5)
    split = [(x[i::3].numpy(), y[i::3].numpy()) for i in range(3)]
    result = P.logistic_probe(split[0], split[1])
    assert set(result) == {"C", "val_acc", "unconverged_C"} and result["C"] in P.PROBE_C
    assert result["val_acc"] > 0.9
    with_test = P.logistic_probe(split[0], split[1], split[2])
    assert with_test["C"] == result["C"] and with_test["test_acc"] > 0.9
    shuffled = (split[0][0], split[0][1][torch.randperm(100, generator=g).numpy()])
    assert P.logistic_probe(shuffled, split[1])["val_acc"] < 0.6


def test_card_probes_measure_test_once_per_source_resume_and_refuse_other_settings(
        tmp_path, monkeypatch):
    calls = []

    def fake_transfer(backbone=None, targets=P.TARGETS, *, n_train=3600, test=False, size=None,
                      block=None, **_):
        calls.append((getattr(backbone, "name", None), n_train, test, size, block))
        return {t: {"C": 1.0, "val_acc": 0.5, **({"test_acc": 0.4} if test else {})}
                for t in targets}

    monkeypatch.setattr(P, "transfer", fake_transfer)
    path = tmp_path / "probes.json"
    result = P.card_probes(path, "vit_distilled", sizes=(10, 20))
    tests = [c for c in calls if c[4] is None]
    assert {(c[0], c[1]) for c in tests} == {
        (name, n) for name in (None, "vit_fashion", "vit_distilled", "mobilenet_v2")
        for n in (10, 20)} and len(tests) == 8
    assert all(c[2] for c in tests)  # the test probes read test accuracy ...
    assert ("mobilenet_v2", 10, True, 64, None) in calls  # ... the teacher at its own size
    blocks = [c for c in calls if c[4] is not None]
    assert [c[4] for c in blocks] == [1, 2, 3, 4, 5, 6] and not any(c[2] for c in blocks)
    assert json.loads(path.read_text()) == result and result["sizes"] == [10, 20]
    calls.clear()
    assert P.card_probes(path, "vit_distilled", sizes=(10, 20))["test"] == result["test"]
    assert calls == []  # everything was already measured
    with pytest.raises(ValueError, match="pass another path or delete it"):
        P.card_probes(path, "vit_distilled", sizes=(10,))
