"""Stand-ins for torchvision's downloads: files in the real on-disk formats, filled with random
images, so that the paper profile's data path (torchvision reads the files, ``vplib.data``
converts them) runs where there is no network. For measuring and testing only; the images are
noise, so accuracies on them mean nothing.

``write_cifar(root, "CIFAR100", n_train, n_test)`` writes ``root/CIFAR100/cifar-100-python``
as the official archive unpacks it; ``write_mnist(root, "MNIST", n_train, n_test)`` writes the
four IDX files under ``root/MNIST/MNIST/raw`` as torchvision leaves them after a download (also
``"FashionMNIST"``); :func:`offline_torchvision` lets torchvision accept CIFAR files whose
checksums are not the official ones (it checks them before reading).
"""

from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import numpy as np

_CIFAR = {  # torchvision class -> (folder, train files, test file, label key, meta file, names key)
    "CIFAR10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], "test_batch",
                "labels", "batches.meta", "label_names", 10),
    "CIFAR100": ("cifar-100-python", ["train"], "test", "fine_labels", "meta",
                 "fine_label_names", 100),
}


def write_cifar(root: str | Path, name: str = "CIFAR100", n_train: int = 50_000,
                n_test: int = 10_000, seed: int = 0) -> Path:
    """Random 32 x 32 RGB images and labels in the pickled layout of the official CIFAR-10 /
    CIFAR-100 archives, under ``root/name`` (where ``vplib.data`` points torchvision).
    Returns that folder."""
    if name not in _CIFAR:
        raise ValueError(f"name must be one of {sorted(_CIFAR)}, got {name!r}")
    folder_name, train_files, test_file, label_key, meta_file, names_key, classes = _CIFAR[name]
    folder = Path(root) / name / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def dump(path: Path, n: int) -> None:
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 label_key: (np.arange(n) % classes).tolist(),
                 "filenames": [f"{i}.png" for i in range(n)]}
        with open(path, "wb") as f:
            pickle.dump(entry, f)

    per_file = -(-n_train // len(train_files))
    for i, file in enumerate(train_files):
        dump(folder / file, min(per_file, n_train - i * per_file))
    dump(folder / test_file, n_test)
    with open(folder / meta_file, "wb") as f:
        pickle.dump({names_key: [f"class_{i}" for i in range(classes)]}, f)
    return Path(root) / name


def write_mnist(root: str | Path, name: str = "MNIST", n_train: int = 60_000,
                n_test: int = 10_000, seed: int = 0) -> Path:
    """Random 28 x 28 grey images and labels as the uncompressed IDX files (big-endian header:
    magic number, then each dimension) that torchvision's ``MNIST`` / ``FashionMNIST`` read
    from ``<their root>/name/raw``, their root being ``root/name`` (where ``vplib.data``
    points torchvision). Returns ``root/name``."""
    if name not in ("MNIST", "FashionMNIST"):
        raise ValueError(f"name must be 'MNIST' or 'FashionMNIST', got {name!r}")
    raw = Path(root) / name / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def dump(path: Path, array: np.ndarray) -> None:
        header = np.array([0x0800 + array.ndim, *array.shape], dtype=">i4")
        path.write_bytes(header.tobytes() + array.astype(np.uint8).tobytes())

    for stem, n in (("train", n_train), ("t10k", n_test)):
        dump(raw / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        dump(raw / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10)
    return Path(root) / name


@contextlib.contextmanager
def offline_torchvision():
    """Within the block, torchvision's CIFAR classes accept files whose checksums differ from
    the official archives' (the files of :func:`write_cifar`) instead of downloading."""
    import torchvision.datasets.cifar as cifar

    saved = cifar.CIFAR10._check_integrity, cifar.check_integrity  # CIFAR100 inherits both
    cifar.CIFAR10._check_integrity = lambda self: True
    cifar.check_integrity = lambda *args, **kwargs: True  # the meta file's check
    try:
        yield
    finally:
        cifar.CIFAR10._check_integrity, cifar.check_integrity = saved
