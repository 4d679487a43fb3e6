"""vplib.baselines: the raw-pixel baselines, on the same training images as a grid run."""

import numpy as np
import pytest
import torch

from vplib import baselines
from vplib.data import load_dataset


def test_nearest_neighbour_takes_the_label_of_the_closest_training_point():
    train = (np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]), np.array([0, 1, 2]))
    near = (np.array([[1.0, 1.0], [9.0, 1.0], [1.0, 9.0], [8.0, 0.0]]), np.array([0, 1, 2, 2]))
    assert baselines.nearest_neighbour(train, near, chunk=2) == [0.75]
    assert baselines.nearest_neighbour(train, train) == [1.0]


def test_logistic_probe_picks_C_on_validation_and_reads_test_only_when_asked():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x[:, 0] > 0).astype(int)
    splits = [(x[i::3], y[i::3]) for i in range(3)]
    result = baselines.logistic_probe(*splits[:2])
    assert "test_acc" not in result and result["C"] in baselines.PROBE_C
    assert result["val_acc"] > 0.9
    assert baselines.logistic_probe(*splits)["test_acc"] > 0.9


def test_pixel_baselines_train_on_the_images_a_grid_run_trains_on():
    """The stratified subset does not depend on the image size or channels, so the pixels of
    the baseline are the grid's training images (here: the ViT's 28 px RGB and the CNN's
    64 px RGB versions of the same 60 digits)."""
    result = baselines.pixel_baselines("digits", max_train=60)
    grey = load_dataset("digits", size=28, max_train=60)
    for size in (28, 64):
        grid = load_dataset("digits", size=size, rgb=True, max_train=60)
        assert torch.equal(grid.train.raw, grey.train.raw)
        assert torch.equal(grid.train.labels, grey.train.labels)
    assert result["n_train"] == 60 and result["image_size"] == 28
    for name in ("logistic", "nearest_neighbour"):
        assert 0.5 < result[name]["test_acc"] <= 1.0  # 8x8 digits: far above chance (0.1)
    knn = baselines.nearest_neighbour(baselines.pixel_features(grey.train),
                                      baselines.pixel_features(grey.test))
    assert result["nearest_neighbour"]["test_acc"] == pytest.approx(knn[0])
