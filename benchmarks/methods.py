"""Cost of every method side by side: trainable parameters, time per training step, memory.

For each method of ``vplib.METHODS`` that applies, on one CNN and one ViT backbone, one run
measures: prompt and trainable parameter counts, the wall time of a full training step
(forward, backward, AdamW update) on a batch of random images of the right shape, the memory of
the activations autograd saves for the backward pass (``vplib.measure.saved_for_backward_bytes``;
device-independent: this is what activation prompts save by not backpropagating below their
layer), and on CUDA the peak allocated memory.
Prints a table and writes ``book/results/methods_<device>.json``.

    python benchmarks/methods.py                      # CPU defaults: MobileNetV2 @ 64 px, ViT-Tiny/16 @ 224
    python benchmarks/methods.py --vit vit_base_patch16_224 --batch 64   # on a GPU
"""

from __future__ import annotations

import argparse

import torch

import vplib
from vplib.measure import seconds_per_call
from vplib.report import save_benchmark

CNN_OPTIONS = {"vp-pad": {"prompt_size": 8}, "vp-fixed": {"prompt_size": 16},
               "vp-random": {"prompt_size": 16},
               "ap": {"layer": "features.14"}}
VIT_OPTIONS = {"vp-pad": {"prompt_size": 30}, "vp-fixed": {"prompt_size": 56},
               "vp-random": {"prompt_size": 56},
               "vpt-shallow": {"length": 10}, "vpt-deep": {"length": 10},
               "insvp": {"variant": "official"}, "ap": {"layer": "blocks.2"}}
TOKEN_METHODS = ("vpt-shallow", "vpt-deep", "insvp")


def time_step(model, x, y, repeats: int, device: torch.device) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return seconds_per_call(step, repeats, device)


def run(backbone_name: str, pretrained: bool, size: int, options: dict, batch: int,
        repeats: int, device: torch.device) -> list[dict]:
    rows = []
    probe = vplib.load(backbone_name, pretrained=pretrained)
    for method in vplib.METHODS:
        if method in TOKEN_METHODS and probe.kind != "vit":
            continue
        torch.manual_seed(0)
        model = vplib.build(method, vplib.load(backbone_name, pretrained=pretrained), 10,
                            image_size=size, **options.get(method, {})).to(device)
        model.train()
        x = torch.rand(batch, 3, size, size, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        counts = model.param_counts()
        saved = vplib.measure.saved_for_backward_bytes(model, x, y)
        seconds = time_step(model, x, y, repeats, device)
        rows.append({
            "backbone": backbone_name, "image_size": size, "batch": batch, "method": method,
            "options": options.get(method, {}), "prompt_params": counts["prompt"],
            "trainable_params": counts["trainable"],
            "trainable_pct_of_backbone": 100 * counts["trainable"] / counts["backbone"],
            "step_ms": 1000 * seconds, "images_per_s": batch / seconds,
            "saved_for_backward_mb": saved / 2**20,
            "peak_cuda_mb": (torch.cuda.max_memory_allocated() / 2**20
                             if device.type == "cuda" else None),
        })
        r = rows[-1]
        print(f"{backbone_name:>22} {size:>4}px {method:>12}  prompt {r['prompt_params']:>9,}  "
              f"trainable {r['trainable_params']:>11,} ({r['trainable_pct_of_backbone']:7.3f}%)  "
              f"step {r['step_ms']:8.1f} ms  saved {r['saved_for_backward_mb']:8.1f} MB", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cnn", default="mobilenet_v2")
    parser.add_argument("--cnn-size", type=int, default=64)
    parser.add_argument("--vit", default="vit_tiny_patch16_224")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = vplib.train.default_device()
    rows = run(args.cnn, True, args.cnn_size, CNN_OPTIONS, args.batch, args.repeats, device)
    vit = vplib.load(args.vit, pretrained=False)  # speed does not depend on the weights
    rows += run(args.vit, False, vit.input_size, VIT_OPTIONS, args.batch, args.repeats, device)
    out = save_benchmark("methods", rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
