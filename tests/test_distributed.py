"""Data-parallel ``fit`` under torchrun (2 CPU processes, gloo) against one process with the
same global batch. Tolerance: float rounding only (the gradient is summed in another order)."""

import os
import subprocess
import sys
from pathlib import Path

import ddp_fit
import pytest
import torch

HERE = Path(__file__).resolve().parent


def test_two_process_fit_matches_single_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_fit.py"), str(tmp_path / "ddp.pt"), str(tmp_path / "ckpt")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=False)
    single = ddp_fit.run()

    assert ddp["history"]["config"]["world_size"] == 2
    assert single["history"]["config"]["world_size"] == 1
    for key, value in single["state"].items():
        torch.testing.assert_close(ddp["state"][key], value, rtol=1e-4, atol=1e-5)
    for mine, ref in zip(ddp["history"]["epochs"], single["history"]["epochs"], strict=True):
        assert mine["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-4)
        assert mine["train_acc"] == ref["train_acc"] and mine["val_acc"] == ref["val_acc"]
    assert ddp["history"]["best_epoch"] == single["history"]["best_epoch"]
    assert (tmp_path / "ckpt" / "last.pt").exists()  # written by rank 0
