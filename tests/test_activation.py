"""Activation prompts (AP): layer names, hooks, zero init, BN-shift equivalence, gradients."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

import vplib
from vplib.prompts.activation import ActivationPrompt, layer_names

SIZE = 64  # MobileNetV2 is fully convolutional: small inputs keep the tests fast on CPU


@pytest.fixture(scope="module")
def mobilenet():
    return vplib.load("mobilenet_v2")  # offline ImageNet weights, frozen, eval mode


@pytest.fixture(scope="module")
def vit():
    return vplib.load("vit_tiny_patch16_224", pretrained=False)  # random init, no download


@pytest.fixture
def images():
    torch.manual_seed(0)
    return torch.rand(2, 3, SIZE, SIZE)


# ----------------------------------------------------------------------------- layer names

def test_layer_names(mobilenet, vit):
    assert layer_names(mobilenet) == [f"features.{i}" for i in range(19)]
    assert layer_names(vit) == [f"blocks.{i}" for i in range(12)]
    effnet = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    names = layer_names(effnet)
    assert names[:3] == ["blocks.0", "blocks.0.0", "blocks.1"]
    assert layer_names(effnet, "stages") == [f"blocks.{i}" for i in range(7)]
    assert "blocks.5.3" in layer_names(effnet, "blocks")
    assert "blocks.5" not in layer_names(effnet, "blocks")
    for name in names:
        effnet.get_submodule(name)  # every name resolves relative to the model


def test_unknown_or_wrong_kind_layer_is_a_clear_error(mobilenet, vit):
    with pytest.raises(ValueError, match=r"Unknown layer 'blocks.0'.*features.0"):
        ActivationPrompt(mobilenet, "blocks.0", SIZE)  # a ViT name on a CNN
    with pytest.raises(ValueError, match=r"Unknown layer 'features.3'.*blocks.0"):
        ActivationPrompt(vit, "features.3", 224)  # a CNN name on a ViT
    with pytest.raises(ValueError, match="Unknown layer"):
        ActivationPrompt(mobilenet, "features.99", SIZE)
    with pytest.raises(ValueError, match="level"):
        layer_names(mobilenet, "everything")


# ----------------------------------------------------------------------------- CNN

@pytest.mark.parametrize("shared", [False, True])
def test_cnn_delta_shape_zero_init_and_scoped_hook(mobilenet, images, shared):
    reference = mobilenet(images)
    ap = ActivationPrompt(mobilenet, "features.14", SIZE, shared_over_positions=shared)
    try:
        channels, h, w = ap.activation_shape  # features.14 at 64 px: (160, 2, 2)
        assert ap.delta.shape == ((channels, 1, 1) if shared else (channels, h, w))
        assert [n for n, _ in ap.named_parameters()] == ["delta"]  # backbone is not a submodule
        assert not ap.attached and not ap.target._forward_hooks  # no hook at rest
        with torch.no_grad():
            ap.delta.normal_()
        torch.testing.assert_close(mobilenet(images), reference, rtol=0, atol=0)
        with ap:
            assert not torch.allclose(mobilenet(images), reference)
            with ap:  # nested: still one hook, still applied after the inner block
                assert len(ap.target._forward_hooks) == 1
            assert ap.attached
        assert not ap.attached and not ap.target._forward_hooks
        torch.testing.assert_close(mobilenet(images), reference, rtol=0, atol=0)
        ap.attach().attach()  # by hand, idempotent
        assert len(ap.target._forward_hooks) == 1
        ap.detach().detach()
        torch.testing.assert_close(mobilenet(images), reference, rtol=0, atol=0)
    finally:
        ap.detach()


def test_per_position_delta_is_tied_to_its_image_size(mobilenet):
    with ActivationPrompt(mobilenet, "features.7", SIZE) as ap:
        with pytest.raises(ValueError, match=f"built for {SIZE} px"):
            mobilenet(torch.rand(1, 3, 2 * SIZE, 2 * SIZE))
    with ActivationPrompt(mobilenet, "features.7", SIZE, shared_over_positions=True):
        assert mobilenet(torch.rand(1, 3, 2 * SIZE, 2 * SIZE)).shape == (1, 1000)
    with pytest.raises(TypeError, match="hook"):
        ap(torch.rand(1, 3, SIZE, SIZE))


def _last_bn(block: torch.nn.Module) -> torch.nn.BatchNorm2d:
    return [m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]


def _shared_prompt_vs_bn_shift(mobilenet, layer, images):
    """Logits with a shared random AP delta v on ``layer``, and logits of a copy whose last
    BatchNorm in ``layer`` has its bias shifted by the same v."""
    torch.manual_seed(1)
    v = torch.randn(_last_bn(mobilenet.model.get_submodule(layer)).num_features) * 0.5
    shifted = copy.deepcopy(mobilenet)
    with torch.no_grad():
        _last_bn(shifted.model.get_submodule(layer)).bias += v
    with ActivationPrompt(mobilenet, layer, SIZE, shared_over_positions=True) as ap:
        with torch.no_grad():
            ap.delta.copy_(v.view(-1, 1, 1))
        prompted = mobilenet(images)
    with torch.no_grad():
        return prompted, shifted(images)


@pytest.mark.parametrize("layer", ["features.1", "features.3"])
def test_shared_ap_after_batchnorm_equals_shifting_its_beta(mobilenet, images, layer):
    """The teaching fact: AP shared over positions == tuning the preceding BN's shift.

    features.1 ends in BatchNorm2d (no residual: use_res_connect is False); features.3 ends in
    BatchNorm2d followed by a residual add, which is linear and does not involve beta, so the
    identity x + (BN(h) + v) = x + BN_{beta + v}(h) still holds exactly.
    """
    assert mobilenet.model.get_submodule(layer).use_res_connect == (layer == "features.3")
    prompted, shifted = _shared_prompt_vs_bn_shift(mobilenet, layer, images)
    torch.testing.assert_close(prompted, shifted, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(prompted, mobilenet(images), atol=1e-2)  # v really matters


def test_ap_after_a_nonlinearity_is_not_a_beta_shift(mobilenet, images):
    """Negative control: features.0 is Conv-BN-ReLU6, so a shift after ReLU6 != a BN shift."""
    prompted, shifted = _shared_prompt_vs_bn_shift(mobilenet, "features.0", images)
    assert not torch.allclose(prompted, shifted, atol=1e-2)


def test_gradients_reach_delta_only_and_stop_at_the_prompted_layer(mobilenet, images):
    below, above = {}, {}

    def recorder(store):  # a forward hook that returns None leaves the output alone
        def hook(_module, _inputs, output):
            store["requires_grad"] = output.requires_grad
        return hook

    h_below = mobilenet.model.features[5].register_forward_hook(recorder(below))
    h_above = mobilenet.model.features[13].register_forward_hook(recorder(above))
    try:
        with ActivationPrompt(mobilenet, "features.10", SIZE) as ap:
            x = images.clone()
            mobilenet(x).logsumexp(dim=1).sum().backward()
    finally:
        h_below.remove()
        h_above.remove()
    assert ap.delta.grad is not None and ap.delta.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in mobilenet.parameters())
    assert x.grad is None
    # No autograd graph below the prompted layer: nothing there requires grad, so backward
    # never runs through features.0 .. features.10 (unlike input-space VP).
    assert below["requires_grad"] is False
    assert above["requires_grad"] is True


# ----------------------------------------------------------------------------- ViT

@pytest.mark.parametrize("shared", [False, True])
def test_vit_block_prompt(vit, shared):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        reference = vit(x)
    with ActivationPrompt(vit, "blocks.0", 224, shared_over_positions=shared) as ap:
        tokens, width = ap.activation_shape
        assert (tokens, width) == (197, 192)  # 196 patches + the class token
        assert ap.delta.shape == ((1, width) if shared else (tokens, width))
        with torch.no_grad():
            torch.testing.assert_close(vit(x), reference, rtol=0, atol=0)  # zero init
        vit(x).logsumexp(dim=1).sum().backward()
    assert ap.delta.grad is not None and ap.delta.grad.abs().sum() > 0
    assert all(p.grad is None for p in vit.parameters())
    with torch.no_grad():
        torch.testing.assert_close(vit(x), reference, rtol=0, atol=0)  # detached on exit


def test_image_size_defaults_to_the_backbone_input_size(vit):
    ap = ActivationPrompt(vit, "blocks.2")
    assert ap.image_size == 224 and ap.delta.shape == (197, 192)


def test_two_models_on_one_backbone_do_not_see_each_others_prompts():
    """The prompt belongs to the model that owns it: it acts inside that model's forward only,
    so a second model built on the same backbone object computes its own function."""
    backbone = vplib.load("vit_fashion")
    first = vplib.build("ap", backbone, 10, layer="blocks.0")
    with torch.no_grad():
        first.activation_prompt.delta.normal_()
    second = vplib.build("linear", backbone, 10)
    third = vplib.build("ap", backbone, 10, layer="blocks.1")
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        clean = backbone.features(backbone.normalize(x))
        assert torch.equal(second.features(x), clean)
        assert torch.equal(third.features(x), clean)  # its own delta is still zero
        assert not torch.allclose(first.features(x), clean)
        assert torch.equal(backbone.features(backbone.normalize(x)), clean)  # no hook left
    assert not any(m._forward_hooks for m in backbone.modules())
