"""vplib: the library behind "Visual Prompting, hands-on".

Importing vplib does nothing by itself: no downloads, no seeding, no global plot style.
Call :func:`setup` for that.
"""

from __future__ import annotations

__version__ = "0.1.0"

import warnings  # noqa: E402

with warnings.catch_warnings():  # no ipywidgets (plain Jupyter): tqdm falls back to text bars.
    warnings.simplefilter("ignore")  # timm's hub client imports tqdm.auto too: import it here,
    import tqdm.auto  # noqa: E402,F401  before any module of vplib imports timm

from . import checks, measure, tables, vit  # noqa: E402,F401
from .backbones import Backbone, load  # noqa: E402
from .data import DatasetSplits, Split, load_dataset  # noqa: E402
from .model import METHODS, PromptedClassifier, build  # noqa: E402
from .profiles import Profile, get_profile  # noqa: E402
from .train import History, evaluate, fit  # noqa: E402

__all__ = ["METHODS", "Backbone", "DatasetSplits", "History", "Profile", "PromptedClassifier",
           "Split", "build", "evaluate", "fit", "get_profile", "load", "load_dataset", "setup"]


def setup(seed: int = 0, *, style: bool = True, profile: str | None = None) -> Profile:
    """Start a chapter: seed Python, NumPy and PyTorch, (optionally) apply the course's figure
    style, note the start time for :func:`vplib.report.finish`, and return the profile
    (``profile``, else ``$VPLIB_PROFILE``, else standard)."""
    import random

    import numpy as np
    import torch

    from . import report

    chosen = get_profile(profile)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if style:
        from .plots import set_style

        set_style()
    report.mark_start()
    return chosen
