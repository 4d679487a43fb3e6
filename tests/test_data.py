import numpy as np
import pytest
import torch

from vplib import data
from vplib.data import DatasetUnavailable, load_dataset

OFFLINE = ["mnist", "animal_silhouettes", "digits", "fashion_mnist"]


def _needs(name):
    if name == "fashion_mnist" and data._fashion_mnist_offline() is None:
        pytest.skip("dataset-fashion-mnist (Debian package) is not installed")


@pytest.mark.parametrize("name", OFFLINE)
def test_offline_dataset_shapes_and_classes(name):
    _needs(name)
    d = load_dataset(name, source="offline")
    assert d.num_classes == 10 and len(d.class_names) == 10
    for split in (d.train, d.val, d.test):
        assert split.images.dtype == torch.uint8 and split.images.ndim == 4
        assert split.images.shape[1] == 1
        assert split.labels.dtype == torch.int64
        assert set(split.labels.unique().tolist()) == set(range(10))
    assert d.train.images.float().std() > 10  # real pixels, not a blank array


def test_known_sizes():
    assert (len(load_dataset("mnist").train), len(load_dataset("mnist").test)) == (3600, 1000)
    animals = load_dataset("animal_silhouettes")
    assert len(animals.train) + len(animals.val) + len(animals.test) == 10_000
    assert animals.class_names[0] == "bear" and animals.class_names[9] == "zebra"


def _ids(split):
    # images made by _unique_source carry their source index in their first two pixels
    flat = split.images.reshape(len(split), -1)[:, :2].long()
    return set((flat[:, 0] * 256 + flat[:, 1]).tolist())


def _unique_source():
    n = 1000
    x = np.zeros((n, 8, 8), dtype=np.uint8)
    x[:, 0, 0], x[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return (x, np.arange(n) % 10, None, None), "synthetic, one id per image"


@pytest.mark.parametrize("seed", [0, 1])
def test_train_val_test_are_disjoint_and_cover_the_data(monkeypatch, seed):
    info = data.DATASETS["digits"]
    monkeypatch.setitem(data.DATASETS, "digits", info.__class__(_unique_source, None, "-",
                                                                info.class_names))
    d = load_dataset("digits", seed=seed)
    tr, va, te = _ids(d.train), _ids(d.val), _ids(d.test)
    assert len(tr) == len(d.train) and len(va) == len(d.val) and len(te) == len(d.test)
    assert not (tr & va) and not (tr & te) and not (va & te)
    assert tr | va | te == set(range(1000))
    assert len(te) == 200 and len(va) == 80


def test_split_index_disjointness_is_exact():
    labels = np.repeat(np.arange(5), 40)
    rest, carved = data.stratified_split(labels, 0.25, seed=3)
    assert len(np.intersect1d(rest, carved)) == 0
    assert len(rest) + len(carved) == len(labels)
    assert np.bincount(labels[carved]).tolist() == [10] * 5


def test_val_depends_on_seed_and_test_does_not():
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert not torch.equal(a.val.images, b.val.images)
    assert torch.equal(a.test.images, b.test.images)
    again = load_dataset("digits", seed=0)
    assert torch.equal(a.val.images, again.val.images) and torch.equal(a.train.labels, again.train.labels)


def test_rgb_and_resize_are_explicit():
    native = load_dataset("mnist", max_train=50, max_eval=20)
    assert native.image_shape == (1, 28, 28)
    big = load_dataset("mnist", size=40, rgb=True, max_train=50, max_eval=20)
    assert big.image_shape == (3, 40, 40)
    assert torch.equal(big.train.images[:, 0], big.train.images[:, 2])


def _resized_up_front(images, size):
    """The earlier pipeline, kept as the reference: every image made RGB and resized once, at
    load time."""
    x = images.expand(-1, 3, -1, -1).float()
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                        align_corners=False)
    return y.round_().clamp_(0, 255).to(torch.uint8)


def test_splits_store_native_images_and_resize_them_exactly_as_before():
    d = load_dataset("mnist", size=64, rgb=True, max_train=300, max_eval=100)
    assert d.train.raw.shape[1:] == (1, 28, 28) and d.image_shape == (3, 64, 64)
    assert d.train.raw.untyped_storage().nbytes() == 300 * 28 * 28  # 15x less than 3x64x64
    expected = _resized_up_front(d.train.raw, 64)
    assert torch.equal(d.train.images, expected)  # the whole split, chunked into one output
    assert torch.equal(d.train.view(d.train.raw[7:70]), expected[7:70])  # one batch
    image, label = d.train[5]
    assert torch.equal(image, expected[5]) and label == d.train.labels[5]
    assert d.train.select([3, 1]).shape == (3, 64, 64)


def test_training_on_native_images_matches_training_on_resized_ones():
    """fit resizes each batch where it trains: the same images, so the same run, bit for bit."""
    import vplib
    from vplib.data import Split
    from vplib.train import fit

    d = load_dataset("mnist", size=32, rgb=True, max_train=256, max_eval=64)
    histories = []
    for train, val in [(d.train, d.val), (Split(d.train.images, d.train.labels),
                                          Split(d.val.images, d.val.labels))]:
        torch.manual_seed(0)
        model = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4, head="ilm")
        hist = fit(model, train, val, epochs=2, lr=1e-2, batch_size=64, device="cpu", verbose=False)
        histories.append([{k: v for k, v in r.items() if k not in ("seconds", "images_per_s")}
                          for r in hist.epochs])
    assert histories[0] == histories[1]


def test_train_and_val_must_be_seen_alike():
    import vplib
    from vplib.data import Split
    from vplib.train import fit

    d = load_dataset("mnist", size=32, rgb=True, max_train=64, max_eval=32)
    model = vplib.build("vp-pad", "mobilenet_v2", 10, image_size=32, prompt_size=4)
    with pytest.raises(ValueError, match="train and val are seen differently"):
        fit(model, d.train, Split(d.val.raw, d.val.labels, 40, True), epochs=1, verbose=False)


def test_caps_are_stratified():
    d = load_dataset("animal_silhouettes", max_train=200, max_eval=50)
    assert len(d.train) == 200 and len(d.val) == 50 and len(d.test) == 50
    assert torch.bincount(d.train.labels).min() >= 15


def test_unknown_name_lists_datasets():
    with pytest.raises(ValueError, match="animal_silhouettes"):
        load_dataset("imagenet")


def test_missing_offline_source_names_install_command(monkeypatch):
    monkeypatch.setitem(data.DATASETS, "animal_silhouettes",
                        data.DATASETS["animal_silhouettes"].__class__(
                            lambda: None, None, "pip install --no-deps animal-mnist==0.4"))
    with pytest.raises(DatasetUnavailable, match="pip install --no-deps animal-mnist"):
        load_dataset("animal_silhouettes")


def test_online_only_dataset_fails_clearly_without_network(monkeypatch, tmp_path):
    monkeypatch.setenv("VPLIB_DATA", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(data, "_torchvision_download", no_network)
    with pytest.raises(DatasetUnavailable, match="online-only.*internet"):
        load_dataset("cifar10")


def test_fashion_mnist_without_package_names_apt(monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", ("/nonexistent",))
    monkeypatch.setattr(data, "_torchvision_download",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DatasetUnavailable, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist")


class _FakeTorchvision:
    """Stands in for a torchvision dataset object (no network in tests)."""

    def __init__(self, data, labels, attr="targets"):
        self.data = data
        setattr(self, attr, labels)


@pytest.mark.parametrize("name, layout, attr", [("cifar10", "NHWC", "targets"),
                                                ("svhn", "NCHW", "labels")])
def test_online_sources_are_converted_to_nchw_uint8(monkeypatch, name, layout, attr):
    rng = np.random.default_rng(0)
    shape = (200, 32, 32, 3) if layout == "NHWC" else (200, 3, 32, 32)
    train = _FakeTorchvision(rng.integers(0, 256, shape, dtype=np.uint8), np.arange(200) % 10, attr)
    test = _FakeTorchvision(rng.integers(0, 256, (50,) + shape[1:], dtype=np.uint8),
                            np.arange(50) % 10, attr)
    monkeypatch.setattr(data, "_torchvision_download", lambda cls, root: (train, test))
    d = load_dataset(name, source="online")
    assert d.image_shape == (3, 32, 32) and len(d.test) == 50 and len(d.train) + len(d.val) == 200
    first = torch.from_numpy(test.data[0])
    expected = first.permute(2, 0, 1) if layout == "NHWC" else first
    assert torch.equal(d.test.images[0], expected)
    assert "torchvision" in d.source


def test_offline_only_request_for_online_dataset_is_refused():
    with pytest.raises(DatasetUnavailable, match="not installed offline"):
        load_dataset("cifar10", source="offline")
