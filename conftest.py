"""Test-wide settings: every test and every notebook kernel runs in the quick profile, quietly.

Set before nbval starts any kernel, so ``pytest --nbval notebooks/`` from the repository root
executes the notebooks in the quick profile.
"""

import os

os.environ["VPLIB_PROFILE"] = "quick"
os.environ["TQDM_DISABLE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

# Notebooks that evaluate on Fashion-MNIST offline (the Debian package dataset-fashion-mnist).
NEEDS_FASHION_MNIST = ("A_pretraining_source_vit.ipynb",)


def pytest_collection_modifyitems(config, items):
    from vplib.data import _fashion_mnist_offline

    if _fashion_mnist_offline() is not None:
        return
    import pytest

    skip = pytest.mark.skip(reason="needs Fashion-MNIST offline: "
                            "sudo apt-get install dataset-fashion-mnist")
    for item in items:
        if item.path.name in NEEDS_FASHION_MNIST:
            item.add_marker(skip)
