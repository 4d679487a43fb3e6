"""``vplib.train.fit`` against a naive training loop, side by side, in one run.

The naive loop is written the way the methods' research code trains: a torch ``DataLoader``
over a dataset that converts, crops and flips each image on the CPU, fp32, a host-to-device copy
per batch, backbone parameters left with ``requires_grad=True`` (only the prompt and head are
given to the optimiser, but autograd still computes every weight gradient), no compile. Both
loops train the same architecture (``vplib.build``) on the same real images (MNIST-5k resized
to the backbone's input size), with the same batch size, number of steps and augmentation
(random shift with zero padding + horizontal flip). Each loop runs two epochs; the second is
timed, so start-up costs (kernel selection, workers, compilation) are not counted.

Rows: VP (padding), VPT-deep, InsVP and AP (on a deep block) on ViT-B/16 at 224 px (random
weights: speed does not depend on them), the same methods on the source ViT at 28 px, VP and AP
on MobileNetV2 at the standard profile's 64 px; then AP against VP on each backbone (time and
memory ratios) and linear probing on cached features against re-running the backbone every
epoch (10 epochs).

On a GPU each ``fit`` row also reports the achieved fraction of the GPU's dense bf16 peak:

    utilisation = F_step * steps_per_s / peak,

where ``F_step`` is counted by ``torch.utils.flop_counter`` over one training step of the
frozen model (forward, plus the backward pass autograd actually runs: gradients with respect
to activations and prompt parameters, none for frozen weights; matrix multiplies and
convolutions, 2 FLOPs per multiply-add).

    python benchmarks/train_speed.py                     # CPU defaults (a few minutes)
    python benchmarks/train_speed.py --batch 128 --steps 20 --compile   # on a GPU

Prints a table and writes ``book/results/train_speed_<device>.json``.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import vplib
from vplib import measure
from vplib.data import Split, load_dataset
from vplib.report import save_benchmark
from vplib.train import fit

SETUPS = [  # (backbone, pretrained, method, options)
    ("vit_base_patch16_224", False, "vp-pad", {"prompt_size": 30}),
    ("vit_base_patch16_224", False, "vpt-deep", {"length": 10}),
    ("vit_base_patch16_224", False, "insvp", {}),
    ("vit_base_patch16_224", False, "ap", {"layer": "blocks.10"}),
    ("vit_fashion", True, "vp-pad", {"prompt_size": 3}),
    ("vit_fashion", True, "vpt-deep", {"length": 10}),
    ("vit_fashion", True, "insvp", {}),
    ("vit_fashion", True, "ap", {"layer": "blocks.4"}),
    ("mobilenet_v2", True, "vp-pad", {"prompt_size": 8}),
    ("mobilenet_v2", True, "ap", {"layer": "features.14"}),
]
STANDARD_CNN_SIZE = vplib.get_profile("standard").image_size


class PerSampleImages(Dataset):
    """What research code feeds its DataLoader: one image at a time, transformed on the CPU."""

    def __init__(self, split: Split):
        from torchvision.transforms import v2

        self.split = split
        size = split.images.shape[-1]
        self.transform = v2.Compose([v2.ToDtype(torch.float32, scale=True),
                                     v2.RandomCrop(size, padding=max(1, size // 8)),
                                     v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        return self.transform(self.split.images[i]), self.split.labels[i]


def naive_epochs(model, train: Split, batch: int, workers: int, device, epochs: int = 2):
    """Seconds and peak CUDA MB of the last of ``epochs`` epochs of the naive loop."""
    model.backbone.unfreeze()  # as in research code: frozen only by leaving it out of the optimiser
    model.to(device).train()
    model.backbone.eval()  # the same numerics as fit (batch-norm statistics not updated)
    params = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    loader = DataLoader(PerSampleImages(train), batch_size=batch, shuffle=True,
                        num_workers=workers)
    for _ in range(epochs):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        measure.synchronize(device)
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        measure.synchronize(device)
        seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return seconds, peak


def bf16_peak(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    return measure.bf16_peak(torch.cuda.get_device_name(device)) if device.type == "cuda" else None


def build(backbone: str, pretrained: bool, method: str, options: dict, size: int):
    torch.manual_seed(0)
    return vplib.build(method, vplib.load(backbone, pretrained=pretrained), 10, image_size=size,
                       **options)


def compare(args, device, images: dict) -> list[dict]:
    rows = []
    peak = bf16_peak(device, args.peak_tflops)
    n = args.batch * args.steps
    for backbone, pretrained, method, options in SETUPS:
        if args.only and backbone not in args.only:
            continue
        probe = vplib.load(backbone, pretrained=False)
        size = probe.input_size if probe.kind == "vit" else STANDARD_CNN_SIZE
        if size not in images:
            data = load_dataset("mnist", size=size, rgb=True, max_train=n, max_eval=args.batch)
            images[size] = data
        data = images[size]
        model = build(backbone, pretrained, method, options, size)
        hist = fit(model, data.train, data.val, epochs=2, lr=1e-3, batch_size=args.batch,
                   augment="crop_flip", device=device, compile=args.compile, verbose=False)
        ours = hist.epochs[-1]
        x = torch.rand(args.batch, 3, size, size, device=device)
        y = torch.randint(0, 10, (args.batch,), device=device)
        flops = measure.step_flops(model.to(device), x, y)
        saved = measure.saved_for_backward_bytes(
            model, torch.rand(args.batch, 3, size, size, device=device),
            torch.randint(0, 10, (args.batch,), device=device))
        naive = build(backbone, pretrained, method, options, size)
        naive_s, naive_peak = naive_epochs(naive, data.train, args.batch, args.workers, device)
        row = {
            "backbone": backbone, "image_size": size, "method": method, "options": options,
            "batch": args.batch, "steps": args.steps, "compile": args.compile,
            "trainable_params": model.param_counts()["trainable"],
            "fit_s_per_epoch": ours["seconds"], "fit_images_per_s": n / ours["seconds"],
            "fit_peak_mb": ours["peak_mem_mb"],
            "naive_s_per_epoch": naive_s, "naive_images_per_s": n / naive_s,
            "naive_peak_mb": naive_peak,
            "speedup": naive_s / ours["seconds"],
            "step_gflops": flops / 1e9, "saved_for_backward_mb": saved / 2**20,
            "bf16_utilisation": (flops * args.steps / ours["seconds"] / peak) if peak else None,
        }
        rows.append(row)
        util = f"{row['bf16_utilisation']:.1%}" if row["bf16_utilisation"] is not None else "-"
        mem = (f"{row['fit_peak_mb']:.0f} / {row['naive_peak_mb']:.0f} MB"
               if row["fit_peak_mb"] is not None else "-")
        print(f"{backbone:>21} {size:>4}px {method:>9} | fit {row['fit_images_per_s']:8.1f} "
              f"img/s | naive {row['naive_images_per_s']:8.1f} img/s | x{row['speedup']:5.2f} | "
              f"peak fit/naive {mem} | bf16 {util}", flush=True)
    return rows


def ap_vs_vp(rows: list[dict]) -> list[dict]:
    out = []
    for backbone in dict.fromkeys(r["backbone"] for r in rows):
        by = {r["method"]: r for r in rows if r["backbone"] == backbone}
        if "ap" in by and "vp-pad" in by:
            ap, vp = by["ap"], by["vp-pad"]
            out.append({
                "backbone": backbone, "ap_layer": ap["options"]["layer"],
                "time_ratio_ap_over_vp": ap["fit_s_per_epoch"] / vp["fit_s_per_epoch"],
                "saved_for_backward_ratio_ap_over_vp":
                    ap["saved_for_backward_mb"] / vp["saved_for_backward_mb"],
                "peak_mem_ratio_ap_over_vp": (ap["fit_peak_mb"] / vp["fit_peak_mb"]
                                              if ap["fit_peak_mb"] else None),
            })
            o = out[-1]
            print(f"AP ({o['ap_layer']}) / VP on {backbone}: time x{o['time_ratio_ap_over_vp']:.2f}, "
                  f"saved-for-backward x{o['saved_for_backward_ratio_ap_over_vp']:.2f}", flush=True)
    return out


def linear_probe_caching(args, device) -> dict:
    """Linear probing for 10 epochs: on cached features vs re-running the backbone."""
    data = load_dataset("mnist", size=STANDARD_CNN_SIZE, rgb=True, max_train=args.probe_images,
                        max_eval=256)
    times = {}
    for cached in (True, False):
        model = build("mobilenet_v2", True, "linear", {}, STANDARD_CNN_SIZE)
        measure.synchronize(device)
        t0 = time.perf_counter()
        fit(model, data.train, data.val, epochs=10, lr=1e-2, batch_size=args.batch,
            augment="none", device=device, cache_features=cached, verbose=False)
        measure.synchronize(device)
        times[cached] = time.perf_counter() - t0
    row = {"backbone": "mobilenet_v2", "image_size": STANDARD_CNN_SIZE, "epochs": 10,
           "n_train": len(data.train), "cached_s": times[True], "uncached_s": times[False],
           "speedup": times[False] / times[True]}
    print(f"linear probe, 10 epochs on {row['n_train']} images: cached {row['cached_s']:.1f} s, "
          f"re-running the backbone {row['uncached_s']:.1f} s: x{row['speedup']:.1f}", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="training steps per epoch")
    parser.add_argument("--workers", type=int, default=None,
                        help="naive loop DataLoader workers (default: 4 on a GPU, 0 on CPU)")
    parser.add_argument("--compile", action="store_true", help="fit(compile=True)")
    parser.add_argument("--only", nargs="*", help="backbones to run (default: all)")
    parser.add_argument("--probe-images", type=int, default=2048)
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak, if not in vplib.measure.BF16_PEAK_TFLOPS")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    device = vplib.train.default_device()
    if args.workers is None:
        args.workers = 4 if device.type == "cuda" else 0
    rows = compare(args, device, {})
    result = {"fit_vs_naive": rows, "ap_vs_vp": ap_vs_vp(rows),
              "linear_probe_caching": linear_probe_caching(args, device),
              "settings": {k: v for k, v in vars(args).items()},
              "flops_formula": "utilisation = F_step * steps_per_s / bf16_peak; F_step counted by "
                               "torch.utils.flop_counter over forward + backward of the frozen "
                               "model (activation and prompt gradients only)"}
    out = save_benchmark("train_speed", [result])
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
