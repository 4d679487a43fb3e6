"""Pretrain the course's source Vision Transformer on Fashion-MNIST (CPU-friendly recipe).

No pretrained transformer installs offline, so the course trains its own: a timm
``VisionTransformer`` (Dosovitskiy et al., ICLR 2021) with a convolutional stem (Xiao et al.,
NeurIPS 2021, "Early convolutions help transformers see better"; the stem is ours: two stages
of two 3x3 conv + BN + GELU layers, the first of each with stride 2, and a 1x1 projection,
giving the 7x7 token grid of a 4x4 patch embedding) on the Fashion-MNIST training split
(validation carved from it; the test split is only evaluated at the end), with the same trainer
as every chapter (``vplib.train.fit``: AdamW, linear warmup + cosine, label smoothing, random
shift + horizontal flip on the device, exact resume after an interruption).

    python -m vplib.pretrain --out runs/vit_fashion            # the recipe below
    python -m vplib.pretrain --epochs 1 --max-train 512 ...     # a smoke run
    python -m vplib.pretrain --out runs/vit_fashion --ship      # install it into vplib/assets

Width 160, depth 6, 4 heads: 1.98 M parameters, about 5 minutes an epoch on 2 CPU cores. With
a plain 7x7 patch embedding (16 tokens) the same recipe underfit and stopped near 86% test
accuracy (appendix A of the book). The model sees 3-channel images (the grayscale channel
repeated), so the same input prompts work on it as on the ImageNet CNNs.

Outputs in ``--out``: ``history.json``, the checkpoint of the last epoch (``last.pt``, for
resuming), and ``vit_fashion.safetensors`` (fp16 weights of the epoch chosen on validation)
with its sha256 in ``vit_fashion.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .backbones import sha256sum
from .data import load_dataset
from .train import evaluate, fit

FASHION_MEAN = (0.286, 0.286, 0.286)  # of the Fashion-MNIST training images, in [0, 1]
FASHION_STD = (0.353, 0.353, 0.353)


@dataclass(frozen=True)
class ViTConfig:
    img_size: int = 28
    patch_size: int = 4
    embed_dim: int = 160
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 10
    stem: str = "conv"  # "patch": timm's linear patch embedding; "conv": ConvStem


@dataclass(frozen=True)
class Recipe:
    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    augment: str = "crop_flip"
    seed: int = 0


def _conv_stem_class():
    from timm.layers import PatchEmbed

    class ConvStem(PatchEmbed):
        """timm's ``PatchEmbed`` with its single strided projection replaced by a small
        convolutional stem (Xiao et al., 2021, "Early convolutions help transformers see
        better"): ``log2(patch)`` stages of two 3x3 conv + BN + GELU layers (the first with
        stride 2), then a 1x1 projection to the embedding width. Same interface and token
        grid as a ``patch``-sized patch embedding, so everything that reads ``patch_embed``
        (token prompts, InsVP) works."""

        def __init__(self, img_size, patch_size, in_chans, embed_dim, **kwargs):
            super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                             embed_dim=embed_dim, **kwargs)
            stages = patch_size.bit_length() - 1
            if 2 ** stages != patch_size:
                raise ValueError(f"the conv stem needs a power-of-two patch size, got {patch_size}")
            layers, width = [], in_chans
            for i in range(stages):
                out = embed_dim // 2 ** (stages - i)
                for stride in (2, 1):
                    layers += [nn.Conv2d(width, out, 3, stride=stride, padding=1, bias=False),
                               nn.BatchNorm2d(out), nn.GELU()]
                    width = out
            layers.append(nn.Conv2d(width, embed_dim, 1))
            self.proj = nn.Sequential(*layers)

    return ConvStem


def create_vit(config: ViTConfig) -> nn.Module:
    from timm.layers import PatchEmbed
    from timm.models.vision_transformer import VisionTransformer

    stems = {"patch": PatchEmbed, "conv": _conv_stem_class()}
    if config.stem not in stems:
        raise ValueError(f"unknown stem {config.stem!r}; use one of {sorted(stems)}")
    return VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, in_chans=3,
                             embed_dim=config.embed_dim, depth=config.depth,
                             num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
                             num_classes=config.num_classes, embed_layer=stems[config.stem])


class Normalized(nn.Module):
    """Images in [0, 1] -> Fashion-MNIST normalisation -> the ViT (what ``fit`` trains)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.register_buffer("mean", torch.tensor(FASHION_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(FASHION_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit((x - self.mean) / self.std)


def pretrain(out: Path, config: ViTConfig = ViTConfig(), recipe: Recipe = Recipe(), *,
             max_train: int | None = None, max_eval: int | None = None,
             resume: bool = True) -> dict:
    """Train, select on validation, evaluate on test once, and save the fp16 safetensors."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    data = load_dataset("fashion_mnist", size=config.img_size, rgb=True, seed=recipe.seed,
                        max_train=max_train, max_eval=max_eval)
    model = Normalized(create_vit(config))
    started = time.perf_counter()
    history = fit(model, data.train, data.val, epochs=recipe.epochs, lr=recipe.lr,
                  weight_decay=recipe.weight_decay, batch_size=recipe.batch_size,
                  warmup_epochs=recipe.warmup_epochs, label_smoothing=recipe.label_smoothing,
                  augment=recipe.augment, seed=recipe.seed, checkpoint_dir=out, resume=resume)
    seconds = time.perf_counter() - started
    history.to_json(out / "history.json")
    test = evaluate(model, data.test)
    weights = out / "vit_fashion.safetensors"
    save_file({k: v.detach().to(torch.float16).contiguous()
               for k, v in model.vit.state_dict().items()}, str(weights))
    digest = sha256sum(weights)
    card = {"config": asdict(config), "recipe": asdict(recipe), "mean": FASHION_MEAN,
            "std": FASHION_STD, "best_epoch": history.best_epoch,
            "val_acc": history.best["val_acc"], "test_acc": test["acc"],
            "train_seconds": round(seconds, 1), "n_train": len(data.train),
            "n_test": len(data.test), "params": sum(p.numel() for p in model.parameters()),
            "sha256": digest, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    (out / "vit_fashion.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


SLICE = 1000  # the test suite re-checks the shipped model on the first SLICE test images


def ship(run_dir: Path) -> dict:
    """Copy a finished run into the package (``vplib/assets``): the fp16 weights and the card,
    to which it adds the training history (so the model card travels with the package) and
    the shipped model's accuracy on the first ``SLICE`` test images, measured through
    ``vplib.load("vit_fashion")`` (fp16 weights, as users get them)."""
    import shutil

    from .backbones import ASSETS_DIR, load

    ASSETS_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / "vit_fashion.safetensors", ASSETS_DIR / "vit_fashion.safetensors")
    card = json.loads((run_dir / "vit_fashion.json").read_text())
    card["history"] = json.loads((run_dir / "history.json").read_text())
    (ASSETS_DIR / "vit_fashion.json").write_text(json.dumps(card, indent=2) + "\n")
    test = load_dataset("fashion_mnist", size=card["config"]["img_size"], rgb=True).test
    first = test.select(torch.arange(SLICE))
    card["test_slice"] = {"first": SLICE, "acc": evaluate(load("vit_fashion"), first)["acc"]}
    (ASSETS_DIR / "vit_fashion.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description="Pretrain the source ViT on Fashion-MNIST.")
    parser.add_argument("--out", type=Path, default=Path("runs/vit_fashion"))
    parser.add_argument("--epochs", type=int, default=Recipe.epochs)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-eval", type=int, default=None)
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--ship", action="store_true",
                        help="copy the finished run in --out into vplib/assets (no training)")
    args = parser.parse_args()
    if args.ship:
        print(json.dumps(ship(args.out), indent=2))
        return
    card = pretrain(args.out, recipe=Recipe(epochs=args.epochs), max_train=args.max_train,
                    max_eval=args.max_eval, resume=not args.no_resume)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
