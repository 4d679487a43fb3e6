"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU), and
in-process for the single-process reference: the same ``fit`` call, one output file."""

import sys

import torch
from torch import nn

from vplib.data import load_dataset
from vplib.train import distributed_context, fit

SETTINGS = {"epochs": 2, "lr": 3e-3, "batch_size": 64, "augment": "crop_flip", "seed": 3,
            "warmup_epochs": 0.5, "label_smoothing": 0.1, "device": "cpu", "verbose": False}


def net() -> nn.Module:  # no dropout or batch norm: their randomness / statistics are per process
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * 64, 10))


def run(checkpoint_dir=None) -> dict:
    data = load_dataset("digits", seed=0)
    model = net()
    history = fit(model, data.train, data.val, checkpoint_dir=checkpoint_dir, **SETTINGS)
    return {"state": model.state_dict(), "history": history.to_dict()}


if __name__ == "__main__":
    out = run(checkpoint_dir=sys.argv[2])
    if distributed_context().main:
        torch.save(out, sys.argv[1])
    torch.distributed.destroy_process_group()
