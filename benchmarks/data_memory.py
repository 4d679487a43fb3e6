"""Peak host memory of the paper profile's largest dataset: CIFAR-100 for a 224-pixel model.

Writes full-size CIFAR-100 files (50,000 + 10,000 random images in the official pickled
format, see ``vplib.fake_data``), then, in a fresh process each, measures the peak resident
memory (``ru_maxrss``) of

* ``native``: ``load_dataset("cifar100", size=224, rgb=True)`` as ``vplib`` stores it (the
  native 32-pixel uint8 images) plus one training batch resized to 224 px;
* ``up front``: the same, then the whole training split resized at once (``split.images``),
  which is what storing the dataset at 224 px costs.

Prints a table and writes ``book/results/data_memory_<device>.json``.

    python benchmarks/data_memory.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = """
import json, resource, sys, torch
from vplib.data import load_dataset
from vplib.fake_data import offline_torchvision

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

base = peak_mb()
with offline_torchvision():
    data = load_dataset("cifar100", size=224, rgb=True, source="online")
stored = sum(s.raw.untyped_storage().nbytes() for s in (data.train, data.val, data.test)) / 2**20
batch = data.train.view(data.train.raw[:128])
row = {"mode": sys.argv[1], "stored_mb": stored, "batch_shape": list(batch.shape),
       "after_load_mb": peak_mb()}
if sys.argv[1] == "up front":
    full = data.train.images
    row["full_train_mb"] = full.numel() / 2**20
row.update(peak_mb=peak_mb(), imports_mb=base)
print(json.dumps(row))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["native", "up front"])
    args = parser.parse_args()
    from vplib.fake_data import write_cifar
    from vplib.report import save_benchmark

    rows = []
    with tempfile.TemporaryDirectory() as root:
        write_cifar(root, "CIFAR100")
        env = {**os.environ, "VPLIB_DATA": root}
        for mode in args.modes:
            done = subprocess.run([sys.executable, "-c", CHILD, mode], env=env,
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"the {mode!r} measurement failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.splitlines()[-1]))
    print(f"{'mode':<10} {'stored (MB)':>12} {'peak RSS (MB)':>14}")
    for row in rows:
        print(f"{row['mode']:<10} {row['stored_mb']:>12.0f} {row['peak_mb']:>14.0f}")
    print(save_benchmark("data_memory", rows))


if __name__ == "__main__":
    main()
