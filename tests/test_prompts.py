"""Input prompts (VP), label mapping, VPT tokens and the prompted ViT forward loop."""

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from vplib.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone
from vplib.prompts.input import FixedPatchPrompter, PadPrompter, RandomPatchPrompter
from vplib.prompts.label_map import LabelMapping, greedy_one_to_one
from vplib.prompts.tokens import PromptTokens, prompted_vit_features


def tiny_vit(img_size=32, patch_size=4, depth=3, dim=48, seed=0):
    torch.manual_seed(seed)
    vit = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=dim, depth=depth,
                            num_heads=3, num_classes=20)
    return Backbone(f"tiny_vit_{img_size}_{patch_size}", vit, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    input_size=img_size, crop_pct=1.0, interpolation="bilinear",
                    class_names=[f"c{i}" for i in range(20)], source="random init")


# --------------------------------------------------------------------------- VP

def test_pad_prompt_parameter_count_matches_the_paper():
    assert sum(p.numel() for p in PadPrompter(224, 30).parameters()) == 69_840


@pytest.mark.parametrize("size", [32, 64, 224])
def test_pad_prompt_is_a_frame(size):
    prompter = PadPrompter(size, pad=size // 8)
    for p in prompter.parameters():
        torch.nn.init.ones_(p)
    prompt = prompter.prompt()
    assert prompt.shape == (3, size, size)
    inner = slice(size // 8, size - size // 8)
    assert prompt[:, inner, inner].abs().sum() == 0
    assert prompt.sum() == 3 * (size * size - (size - 2 * (size // 8)) ** 2)


@pytest.mark.parametrize("cls", [PadPrompter, FixedPatchPrompter, RandomPatchPrompter])
def test_zero_prompt_is_identity_and_bad_shapes_are_refused(cls):
    prompter = cls(32, 4)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(prompter(x), x)
    with pytest.raises(ValueError, match="image_size=28"):
        prompter(torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        prompter(torch.randn(2, 1, 32, 32))


def test_random_patch_moves_in_training_and_is_fixed_in_eval():
    prompter = RandomPatchPrompter(32, size=4)
    torch.nn.init.ones_(prompter.patch)
    x = torch.zeros(1, 3, 32, 32)
    torch.manual_seed(0)
    positions = {tuple((prompter(x)[0, 0] != 0).nonzero()[0].tolist()) for _ in range(10)}
    assert len(positions) > 1
    prompter.eval()
    assert torch.equal(prompter(x), prompter(x))
    assert prompter(x)[0, 0, :4, :4].eq(1).all()


# --------------------------------------------------------------------------- label mapping

def test_greedy_one_to_one_takes_largest_counts_first():
    counts = torch.tensor([[5, 4], [9, 1], [0, 3]])  # source x target
    assert greedy_one_to_one(counts).tolist() == [1, 0]
    with pytest.raises(ValueError):
        greedy_one_to_one(torch.ones(2, 3))


def test_label_mapping_reads_source_logits_and_updates_by_mode():
    flm, ilm = LabelMapping(5, 2, "flm"), LabelMapping(5, 2, "ilm")
    for m in (flm, ilm):
        assert m.needs_update()
        m.update(torch.tensor([3, 3, 1, 1, 1]), torch.tensor([0, 0, 1, 1, 0]))
        assert m.mapping.tolist() == [3, 1]
        logits = torch.arange(10.0).view(2, 5)
        assert torch.equal(m(logits), logits[:, [3, 1]])
    assert not flm.needs_update() and ilm.needs_update()
    with pytest.raises(ValueError, match="mode"):
        LabelMapping(5, 2, "xyz")


# --------------------------------------------------------------------------- VPT

@pytest.mark.parametrize("length", [1, 10, 50])
def test_vpt_deep_parameter_count_on_vit_b16(length):
    tokens = PromptTokens(768, 12, length, deep=True, patch_size=16)
    assert sum(p.numel() for p in tokens.parameters()) == 9_216 * length
    shallow = PromptTokens(768, 12, length, deep=False, patch_size=16)
    assert sum(p.numel() for p in shallow.parameters()) == 768 * length


def test_vpt_init_bound_follows_the_paper():
    tokens = PromptTokens(768, 12, 100, deep=True, patch_size=16)
    bound = (6 / (3 * 16 * 16 + 768)) ** 0.5
    assert tokens.prompts.abs().max() <= bound and tokens.prompts.abs().max() > 0.9 * bound


class _NoTokens(torch.nn.Module):
    def setup(self, z):
        pass

    def tokens(self, i, batch):
        return None


@pytest.mark.parametrize("img_size, patch", [(32, 4), (28, 7), (48, 16)])
def test_prompted_forward_without_tokens_equals_the_vit(img_size, patch):
    b = tiny_vit(img_size, patch)
    z = torch.randn(2, 3, img_size, img_size)
    with torch.no_grad():
        ref = b.features(z)
        ours = prompted_vit_features(b.model, z, _NoTokens())
    assert torch.allclose(ours, ref, atol=1e-6)


@pytest.mark.parametrize("deep", [False, True])
def test_tokens_enter_after_the_class_token_and_are_dropped_before_pooling(deep):
    b = tiny_vit()
    tokens = PromptTokens(48, 3, 5, deep=deep, patch_size=4)
    z = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        plain = b.features(z)
    seen = []
    b.model.blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape))
    with torch.no_grad():
        out = prompted_vit_features(b.model, z, tokens)
    assert seen == [torch.Size([2, 1 + 5 + 64, 48])]
    assert out.shape == plain.shape and not torch.allclose(out, plain)


def test_deep_tokens_replace_earlier_prompt_outputs():
    b = tiny_vit()
    tokens = PromptTokens(48, 3, 2, deep=True, patch_size=4)
    inputs = []
    b.model.blocks[2].register_forward_pre_hook(lambda m, args: inputs.append(args[0]))
    with torch.no_grad():
        prompted_vit_features(b.model, torch.randn(1, 3, 32, 32), tokens)
    assert torch.equal(inputs[0][0, 1:3], tokens.prompts[2])


def test_wrong_image_size_for_the_vit_is_a_clear_error():
    b = tiny_vit()
    with pytest.raises(ValueError, match="expects"):
        prompted_vit_features(b.model, torch.randn(1, 3, 64, 64),
                              PromptTokens(48, 3, 2, deep=True, patch_size=4))


def test_prompted_inputs_show_what_the_backbone_sees():
    import vplib
    from vplib.plots import prompted_inputs, signed_image

    model = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4)
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    plain = prompted_inputs(model, images)  # zero prompt: the images themselves
    assert torch.allclose(plain, images.float() / 255, atol=1e-6)
    with torch.no_grad():
        model.input_prompt.top.fill_(10.0)  # a huge prompt saturates the top rows only
    seen = prompted_inputs(model, images)
    assert torch.equal(seen[:, :, :4], torch.ones_like(seen[:, :, :4]))
    assert torch.allclose(seen[:, :, 4:], plain[:, :, 4:], atol=1e-6)
    img = signed_image(torch.tensor([[[-2.0, 0.0, 1.0]]]))
    assert np.allclose(img.ravel(), [0.0, 0.5, 0.75])
