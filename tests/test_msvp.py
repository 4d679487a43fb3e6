"""MultiScalePrompt (MSVP): parameter counts, shapes, errors, gradients, identity at zero maps."""

from __future__ import annotations

import pytest
import torch

from vplib.prompts.msvp import FUSIONS, SCALES, MultiScalePrompt


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def expected_params(channels: int, scales: tuple[str, ...], fusion: str) -> int:
    maps = sum(SCALES[s] ** 2 for s in scales) * channels
    if fusion == "concat":  # (1 + k) C -> C, no bias
        return maps + (1 + len(scales)) * channels ** 2
    if fusion == "gated":  # C -> C with bias
        return maps + channels ** 2 + channels
    return maps


@pytest.mark.parametrize("channels", [3, 16])
def test_paper_param_counts_all_scales(channels):
    c = channels
    assert n_params(MultiScalePrompt(c, fusion="add")) == 81 * c
    assert n_params(MultiScalePrompt(c, fusion="concat")) == 81 * c + 4 * c ** 2
    assert n_params(MultiScalePrompt(c, fusion="gated")) == 81 * c + c ** 2 + c


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("scales", [("global",), ("global", "mid"), ("mid", "local"),
                                    ("local", "global"), ("global", "mid", "local")])
def test_param_counts_for_scale_subsets(fusion, scales):
    prompt = MultiScalePrompt(3, scales=scales, fusion=fusion)
    assert n_params(prompt) == expected_params(3, scales, fusion)
    assert set(prompt.scales) == set(scales)
    assert list(prompt.scales) == [s for s in SCALES if s in scales]  # canonical order


def test_map_shapes_and_init_std():
    prompt = MultiScalePrompt(64)
    assert {k: tuple(v.shape) for k, v in prompt.maps.items()} == {
        "global": (64, 1, 1), "mid": (64, 4, 4), "local": (64, 8, 8)}
    assert abs(prompt.maps["local"].std().item() - 0.01) < 0.001


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("size", [(28, 28), (32, 32), (64, 48), (5, 7)])
def test_shape_preserved(fusion, size):
    prompt = MultiScalePrompt(3, fusion=fusion)
    x = torch.rand(2, 3, *size)
    assert prompt(x).shape == x.shape


def test_prompt_maps_shapes():
    prompt = MultiScalePrompt(3, scales=("global", "local"))
    maps = prompt.prompt_maps(32)
    assert list(maps) == ["global", "local"]
    assert all(m.shape == (3, 32, 32) and not m.requires_grad for m in maps.values())
    assert prompt.prompt_maps((20, 30))["local"].shape == (3, 20, 30)
    # The global map is one value per channel, constant over the image after upsampling.
    g = maps["global"]
    assert torch.allclose(g, g[:, :1, :1].expand_as(g))


def test_errors():
    with pytest.raises(ValueError, match="add.*concat.*gated"):
        MultiScalePrompt(3, fusion="multiply")
    with pytest.raises(ValueError, match="global.*mid.*local"):
        MultiScalePrompt(3, scales=("global", "huge"))
    with pytest.raises(ValueError, match="at least one"):
        MultiScalePrompt(3, scales=())
    with pytest.raises(ValueError, match="3-channel"):
        MultiScalePrompt(3)(torch.rand(2, 1, 28, 28))
    assert MultiScalePrompt(3, scales="mid").scales == ("mid",)  # a bare name is one scale


@pytest.mark.parametrize("fusion", FUSIONS)
def test_every_parameter_gets_a_gradient(fusion):
    torch.manual_seed(0)
    prompt = MultiScalePrompt(3, fusion=fusion)
    x = torch.rand(4, 3, 32, 32)
    loss = (prompt(x) * torch.randn(4, 3, 32, 32)).sum()
    loss.backward()
    for name, p in prompt.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("fusion", FUSIONS)
def test_zero_maps_leave_input_unchanged(fusion):
    prompt = MultiScalePrompt(3, fusion=fusion)  # concat conv at its identity-on-x init
    with torch.no_grad():
        for m in prompt.maps.values():
            m.zero_()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(prompt(x), x)


def test_concat_starts_as_add():
    torch.manual_seed(0)
    concat = MultiScalePrompt(3, fusion="concat")
    add = MultiScalePrompt(3, fusion="add")
    add.maps.load_state_dict(concat.maps.state_dict())
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(concat(x), add(x))
    # ... and the output is close to x: the frozen backbone sees (almost) its usual input.
    assert (concat(x) - x).abs().max() < 0.1


# ---------------------------------------------------------------- the paper's setting: joint training

@pytest.mark.parametrize("name, n_params, kind", [("msvp_cnn", 388_896, "cnn"),
                                                  ("resnet18_cifar", 11_168_832, "cnn"),
                                                  ("vit_tiny", 5_370_624, "vit")])
def test_scratch_backbones_take_28px_and_have_no_source_head(name, n_params, kind):
    import vplib

    backbone = vplib.load(name)
    assert backbone.kind == kind and backbone.input_size == 28 and backbone.class_names is None
    assert sum(p.numel() for p in backbone.parameters()) == n_params
    feats = backbone.features(backbone.normalize(torch.rand(2, 3, 28, 28)))
    assert feats.shape == (2, backbone.num_features)
    assert torch.equal(backbone.source_head(feats), feats)  # no ImageNet-style classifier


def test_cifar_resnet_keeps_resolution_in_the_stem():
    import vplib

    model = vplib.load("resnet18_cifar").model
    assert model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, torch.nn.Identity)


def test_msvp_train_backbone_trains_backbone_and_prompt_jointly():
    import vplib

    torch.manual_seed(0)
    joint = vplib.build("msvp", "msvp_cnn", 10, train_backbone=True)
    frozen = vplib.build("msvp", "msvp_cnn", 10)
    backbone_params = sum(p.numel() for p in joint.backbone.parameters())
    assert joint.param_counts()["trainable"] == backbone_params + 243 + 256 * 10 + 10
    assert frozen.param_counts()["trainable"] == 243 + 256 * 10 + 10
    joint.train()
    assert joint.backbone.training  # BatchNorm learns its statistics from scratch
    before = [p.detach().clone() for p in joint.parameters()]
    opt = torch.optim.SGD(joint.parameters(), lr=0.1)
    x, y = torch.rand(8, 3, 28, 28), torch.arange(8)
    torch.nn.functional.cross_entropy(joint(x), y).backward()
    opt.step()
    changed = [not torch.equal(b, p) for b, p in zip(before, joint.parameters())]
    assert all(changed)


def test_full_refuses_a_frozen_backbone():
    import vplib

    with pytest.raises(ValueError, match="contradicts"):
        vplib.build("full", "msvp_cnn", 10, train_backbone=False)
