"""vplib: the library behind "Visual Prompting, hands-on".

Importing vplib does nothing by itself: no downloads, no seeding, no global plot style.
Call :func:`setup` for that.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .backbones import Backbone, load  # noqa: E402
from .data import DatasetSplits, Split, load_dataset  # noqa: E402
from .model import METHODS, PromptedClassifier, build  # noqa: E402
from .profiles import Profile, get_profile  # noqa: E402
from .train import History, evaluate, fit  # noqa: E402
from . import checks, measure, tables, vit  # noqa: E402,F401

__all__ = ["METHODS", "Backbone", "build", "DatasetSplits", "History", "Profile", "PromptedClassifier", "Split",
           "evaluate", "fit", "get_profile", "load", "load_dataset", "setup"]


def setup(seed: int = 0, *, style: bool = True) -> None:
    """Seed Python, NumPy and PyTorch, and (optionally) apply the course's figure style."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if style:
        from .plots import set_style

        set_style()
