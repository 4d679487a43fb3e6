"""Pretrain the course's source Vision Transformers on 2 CPU cores, offline.

No pretrained transformer installs offline, so the course makes its own: timm
``VisionTransformer`` s (Dosovitskiy et al., ICLR 2021) with 28 px inputs, a 7x7 token grid of
width 160 and 6 blocks of 4 heads, so that every method of ``vplib.METHODS`` accepts them. A
source is worth prompting only if its frozen features beat the raw pixels on the targets, so
the recipe was chosen by measurement (:data:`CANDIDATES`, :func:`compare`; appendix A):

* ``distill`` (:func:`distill`): knowledge distillation (Hinton et al., 2015) from the
  offline ImageNet MobileNetV2 on unlabelled images that are not the targets (the Fashion-MNIST
  training split and crops of the bundled photos), with teacher and student on the same
  augmented views (Beyer et al., CVPR 2022). Differs from Beyer et al.: a fixed set of views
  whose teacher outputs are computed once (see the comment above :class:`DistillRecipe`).
* ``fractals``: formula-driven supervised pretraining on fractal classes (Kataoka et al.,
  ACCV 2020, FractalDB; :func:`fractal_images` says where it differs).
* ``hybrid_distill``: the hybrid ViT of Dosovitskiy et al. (section 3.1) with MobileNetV2's
  first four stages (frozen, ImageNet weights) as the patch embedding, distilled as above.
  The best on validation transfer: scaled up, it is the shipped ``vit_distilled``.

``vit_fashion``, the first source, is supervised on Fashion-MNIST with ``vplib.train.fit``
and a convolutional stem (Xiao et al., NeurIPS 2021; the stem is ours: two stages of two 3x3
conv + BN + GELU layers, the first of each with stride 2, and a 1x1 projection).

    python -m vplib.pretrain                                  # vit_distilled (SOURCES)
    python -m vplib.pretrain --ship                           # install it into vplib/assets
    python -m vplib.pretrain --recipe vit_fashion             # the first source
    python -m vplib.pretrain --candidate fractals             # one candidate + its probe
    python -m vplib.pretrain --compare book/results/A_candidates.json
    python -m vplib.pretrain --views 512 --epochs 1 --out runs/smoke   # a smoke run

Every run is resumable (a checkpoint after each epoch, exact on CPU) and writes
``NAME.safetensors`` (fp16 weights of the epoch chosen on validation), its card ``NAME.json``
(config, recipe, sha256) and ``history.json`` into ``--out`` (default ``runs/NAME``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import backbones
from .backbones import IMAGENET_MEAN, IMAGENET_STD, load, sha256sum, source_vit
from .baselines import PROBE_C, logistic_probe, pixel_features  # noqa: F401 (re-exported)
from .data import Split, convert, load_dataset, sample_photos, stratified_split, stratified_subset
from .experiments import _git_commit
from .train import _atomic_save, _atomic_write_json, _cosine_with_warmup, evaluate, fit
from .vit import ViTConfig, create_vit  # noqa: F401 (the architecture; re-exported)

FASHION_MEAN = (0.286, 0.286, 0.286)  # of the Fashion-MNIST training images, in [0, 1]
FASHION_STD = (0.353, 0.353, 0.353)


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
    data: str = "fashion_mnist"  # or "fractals": formula-driven classes (fractal_images)
    fractal_classes: int = 100
    fractal_per_class: int = 300


class Normalized(nn.Module):
    """Images in [0, 1] -> Fashion-MNIST normalisation -> the ViT (what ``fit`` trains)."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.register_buffer("mean", torch.tensor(FASHION_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(FASHION_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vit((x - self.mean) / self.std)


def _supervised_data(recipe: "Recipe", size: int, max_train, max_eval):
    """(train, val, test or None) for a supervised recipe."""

    if recipe.data == "fashion_mnist":
        d = load_dataset("fashion_mnist", size=size, rgb=True, seed=recipe.seed,
                         max_train=max_train, max_eval=max_eval)
        return d.train, d.val, d.test
    if recipe.data == "fractals":
        images, labels = fractal_images(recipe.fractal_classes, recipe.fractal_per_class, size,
                                        recipe.seed)
        rest, carved = stratified_split(labels.numpy(), 0.1, recipe.seed)
        full = Split(images.expand(-1, 3, -1, -1).contiguous(), labels)
        train, val = full.select(rest), full.select(carved)
        if max_train is not None:
            train = train.select(torch.arange(min(max_train, len(train))))
        return train, val, None
    raise ValueError(f"unknown pretraining data {recipe.data!r}; use fashion_mnist or fractals")


def pretrain(out: Path, config: ViTConfig = ViTConfig(), recipe: Recipe = Recipe(), *,
             max_train: int | None = None, max_eval: int | None = None,
             resume: bool = True, name: str = "vit_fashion") -> dict:
    """Supervised pretraining (``recipe.data``: Fashion-MNIST, or formula-driven fractal
    classes): train, select on validation, evaluate on test once (when the data has a test
    split), and save the fp16 safetensors ``out/{name}.safetensors`` and its card."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    train, val, test = _supervised_data(recipe, config.img_size, max_train, max_eval)
    model = Normalized(create_vit(config))
    if not resume:  # asked to start again: the previous run's checkpoint goes
        (out / "last.pt").unlink(missing_ok=True)
    history = fit(model, train, val, epochs=recipe.epochs, lr=recipe.lr,
                  weight_decay=recipe.weight_decay, batch_size=recipe.batch_size,
                  warmup_epochs=recipe.warmup_epochs, label_smoothing=recipe.label_smoothing,
                  augment=recipe.augment, seed=recipe.seed, checkpoint_dir=out, resume=resume)
    seconds = sum(r["seconds"] for r in history.epochs)  # all epochs, resumed ones included
    history.to_json(out / "history.json")
    weights = out / f"{name}.safetensors"
    save_file({k: v.detach().to(torch.float16).contiguous()
               for k, v in model.vit.state_dict().items()}, str(weights))
    digest = sha256sum(weights)
    card = {"config": asdict(config), "recipe": asdict(recipe), "mean": FASHION_MEAN,
            "std": FASHION_STD, "best_epoch": history.best_epoch,
            "val_acc": history.best["val_acc"],
            "test_acc": evaluate(model, test)["acc"] if test is not None else None,
            "train_seconds": round(seconds, 1), "n_train": len(train),
            "n_test": len(test) if test is not None else 0,
            "params": sum(p.numel() for p in model.parameters()),
            "sha256": digest, "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


# --------------------------------------------------------------------------- distillation
# A student ViT learns to reproduce a frozen ImageNet CNN (the teacher) on images that are not
# the course's targets (Hinton et al., 2015; Beyer et al., CVPR 2022, "Knowledge distillation:
# a good teacher is patient and consistent": teacher and student see the *same* augmented
# view, mixup included). Where this differs from Beyer et al.: their views are drawn afresh
# every step; on 2 CPU cores the teacher (a depthwise-convolution CNN, about 600 images/s at
# 64 px) would cost a third of the budget, so a fixed set of ``n_views`` views is drawn once,
# the teacher's outputs on them are stored, and the student passes over them ``epochs`` times.
# The student matches the teacher's 1000 logits (KL divergence) and, through a linear
# projection of its class token that is dropped after training, the teacher's pooled
# penultimate features (mean squared error on standardised features).


@dataclass(frozen=True)
class DistillRecipe:
    teacher: str = "mobilenet_v2"
    teacher_size: int = 64  # the teacher sees each view upsampled to this side
    sources: tuple = ("fashion", "photos")  # see distill_pool()
    pool_per_source: int = 50_000
    n_views: int = 150_000
    mix_prob: float = 0.5  # share of views that are mixup blends of two crops
    min_scale: float = 0.25  # random resized crop: smallest area kept
    epochs: int = 4
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 0.25
    feature_weight: float = 1.0
    temperature: float = 1.0
    n_val: int = 2_000  # views of held-out pool images: the selection criterion
    seed: int = 0


def photo_crops(n: int, size: int, seed: int) -> torch.Tensor:
    """``n`` random square crops (side 8-60% of the short side) of the bundled real photos
    (:func:`vplib.data.sample_photos`), in grayscale, resized to ``size``: uint8
    ``(n, 1, size, size)``. The photos are not any of the course's target datasets."""
    import numpy as np

    rng = np.random.default_rng(seed)
    photos = [torch.from_numpy(p).permute(2, 0, 1).float().mul(
        torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        for p in sample_photos().values()]
    out = torch.empty(n, 1, size, size, dtype=torch.uint8)
    for i in range(n):
        p = photos[rng.integers(len(photos))]
        h, w = p.shape[-2:]
        side = int(min(h, w) * rng.uniform(0.08, 0.6))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = p[None, :, top:top + side, left:left + side]
        out[i] = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True,
                               align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)
    return out


def fractal_images(n_classes: int, per_class: int, size: int, seed: int,
                   points: int = 6_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Formula-driven images (Kataoka et al., ACCV 2020, FractalDB): each class is an
    iterated function system of 2-4 random affine maps, each image a rendering of the class's
    attractor with one map's coefficients jittered by up to 10% (FractalDB's intra-class
    variation), drawn as white points on black. Classes whose attractor fills less than 4% or
    more than 60% of the canvas are redrawn. Returns uint8 ``(N, 1, size, size)`` images and
    int64 labels. Differs from FractalDB: grayscale, small canvases, fewer points, and a fill
    filter instead of its sigma-factor."""
    import numpy as np

    rng = np.random.default_rng(seed)

    def render(maps: np.ndarray, n_img: int) -> np.ndarray:
        # maps: (n_img, k, 6) -> point clouds by the chaos game, one chain per image
        k = maps.shape[1]
        det = np.abs(maps[..., 0] * maps[..., 3] - maps[..., 1] * maps[..., 2]) + 1e-3
        prob = det / det.sum(1, keepdims=True)
        chains = 32
        xy = np.zeros((n_img, chains, 2))
        steps = points // chains + 20
        cloud = np.empty((n_img, chains, steps - 20, 2))
        cum = prob.cumsum(1)
        for t in range(steps):
            u = rng.random((n_img, chains, 1))
            j = np.minimum((u > cum[:, None, :]).sum(-1), k - 1)  # (n_img, chains)
            m = np.take_along_axis(maps, j[..., None], 1)  # (n_img, chains, 6)
            x, y = xy[..., 0], xy[..., 1]
            xy = np.stack([m[..., 0] * x + m[..., 1] * y + m[..., 4],
                           m[..., 2] * x + m[..., 3] * y + m[..., 5]], -1)
            if t >= 20:
                cloud[:, :, t - 20] = xy
        cloud = cloud.reshape(n_img, -1, 2)
        lo, hi = cloud.min(1, keepdims=True), cloud.max(1, keepdims=True)
        span = np.maximum((hi - lo).max(-1, keepdims=True), 1e-6)
        pix = ((cloud - lo) / span * (size - 3) + 1).astype(np.int64).clip(0, size - 1)
        flat = pix[..., 1] * size + pix[..., 0] + np.arange(n_img)[:, None] * size * size
        hist = np.bincount(flat.ravel(), minlength=n_img * size * size).reshape(n_img, size, size)
        return np.minimum(hist * 64, 255).astype(np.uint8)

    classes = []
    while len(classes) < n_classes:
        k = rng.integers(2, 5)
        maps = rng.uniform(-1, 1, (k, 6))
        fill = (render(np.repeat(maps[None], 4, 0), 4) > 0).mean()
        if 0.04 <= fill <= 0.6:
            classes.append(maps)
    images, labels = [], []
    for c, maps in enumerate(classes):
        jitter = np.repeat(maps[None], per_class, 0).copy()
        which = rng.integers(0, len(maps), per_class)
        jitter[np.arange(per_class), which, :4] *= rng.uniform(0.9, 1.1, (per_class, 4))
        images.append(render(jitter, per_class))
        labels.append(np.full(per_class, c))
    return (torch.from_numpy(np.concatenate(images))[:, None].contiguous(),
            torch.from_numpy(np.concatenate(labels)).long())


def distill_pool(sources: tuple, size: int, per_source: int, seed: int) -> torch.Tensor:
    """Unlabelled uint8 images ``(N, 1, size, size)`` to distil on: ``"fashion"`` (the
    Fashion-MNIST training split as ``vplib.data`` carves it; its validation and test images
    and all labels are left out), ``"photos"`` (:func:`photo_crops`), ``"fractals"``
    (:func:`fractal_images`, labels dropped). At most ``per_source`` images from each."""

    parts = []
    for source in sources:
        if source == "fashion":
            train = load_dataset("fashion_mnist", seed=seed).train
            parts.append(convert(stratified_subset(train, per_source, seed).images, size=size))
        elif source == "photos":
            parts.append(photo_crops(per_source, size, seed))
        elif source == "fractals":
            parts.append(fractal_images(100, per_source // 100, size, seed)[0])
        else:
            raise ValueError(f"unknown distillation source {source!r}; use fashion, photos "
                             "or fractals")
    return torch.cat(parts)


def make_views(pool: torch.Tensor, n: int, *, min_scale: float, mix_prob: float,
               generator: torch.Generator) -> torch.Tensor:
    """``n`` augmented views of random ``pool`` images: a random resized crop (area
    ``min_scale``-1, aspect 3/4-4/3), a horizontal flip half of the time, and for a
    ``mix_prob`` share a mixup blend (weight uniform in 0-1) with a second such view. uint8."""
    size = pool.shape[-1]
    out = torch.empty(n, 1, size, size, dtype=torch.uint8)
    for start in range(0, n, 1024):
        b = min(1024, n - start)

        def crops() -> torch.Tensor:
            x = pool[torch.randint(len(pool), (b,), generator=generator)].float()
            area = min_scale + (1 - min_scale) * torch.rand(b, generator=generator)
            ratio = torch.exp((torch.rand(b, generator=generator) - 0.5) * 2 * math.log(4 / 3))
            sx = (area * ratio).sqrt().clamp(max=1)
            sy = (area / ratio).sqrt().clamp(max=1)
            tx = (1 - sx) * (2 * torch.rand(b, generator=generator) - 1)
            ty = (1 - sy) * (2 * torch.rand(b, generator=generator) - 1)
            flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
            theta = torch.zeros(b, 2, 3)
            theta[:, 0, 0], theta[:, 0, 2] = sx * flip, tx
            theta[:, 1, 1], theta[:, 1, 2] = sy, ty
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            return F.grid_sample(x, grid, mode="bilinear", align_corners=False)

        x, y = crops(), crops()
        lam = torch.rand(b, 1, 1, 1, generator=generator)
        mixed = torch.rand(b, 1, 1, 1, generator=generator) < mix_prob
        x = torch.where(mixed, lam * x + (1 - lam) * y, x)
        out[start:start + b] = x.round().clamp(0, 255).to(torch.uint8)
    return out


@torch.no_grad()
def teacher_outputs(teacher, views: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits and pooled features on uint8 gray ``views`` upsampled to
    ``size``: float16 ``(N, classes)`` and ``(N, features)``."""
    model = teacher.to(memory_format=torch.channels_last)  # 3x faster on CPU here
    logits, feats = [], []
    for chunk in views.split(256):
        x = F.interpolate(chunk.float().div(255), size=(size, size), mode="bilinear",
                          align_corners=False).expand(-1, 3, -1, -1)
        z = teacher.normalize(x).contiguous(memory_format=torch.channels_last)
        f = model.features(z)
        feats.append(f.half())
        logits.append(model.source_head(f).half())
    return torch.cat(logits), torch.cat(feats)


class Student(nn.Module):
    """A ViT whose class token also predicts the teacher's features (``aux``: dropped when
    the ViT is shipped). Images in [0, 1] -> ``(logits, predicted standardised features)``."""

    def __init__(self, vit: nn.Module, teacher_dim: int, mean, std):
        super().__init__()
        self.vit = vit
        self.aux = nn.Linear(vit.embed_dim, teacher_dim)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor):
        z = self.vit.forward_features((x - self.mean) / self.std)
        pre = self.vit.forward_head(z, pre_logits=True)
        return self.vit.head(pre), self.aux(pre)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.vit.patch_embed.modules():  # a frozen CNN stem keeps its statistics
            if isinstance(m, nn.BatchNorm2d) and not m.weight.requires_grad:
                m.eval()
        return self


def _loss(student_out, t_logits, t_feats, recipe: DistillRecipe, reduction: str = "mean"):
    logits, feats = student_out
    t = recipe.temperature
    kl = F.kl_div(F.log_softmax(logits.float() / t, 1), F.log_softmax(t_logits.float() / t, 1),
                  log_target=True, reduction="none").sum(1) * t * t
    mse = (feats.float() - t_feats.float()).pow(2).mean(1)
    loss = kl + recipe.feature_weight * mse
    return (loss.mean(), kl.mean(), mse.mean()) if reduction == "mean" else loss


def distill(out: Path, config: ViTConfig, recipe: DistillRecipe = DistillRecipe(), *,
            name: str = "vit_distilled", resume: bool = True, verbose: bool = True,
            on_epoch_end=None) -> dict:
    """Distil ``recipe.teacher`` into a new ViT (see the comment above :class:`DistillRecipe`).

    Resumable: the teacher's outputs are stored in ``out/teacher.pt`` once, and ``out/last.pt``
    after every epoch; a killed run started again with the same arguments continues where it
    stopped and ends with the same weights. The epoch is chosen on the distillation loss on
    ``n_val`` views of pool images held out from training; ``on_epoch_end(epoch, record)``
    is called after each epoch's checkpoint is written. Writes ``out/{name}.safetensors``
    (fp16, the ``VisionTransformer`` only) and its card ``out/{name}.json``.
    """
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    teacher_file = out / "teacher.pt"
    settings = {"config": asdict(config), "recipe": asdict(recipe)}
    settings["recipe"]["sources"] = list(recipe.sources)
    if resume and teacher_file.exists():
        cache = torch.load(teacher_file, weights_only=False)
        if cache["settings"] != settings:
            raise ValueError(f"{teacher_file} was made with other settings: delete {out} or "
                             "pass resume=False.")
    else:
        g = torch.Generator().manual_seed(recipe.seed)
        pool = distill_pool(recipe.sources, config.img_size, recipe.pool_per_source, recipe.seed)
        order = torch.randperm(len(pool), generator=g)
        held_out = max(1, len(pool) // 50)  # 2% of the pool only ever appears in val views
        train_pool, val_pool = pool[order[held_out:]], pool[order[:held_out]]
        views = make_views(train_pool, recipe.n_views, min_scale=recipe.min_scale,
                           mix_prob=recipe.mix_prob, generator=g)
        val_views = make_views(val_pool, recipe.n_val, min_scale=recipe.min_scale,
                               mix_prob=recipe.mix_prob, generator=g)
        teacher = load(recipe.teacher)
        t0 = time.perf_counter()
        logits, feats = teacher_outputs(teacher, torch.cat([views, val_views]),
                                        recipe.teacher_size)
        cache = {"settings": settings, "views": views, "val_views": val_views,
                 "logits": logits, "feats": feats, "pool_size": len(pool),
                 "teacher_seconds": round(time.perf_counter() - t0, 1),
                 "class_names": teacher.class_names}
        _atomic_save(cache, teacher_file)
    n = recipe.n_views
    views, val_views = cache["views"], cache["val_views"]
    feats = cache["feats"].float()
    f_mean, f_std = feats[:n].mean(0), feats[:n].std(0) + 1e-3
    z_feats = ((feats - f_mean) / f_std).half()
    t_logits = cache["logits"]

    torch.manual_seed(recipe.seed)
    vit = create_vit(config)
    if config.stem == "hybrid":  # the ImageNet CNN's first stages, frozen
        cnn = vit.patch_embed.proj[0]
        cnn.load_state_dict(load("mobilenet_v2").model.features[:4].state_dict())
        cnn.requires_grad_(False)
    model = Student(vit, feats.shape[1], IMAGENET_MEAN, IMAGENET_STD)
    params = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = math.ceil(n / recipe.batch_size)
    optimizer = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_with_warmup(
        recipe.epochs * steps_per_epoch, int(round(recipe.warmup_epochs * steps_per_epoch))))
    generator = torch.Generator().manual_seed(recipe.seed + 1)
    history = {"config": settings, "epochs": [], "best_epoch": None}
    best_state, start = None, 0
    ckpt = out / "last.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        history, best_state, start = state["history"], state["best_state"], state["epoch"] + 1
        if verbose:
            print(f"Resumed from {ckpt} after epoch {start} of {recipe.epochs}.")

    for epoch in range(start, recipe.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=generator)
        sums = torch.zeros(3)
        for step in range(steps_per_epoch):
            idx = perm[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            x = views[idx].float().div_(255).expand(-1, 3, -1, -1)
            loss, kl, mse = _loss(model(x), t_logits[idx], z_feats[idx], recipe)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            sums += torch.stack([loss.detach(), kl.detach(), mse.detach()]) * len(idx)
        seconds = time.perf_counter() - t0
        model.eval()
        with torch.no_grad():  # one pass over the validation views: loss and agreement
            outs = [model(v.float().div(255).expand(-1, 3, -1, -1)) for v in val_views.split(512)]
            v_logits, v_feats = (torch.cat(parts) for parts in zip(*outs))
        val = _loss((v_logits, v_feats), t_logits[n:], z_feats[n:], recipe, reduction="none")
        agree = (v_logits.argmax(1) == t_logits[n:].float().argmax(1)).float().mean().item()
        record = {"epoch": epoch + 1, "train_loss": sums[0].item() / n,
                  "train_kl": sums[1].item() / n, "train_feature_mse": sums[2].item() / n,
                  "val_loss": val.mean().item(), "val_top1_agreement": agree,
                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 1),
                  "images_per_s": round(n / seconds, 1)}
        history["epochs"].append(record)
        best = history["best_epoch"]
        if best is None or record["val_loss"] < history["epochs"][best - 1]["val_loss"]:
            history["best_epoch"] = epoch + 1
            best_state = {k: v.clone() for k, v in model.vit.state_dict().items()}
        if verbose:
            print(f"epoch {epoch + 1}/{recipe.epochs}  train {record['train_loss']:.4f} | val "
                  f"{record['val_loss']:.4f}, top-1 agreement {agree:.3f} | {seconds:.0f} s",
                  flush=True)
        _atomic_save({"epoch": epoch, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                      "history": history, "best_state": best_state}, ckpt)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, record)

    model.vit.load_state_dict(best_state)
    (out / "history.json").write_text(json.dumps(history, indent=2) + "\n")
    weights = out / f"{name}.safetensors"
    save_file({k: v.detach().to(torch.float16).contiguous()
               for k, v in model.vit.state_dict().items()}, str(weights))
    card = {"name": name, "kind": "distilled", "config": asdict(config),
            "recipe": settings["recipe"], "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "class_names": "imagenet", "best_epoch": history["best_epoch"],
            "val_loss": history["epochs"][history["best_epoch"] - 1]["val_loss"],
            "val_top1_agreement":
                history["epochs"][history["best_epoch"] - 1]["val_top1_agreement"],
            "pool_size": cache["pool_size"], "teacher_seconds": cache["teacher_seconds"],
            "train_seconds": round(sum(r["seconds"] for r in history["epochs"]), 1),
            "params": sum(p.numel() for p in model.vit.parameters()),
            "sha256": sha256sum(weights), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    (out / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    if verbose:
        print(f"{name}: {time.perf_counter() - started:.0f} s in this call")
    return card


# --------------------------------------------------------------------------- transfer probe

TARGETS = ("mnist", "animal_silhouettes", "fashion_mnist")


@torch.no_grad()
def class_token_features(backbone, images: torch.Tensor) -> torch.Tensor:
    """The frozen backbone's pooled features (a ViT's final class token) of uint8 images."""
    return torch.cat([backbone.features(backbone.normalize(chunk.float() / 255))
                      for chunk in images.split(512)])


@torch.no_grad()
def block_features(backbone, images: torch.Tensor, block: int) -> torch.Tensor:
    """A ViT backbone's tokens after block ``block`` (1-based) of uint8 images, through the
    final norm: the class token and the mean patch token, concatenated."""
    model = backbone.model
    if not 1 <= block <= len(model.blocks):
        raise ValueError(f"block must be in 1..{len(model.blocks)}, got {block}")
    out = []
    for chunk in images.split(512):
        x = model._pos_embed(model.patch_embed(backbone.normalize(chunk.float() / 255)))
        for layer in model.blocks[:block]:
            x = layer(x)
        x = model.norm(x)
        out.append(torch.cat([x[:, 0], x[:, model.num_prefix_tokens:].mean(1)], dim=1))
    return torch.cat(out)


def transfer(backbone=None, targets=TARGETS, *, n_train: int = 3600, seed: int = 0,
             test: bool = False, max_eval: int | None = None, size: int | None = None,
             block: int | None = None) -> dict:
    """Converged class-token linear probe of ``backbone`` (``None``: the raw pixels) on each
    target at ``size`` (default: the backbone's input size; pixels: native 28 px), trained on
    ``n_train`` images (stratified), ``C`` chosen on validation; test accuracy only when
    ``test=True``. With ``block``, a ViT is probed on :func:`block_features` of that block."""
    if size is None and backbone is not None:
        size = backbone.input_size
    if block is not None and backbone is None:
        raise ValueError("block needs a ViT backbone; the raw pixels have no blocks")
    results = {}
    for name in targets:
        d = load_dataset(name, size=size, rgb=backbone is not None, seed=seed,
                         max_train=n_train, max_eval=max_eval)

        def feats(split):
            if backbone is None:
                return pixel_features(split)
            if block is not None:
                return block_features(backbone, split.images, block).numpy(), split.labels.numpy()
            return class_token_features(backbone, split.images).numpy(), split.labels.numpy()

        results[name] = logistic_probe(feats(d.train), feats(d.val),
                                       feats(d.test) if test else None)
        results[name]["n_train"] = len(d.train)
    return results



# --------------------------------------------------------------------------- candidates
# The recipes compared at small scale (about 15 minutes of one CPU thread each) before the
# winner is trained at full scale; appendix A tables their validation transfer.
SMALL = dict(pool_per_source=30_000, n_views=24_000, epochs=3)
CANDIDATES = {
    "fractals": ("supervised on formula-driven fractal classes (FractalDB-style)",
                 ViTConfig(num_classes=100),
                 Recipe(data="fractals", epochs=2, fractal_per_class=300, warmup_epochs=0.25)),
    "distill": ("distilled from MobileNetV2 on Fashion-MNIST images + photo crops",
                ViTConfig(num_classes=1000), DistillRecipe(**SMALL)),
    "hybrid_distill": ("hybrid (frozen MobileNetV2 stages 1-4 as patch embedding), "
                       "distilled as `distill`", ViTConfig(num_classes=1000, stem="hybrid"),
                       DistillRecipe(**SMALL)),
}


def run_candidate(name: str, root: Path) -> dict:
    """Train candidate ``name`` into ``root/name`` (resumable) and measure its validation
    transfer; the record is written to ``root/name/transfer.json``."""

    description, config, recipe = CANDIDATES[name]
    out = root / name
    t0 = time.perf_counter()
    if isinstance(recipe, DistillRecipe):
        card = distill(out, config, recipe, name=name)
    else:
        card = pretrain(out, config, recipe, name=name)
    seconds = time.perf_counter() - t0
    record = {"candidate": name, "description": description, "config": asdict(config),
              "recipe": card["recipe"],
              "train_seconds": card["train_seconds"] + card.get("teacher_seconds", 0),
              "call_seconds": round(seconds, 1), "threads": torch.get_num_threads(),
              "transfer": transfer(source_vit(name, folder=out))}
    (out / "transfer.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


SLICE = 1000  # the test suite re-checks the shipped model on the first SLICE test images


def compare(root: Path) -> dict:
    """The candidate table: every finished candidate's record in ``root`` beside the
    baselines, all measured the same way (:func:`transfer`, validation only): raw pixels, the
    first source ``vit_fashion`` (supervised on Fashion-MNIST; Fashion-MNIST is then not a
    transfer target for it), and the teacher itself at its distillation input size."""

    baselines_file = root / "baselines.json"
    if baselines_file.exists():
        baselines = json.loads(baselines_file.read_text())
    else:
        teacher = DistillRecipe()
        baselines = {
            "pixels": {"description": "logistic regression on the raw pixels (28 px)",
                       "transfer": transfer(None)},
            "vit_fashion": {"description": "the first source: supervised on Fashion-MNIST "
                            "(12 epochs, 65 min on 2 threads)",
                            "transfer": transfer(load("vit_fashion"))},
            "teacher": {"description": f"the teacher, {teacher.teacher} (ImageNet), at "
                        f"{teacher.teacher_size} px", "transfer":
                        transfer(load(teacher.teacher), size=teacher.teacher_size)}}
        root.mkdir(parents=True, exist_ok=True)
        baselines_file.write_text(json.dumps(baselines, indent=2) + "\n")
    found = {p.parent.name: json.loads(p.read_text()) for p in sorted(root.glob("*/transfer.json"))}
    return {"baselines": baselines, "candidates": found}


CARD_SIZES = (1200, 3600)  # training images of the model card's test probes


def card_probes(path: Path, name: str = "vit_distilled", sizes=CARD_SIZES) -> dict:
    """The measurements of a shipped source's model card (appendix A), written to ``path``
    (JSON) after each entry, so an interrupted call resumes where it stopped:

    - ``test``: the converged probe (:func:`transfer`, ``test=True``) of the raw pixels, the
      first source ``vit_fashion``, the source ``name`` and, for a distilled source, its teacher
      at its distillation input size, with each of ``sizes`` training images (the same
      images for every source);
    - ``blocks``: the validation accuracy of the probe on :func:`block_features` of every block
      of ``name``, with ``sizes[0]`` training images.

    The learning-rate-free probe chooses ``C`` on validation; test accuracy is read once, at
    that ``C``. Takes about half an hour on one CPU thread."""

    path = Path(path)
    result = json.loads(path.read_text()) if path.exists() else {}
    if result.get("source", name) != name or result.get("sizes", list(sizes)) != list(sizes):
        raise ValueError(f"{path} holds probes of {result.get('source')} with sizes "
                         f"{result.get('sizes')}; pass another path or delete it")
    result.update(source=name, sizes=list(sizes), targets=list(TARGETS))
    result.setdefault("test", {})
    result.setdefault("blocks", {})
    vit = load(name)
    sources = {"pixels": (lambda: None, None), "vit_fashion": (lambda: load("vit_fashion"), None),
               name: (lambda: vit, None)}
    recipe = SOURCES[name][2] if name in SOURCES else None
    if isinstance(recipe, DistillRecipe):
        sources["teacher"] = (lambda: load(recipe.teacher), recipe.teacher_size)

    def save():
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(result, path)

    for n in sizes:
        for label, (make, size) in sources.items():
            key = f"{label}@{n}"
            if key in result["test"]:
                continue
            t0 = time.perf_counter()
            probe = transfer(make(), n_train=n, test=True, size=size)
            result["test"][key] = {"features": label, "n_train": n, "results": probe,
                                   "seconds": round(time.perf_counter() - t0, 1)}
            save()
    for block in range(1, len(vit.model.blocks) + 1):
        if str(block) in result["blocks"]:
            continue
        result["blocks"][str(block)] = transfer(vit, n_train=sizes[0], block=block)
        save()

    result["environment"] = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    result.setdefault("git_commit", _git_commit())
    result.setdefault("command", f"python -m vplib.pretrain --recipe {name} --card-probes {path}")
    save()
    return result


# The shipped sources: name -> (description, architecture, recipe). ``vit_distilled`` is the
# ``hybrid_distill`` candidate (the best on validation transfer) scaled up: the whole
# Fashion-MNIST training split and 60,000 photo crops in the pool, 100,000 views, 4 epochs;
# ``vit_fashion`` is the first source.
SOURCES = {
    "vit_distilled": ("hybrid ViT (frozen MobileNetV2 stages 1-4 as patch embedding), "
                      "distilled from MobileNetV2 on Fashion-MNIST images + photo crops",
                      ViTConfig(num_classes=1000, stem="hybrid"),
                      DistillRecipe(pool_per_source=60_000, n_views=100_000, epochs=4)),
    "vit_fashion": ("supervised on Fashion-MNIST", ViTConfig(), Recipe()),
}


@torch.no_grad()
def slice_accuracy(backbone, card: dict) -> float:
    """What the test suite re-checks on the first ``SLICE`` Fashion-MNIST test images: the
    classification accuracy of a Fashion-MNIST classifier, or, for a distilled source, the
    share of images on which its top-1 ImageNet class is its teacher's."""

    size = card["config"]["img_size"]
    test = load_dataset("fashion_mnist", size=size, rgb=True).test.select(torch.arange(SLICE))
    if card.get("kind") != "distilled":
        return evaluate(backbone, test)["acc"]
    x = test.images.float() / 255
    teacher_size = card["recipe"]["teacher_size"]
    teacher = load(card["recipe"]["teacher"])
    t_logits, _ = teacher_outputs(teacher, test.images[:, :1], teacher_size)
    preds = torch.cat([backbone(chunk).argmax(1) for chunk in x.split(500)])
    return (preds == t_logits.float().argmax(1)).float().mean().item()


def ship(run_dir: Path, name: str) -> dict:
    """Copy a finished run into the package (``vplib/assets``): the fp16 weights and the card,
    to which it adds the training history (so the model card travels with the package) and
    :func:`slice_accuracy` measured through ``vplib.load(name)`` (fp16 weights, as users get
    them)."""
    import shutil

    assets = backbones.ASSETS_DIR  # read at call time (tests point it elsewhere)
    assets.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run_dir / f"{name}.safetensors", assets / f"{name}.safetensors")
    card = json.loads((run_dir / f"{name}.json").read_text())
    card["history"] = json.loads((run_dir / "history.json").read_text())
    (assets / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    card["test_slice"] = {"first": SLICE, "acc": slice_accuracy(load(name), card)}
    (assets / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Pretrain a source ViT: the shipped recipes, or a candidate recipe at "
                    "small scale with its transfer probe.")
    parser.add_argument("--recipe", choices=sorted(SOURCES), default="vit_distilled")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default: runs/RECIPE, or runs/candidates)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--views", type=int, default=None,
                        help="override a distillation recipe's number of views (smoke runs)")
    parser.add_argument("--max-train", type=int, default=None,
                        help="supervised recipes: cap on training images (smoke runs)")
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--ship", action="store_true",
                        help="copy the finished run in --out into vplib/assets (no training)")
    parser.add_argument("--candidate", choices=sorted(CANDIDATES),
                        help="train one candidate recipe at small scale and probe its transfer")
    parser.add_argument("--card-probes", metavar="JSON", type=Path,
                        help="measure the model card's test and block probes of --recipe "
                             "(resumable) into JSON")
    parser.add_argument("--compare", metavar="JSON", type=Path,
                        help="write the candidate table (finished candidates in --out, "
                             "default runs/candidates, beside the baselines) to JSON")
    args = parser.parse_args()
    if args.card_probes:
        card_probes(args.card_probes, args.recipe)
        return
    if args.compare:
        args.compare.write_text(json.dumps(compare(args.out or Path("runs/candidates")),
                                           indent=1) + "\n")
        return
    if args.candidate:
        out = args.out or Path("runs/candidates")
        print(json.dumps(run_candidate(args.candidate, out), indent=2))
        return
    out = args.out or Path("runs") / args.recipe
    if args.ship:
        print(json.dumps(ship(out, args.recipe), indent=2))
        return
    _, config, recipe = SOURCES[args.recipe]
    changes = {"epochs": args.epochs} if args.epochs else {}
    if isinstance(recipe, DistillRecipe):
        if args.views:
            changes.update(n_views=args.views, n_val=min(recipe.n_val, args.views))
        card = distill(out, config, replace(recipe, **changes), name=args.recipe,
                       resume=not args.no_resume)
    else:
        card = pretrain(out, config, replace(recipe, **changes), max_train=args.max_train,
                        resume=not args.no_resume, name=args.recipe)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
