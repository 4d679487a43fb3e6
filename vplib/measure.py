"""Measuring cost: wall time per call, activations saved for backward, FLOPs, and GPU peaks.

One home for the measurements that the chapters (06, 08) and ``benchmarks/`` share, so a
number in the book and a number in a benchmark table come from the same loop.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, in TFLOP/s. The
# more specific names come first: `bf16_peak` takes the first key found in the device name.
BF16_PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4,
                    "A100": 312.0, "L4": 121.0}


# The half-precision dense peak each GPU trains at under ``vplib.train.precision_for``: fp16
# with a gradient scaler on a T4 (no bf16 tensor cores), bf16 on an A100 / H100 (SXM).
HALF_PEAK_TFLOPS = {"T4": 65.0, "A100": 312.0, "H100": 989.4}
ASSUMED_UTILISATION = 0.3  # share of that peak a training step reaches: an ASSUMPTION


def bf16_peak(device_name: str) -> float | None:
    """The dense bf16 peak in FLOP/s of a GPU named ``device_name`` (as
    ``torch.cuda.get_device_name`` spells it), or ``None`` if it is not in the table."""
    for key, tflops in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return tflops * 1e12
    return None


def synchronize(device: torch.device) -> None:
    """Wait for the CUDA work queued on ``device`` (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn: Callable[[], object], repeats: int,
                     device: torch.device | str = "cpu", *, reduce: str = "mean") -> float:
    """Wall time of ``fn()`` in seconds over ``repeats`` calls after one warm-up call.

    ``reduce="mean"``: total time / ``repeats`` (a throughput, what a training run sees);
    ``"min"``: the fastest single call (the least disturbed by other work on a shared CPU).
    On CUDA the device is synchronised around the timed calls and the peak-memory counter is
    reset after the warm-up, so ``torch.cuda.max_memory_allocated()`` afterwards covers them.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    if reduce not in ("mean", "min"):
        raise ValueError(f"reduce must be 'mean' or 'min', got {reduce!r}")
    device = torch.device(device)
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    t_all = time.perf_counter()
    for _ in range(repeats):
        if reduce == "min":
            synchronize(device)
        t0 = time.perf_counter()
        fn()
        if reduce == "min":
            synchronize(device)
        times.append(time.perf_counter() - t0)
    synchronize(device)
    return min(times) if reduce == "min" else (time.perf_counter() - t_all) / repeats


def saved_for_backward_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of activations autograd keeps for the backward pass of one training step.

    Counts each distinct storage saved by the forward pass of ``cross_entropy(model(x), y)``
    once, and leaves out the model's own parameters (they are in memory anyway). This is the
    device-independent part of a step's peak memory that a method controls: an input prompt
    saves activations through the whole network, an activation prompt only above its layer.
    Runs one backward pass and clears the gradients it made.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    if loss.requires_grad:
        loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding,
                         _dilation, transposed, _output_padding, _groups, output_mask,
                         out_shape=None, **kwargs) -> int:
    """Each gradient of a convolution (input, weight) costs what its forward pass costs.
    ``torch.utils.flop_counter``'s own rule ignores ``groups`` here, which counts a
    depthwise convolution's backward (MobileNetV2, EfficientNet) tens of times too high."""
    from torch.utils.flop_counter import conv_flop_count

    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape), transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def _flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten.convolution_backward: _conv_backward_flops})


def forward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of ``model(x)`` counted by ``torch.utils.flop_counter`` (matrix products and
    convolutions). With ``model`` and ``x`` on PyTorch's ``meta`` device nothing is computed."""
    with _flop_counter() as counter:  # not under no_grad: torch's module tracker then fails on
        model(x)                      # a trainable tensor passed into a module (VPT's tokens)
    return counter.get_total_flops()


def step_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step (forward and backward of ``cross_entropy(model(x), y)``):
    the backward of a matrix product or convolution costs its forward once per gradient it
    computes (input, weight), so a frozen layer below every trainable one costs nothing."""
    with _flop_counter() as counter:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def fit_cost(model: nn.Module, train, val, *, epochs: int, batch_size: int,
             cache_features: bool = True) -> dict:
    """What ``vplib.train.fit(model, train, val, epochs=..., batch_size=...)`` costs, worked
    out from two images of ``train`` (``vplib.data.Split``) on the model's device:

    * ``flops``: every training step's forward and backward (:func:`step_flops` per image x
      images x epochs) plus the validation forward passes; when fit caches frozen features
      (a linear probe), one forward pass over train and val instead (the head's steps are
      negligible);
    * ``activation_bytes``: what autograd keeps for one step of ``batch_size`` images
      (:func:`saved_for_backward_bytes` per image x batch; 0 when features are cached), in
      float32 (bf16 / fp16 autocast keeps about half).

    The model is measured in eval mode (no batch-norm statistics move) and left as it was.
    """
    param = next(model.parameters())
    x = (train.view(train.raw[:2]).to(param.device).float() / 255)
    y = train.labels[:2].to(param.device)
    was_training = model.training
    model.eval()
    try:
        forward = forward_flops(model, x) / 2
        cached = cache_features and bool(getattr(model, "frozen_features", False))
        if cached:
            flops, saved = (len(train) + len(val)) * forward, 0
        else:
            flops = epochs * (len(train) * step_flops(model, x, y) / 2 + len(val) * forward)
            saved = saved_for_backward_bytes(model, x, y) / 2 * batch_size
    finally:
        model.train(was_training)
    return {"flops": float(flops), "activation_bytes": float(saved),
            "forward_flops_per_image": float(forward), "cached_features": cached}


def gpu_hours(flops: float, gpu: str, utilisation: float = ASSUMED_UTILISATION) -> float:
    """An ESTIMATE of the hours ``flops`` take on ``gpu`` (a key of :data:`HALF_PEAK_TFLOPS`)
    running at ``utilisation`` of its half-precision peak."""
    if gpu not in HALF_PEAK_TFLOPS:
        raise ValueError(f"gpu must be one of {sorted(HALF_PEAK_TFLOPS)}, got {gpu!r}")
    return flops / (HALF_PEAK_TFLOPS[gpu] * 1e12 * utilisation) / 3600
