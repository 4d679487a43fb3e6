"""Baselines a results table owes its reader: what the raw pixels alone achieve.

A frozen backbone is worth prompting only where its features beat the pixels. Every table of
the course therefore shows, on the *same* training images as its methods:

- :func:`logistic_probe`: multinomial logistic regression, converged (L-BFGS), its inverse L2
  strength ``C`` chosen on validation; on raw pixels here, on frozen features elsewhere
  (``vplib.pretrain.transfer``).
- :func:`nearest_neighbour`: 1-NN in Euclidean distance, which has nothing to tune.

:func:`pixel_baselines` runs both on a dataset's raw grayscale pixels at native size
(28 px), with the same stratified training subset a grid run with ``max_train`` uses (the
subset is drawn by ``vplib.data.load_dataset`` with the dataset's seed, whatever the image
size), and reads the test split once, at the setting chosen on validation.
"""

from __future__ import annotations

import numpy as np
import torch

PROBE_C = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)  # inverse L2 strengths, chosen on validation
NATIVE_SIZE = 28  # every offline target's native resolution


def logistic_probe(train, val, test=None, *, Cs=PROBE_C) -> dict:
    """A converged linear probe: standardised features, multinomial logistic regression
    (L-BFGS), ``C`` chosen on ``val`` among the values of ``Cs`` whose fit converged (within
    5,000 iterations); each argument is ``(features, labels)``. Returns the chosen ``C``, its
    validation accuracy, the values dropped for not converging and, only if ``test`` is
    given, its test accuracy."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    mean, sd = train[0].mean(0), train[0].std(0) + 1e-6
    scaled = [((x - mean) / sd, y) for x, y in (train, val) + ((test,) if test else ())]
    fits, dropped = {}, []
    for c in Cs:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConvergenceWarning)
            try:
                clf = LogisticRegression(C=c, max_iter=5000, tol=1e-4).fit(*scaled[0])
            except ConvergenceWarning:
                dropped.append(c)
                continue
        fits[c] = (clf.score(*scaled[1]), clf)
    if not fits:
        raise RuntimeError(f"no logistic regression converged for C in {Cs}")
    best = max(fits, key=lambda c: fits[c][0])
    result = {"C": best, "val_acc": fits[best][0], "unconverged_C": dropped}
    if test is not None:
        result["test_acc"] = fits[best][1].score(*scaled[2])
    return result


def nearest_neighbour(train, *evaluated, chunk: int = 1024) -> list[float]:
    """Accuracy of the 1-nearest-neighbour rule (Euclidean) fitted on ``train`` on each of
    ``evaluated``; every argument is ``(features, labels)`` as numpy arrays."""
    x_train = torch.as_tensor(np.asarray(train[0]), dtype=torch.float32)
    y_train = torch.as_tensor(np.asarray(train[1]))
    scores = []
    for x, y in evaluated:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
        nearest = torch.cat([torch.cdist(part, x_train).argmin(1) for part in x.split(chunk)])
        scores.append(float((y_train[nearest] == torch.as_tensor(np.asarray(y))).double().mean()))
    return scores


def pixel_features(split) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 split's images as flat float vectors in [0, 1], with its labels."""
    return split.images.flatten(1).float().numpy() / 255, split.labels.numpy()


def pixel_baselines(dataset: str, *, max_train: int | None = None, max_eval: int | None = None,
                    seed: int = 0) -> dict:
    """Logistic regression and 1-NN on the raw pixels of ``dataset`` (grayscale, native
    28 px), trained on the stratified ``max_train`` subset of its training split that a grid
    run with the same ``max_train`` trains on; validation chooses ``C``, test is read once.

    Returns ``{"logistic": {C, val_acc, test_acc, unconverged_C}, "nearest_neighbour":
    {val_acc, test_acc}, "n_train", "n_val", "n_test", "image_size"}``."""
    from .data import load_dataset

    data = load_dataset(dataset, size=NATIVE_SIZE, rgb=False, max_train=max_train,
                        max_eval=max_eval, seed=seed)
    train, val, test = (pixel_features(s) for s in (data.train, data.val, data.test))
    knn_val, knn_test = nearest_neighbour(train, val, test)
    return {"logistic": logistic_probe(train, val, test),
            "nearest_neighbour": {"val_acc": knn_val, "test_acc": knn_test},
            "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
            "image_size": NATIVE_SIZE}
