"""Throughput of the frozen backbones: inference, and forward + backward to the input.

The second number is the cost per step of any input-space prompt (the gradient must flow
through the whole frozen network back to the pixels); the first is the cost of caching
features for a linear probe. Prints a table and writes
``book/results/backbone_speed_<device>.json``.

    python benchmarks/backbone_speed.py [--sizes 32 64 128 224] [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse

import torch

import vplib
from vplib.measure import seconds_per_call
from vplib.report import save_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 224])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = vplib.train.default_device()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rows = []
    for name in ["mobilenet_v2", "efficientnet_lite0"]:
        backbone = vplib.load(name).to(device)
        for size in args.sizes:
            x = torch.rand(args.batch, 3, size, size, device=device)

            def infer():
                with torch.no_grad(), autocast:
                    backbone(x)

            def to_input():
                xg = x.clone().requires_grad_(True)
                with autocast:
                    backbone(xg).float().sum().backward()

            t_inf = seconds_per_call(infer, args.repeats, device)
            t_bwd = seconds_per_call(to_input, args.repeats, device)
            rows.append({"backbone": name, "size": size, "batch": args.batch,
                         "inference_img_s": args.batch / t_inf,
                         "fwd_bwd_to_input_img_s": args.batch / t_bwd})
            print(f"{name:>20} {size:>4} px  inference {args.batch / t_inf:8.0f} img/s   "
                  f"forward+backward to input {args.batch / t_bwd:8.0f} img/s")
    out = save_benchmark("backbone_speed", rows)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
