"""Class activation maps: agreement with a from-scratch Grad-CAM, ViT token handling, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vplib
from vplib import cam as C

SIZE = 64


@pytest.fixture(scope="module")
def mobilenet():
    return vplib.load("mobilenet_v2")


@pytest.fixture(scope="module")
def vit():
    return vplib.load("vit_fashion")  # 28 px, patch 4: a 7 x 7 grid


def scratch_gradcam(model, backbone, layer, x, targets):
    """Grad-CAM written out: hook the layer, weight channels by mean gradient, ReLU, scale."""
    store = {}
    hook = backbone.model.get_submodule(layer).register_forward_hook(
        lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = model(x.clone().requires_grad_(True))
    finally:
        hook.remove()
    acts = store["a"]
    (grads,) = torch.autograd.grad(logits[torch.arange(len(x)), targets].sum(), acts)
    if acts.ndim == 3:  # ViT tokens: keep the patch tokens, as a grid
        g = x.shape[-1] // backbone.model.patch_embed.patch_size[0]
        acts, grads = (t[:, -g * g:].reshape(len(x), g, g, -1).permute(0, 3, 1, 2)
                       for t in (acts, grads))
    m = F.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1, keepdim=True))

    def scale(t):
        t = t - t.amin((2, 3), keepdim=True)
        return t / (t.amax((2, 3), keepdim=True) + 1e-7)

    m = scale(F.interpolate(scale(m), size=x.shape[-2:], mode="bilinear", align_corners=False))
    return m[:, 0].detach().numpy()


def test_gradcam_matches_scratch_on_cnn(mobilenet):
    torch.manual_seed(0)
    x = torch.rand(3, 3, SIZE, SIZE)
    targets = torch.tensor([1, 281, 999])
    heat = C.cam(mobilenet, x, targets)
    assert heat.shape == (3, SIZE, SIZE) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1 + 1e-6
    ref = scratch_gradcam(mobilenet, mobilenet, "features.18", x, targets)
    assert np.abs(heat - ref).max() < 1e-4
    # the default explains the predicted class
    predicted = mobilenet(x).argmax(1)
    assert np.allclose(C.cam(mobilenet, x), C.cam(mobilenet, x, predicted), atol=1e-6)


@pytest.mark.parametrize("method,options", [("linear", {}), ("vpt-deep", {"length": 3}),
                                            ("insvp", {})])
def test_gradcam_matches_scratch_on_prompted_vit(vit, method, options):
    torch.manual_seed(0)
    model = vplib.build(method, vit, 10, **options).eval()
    x = torch.rand(2, 3, 28, 28)
    targets = torch.tensor([3, 7])
    heat = C.cam(model, x, targets)
    assert heat.shape == (2, 28, 28)
    ref = scratch_gradcam(model, vit, C.default_layer(model), x, targets)
    assert np.abs(heat - ref).max() < 1e-4


def test_gradcam_plus_plus_differs_but_is_a_map(mobilenet):
    torch.manual_seed(1)
    x = torch.rand(2, 3, SIZE, SIZE)
    a, b = C.cam(mobilenet, x), C.cam(mobilenet, x, method="gradcam++")
    assert b.shape == a.shape and b.min() >= 0 and b.max() <= 1 + 1e-6
    assert np.abs(a - b).mean() > 1e-3


def test_other_layer_and_activation_prompt(mobilenet):
    model = vplib.build("ap", mobilenet, 5, image_size=SIZE, layer="features.8")
    x = torch.rand(2, 3, SIZE, SIZE)
    heat = C.cam(model, x, layer="features.13")
    ref = scratch_gradcam(model, mobilenet, "features.13", x, model(x).argmax(1))
    assert np.abs(heat - ref).max() < 1e-4
    assert model.training  # cam restores the mode it found


def test_vit_patch_grid_keeps_last_tokens_in_row_major_order():
    b, g, d, prefix, prompts = 2, 3, 4, 1, 5
    patches = torch.arange(g * g, dtype=torch.float32).view(1, g * g, 1).expand(b, -1, d)
    junk = torch.full((b, prefix + prompts, d), -1.0)
    grid = C.ViTPatchGrid((g, g), prefix)(torch.cat([junk, patches], 1))
    assert grid.shape == (b, d, g, g)
    assert torch.equal(grid[0, 0], torch.arange(9.0).view(3, 3))
    with pytest.raises(ValueError, match="prefix"):
        C.ViTPatchGrid((g, g), prefix)(torch.zeros(b, g * g, d))


def test_default_layers(mobilenet, vit):
    assert C.default_layer(mobilenet) == "features.18"
    assert C.default_layer(vit) == "blocks.5.norm1"
    effnet = vplib.load("efficientnet_lite0")
    assert effnet.model.get_submodule(C.default_layer(effnet)) is not None


def test_bad_input_is_explained(mobilenet):
    x = torch.rand(2, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="RGB|grayscale"):
        C.cam(mobilenet, torch.rand(2, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match="batch dimension"):
        C.cam(mobilenet, torch.rand(3, SIZE, SIZE))
    with pytest.raises(ValueError, match="uint8"):
        C.cam(mobilenet, (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="Unknown CAM method"):
        C.cam(mobilenet, x, method="scorecam")
    with pytest.raises(ValueError, match="no layer"):
        C.cam(mobilenet, x, layer="features.99")
    with pytest.raises(ValueError, match="targets"):
        C.cam(mobilenet, x, targets=[1, 2, 3])
    with pytest.raises(TypeError, match="Backbone"):
        C.cam(torch.nn.Conv2d(3, 3, 1), x)


def test_overlay_and_energy():
    heat = np.zeros((2, 4, 4), np.float32)
    heat[0, :2] = 1.0           # all mass in the top half
    heat[1] = 0.5               # flat
    mask = np.zeros((2, 4, 4), bool)
    mask[:, :2] = True
    assert np.allclose(C.energy_inside(heat, mask), [1.0, 0.5])
    assert np.isnan(C.energy_inside(np.zeros((1, 4, 4), np.float32), mask[:1]))[0]
    with pytest.raises(ValueError, match="shape"):
        C.energy_inside(heat, mask[:, :3])
    img = torch.zeros(3, 4, 4)
    out = C.overlay(img, heat[0], alpha=1.0)
    assert out.shape == (4, 4, 3) and out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out[0, 0], out[3, 3])  # hot and cold pixels get different colours
    with pytest.raises(ValueError, match="size"):
        C.overlay(img, np.zeros((5, 5)))


def test_maps_do_not_depend_on_the_batch(mobilenet):
    """cam() runs its backward passes batch by batch (memory); each map is per image, so a
    batch of 2 gives the maps of one pass over all 5, targets kept with their images."""
    torch.manual_seed(1)
    x, targets = torch.rand(5, 3, SIZE, SIZE), [3, 281, 999, 0, 7]
    whole = C.cam(mobilenet, x, targets, batch_size=32)
    assert np.abs(C.cam(mobilenet, x, targets, batch_size=2) - whole).max() < 1e-5
    assert np.abs(C.cam(mobilenet, x, batch_size=2)
                  - C.cam(mobilenet, x, mobilenet(x).argmax(1), batch_size=32)).max() < 1e-5
    with pytest.raises(ValueError, match="batch_size"):
        C.cam(mobilenet, x, targets, batch_size=0)


def test_energy_table_pairs_each_method_with_the_reference():
    mask = np.zeros((3, 4, 4), bool)
    mask[:, :2] = True                      # the object: the top half
    linear = np.full((3, 4, 4), 0.5, np.float32)  # flat maps: half their mass on the object
    on = np.zeros((3, 4, 4), np.float32)
    on[:, :2] = 1.0                         # all the mass on the object ...
    on[2] = 0.0                             # ... except an empty third map
    off = 1.0 - on                          # all the mass off the object (the third is flat)
    frame = np.zeros((3, 4, 4), bool)
    frame[:, 0] = True
    table = C.energy_table({("cnn", "linear"): linear, ("cnn", "on"): on, ("cnn", "off"): off},
                           {"cnn": mask}, frames={"cnn": frame})
    assert np.allclose(table["on object"], [0.5, 1.0, 1 / 6])
    assert table.loc[("cnn", "on"), "empty maps"] == 1 and table["empty maps"].sum() == 1
    assert np.isclose(table.loc[("cnn", "on"), "vs linear"], 0.5)  # the empty map left out
    assert np.isnan(table.loc[("cnn", "linear"), "vs linear"])
    assert np.allclose(table["flat map"], 0.5)
    assert np.isclose(table.loc[("cnn", "on"), "on frame"], 0.5)
    # 'on' is more on the object than linear by 0.5 on both scored images, so with no spread at
    # all its paired se is 0 and the difference is resolved; 'off' differs on 2 of 3 images
    assert table.loc[("cnn", "on"), "vs linear, 2 se"] == "more"
    assert table.loc[("cnn", "off"), "vs linear"] < 0
    assert table.loc[("cnn", "linear"), "vs linear, 2 se"] == ""
    with pytest.raises(ValueError, match="reference"):
        C.energy_table({("vit", "VP"): on}, {"vit": mask})
