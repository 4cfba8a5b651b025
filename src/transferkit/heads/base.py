"""What the heads share: input checks, class weights, folds, standardisation, conversion to an nn.Module."""


from __future__ import annotations

import logging

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from transferkit.core.errors import TransferkitError
from transferkit.core.registry import Registry

log = logging.getLogger(__name__)

HEADS: Registry[type] = Registry("head")
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 1, 11))
_ABSENT_CLASS_BIAS = -30.0  # logit for a class the head never saw (softmax ~ 1e-13)
# Rows standardised at a time: bounded temporaries (about 40 MB in float64 at 1280 features) instead of
# copies of a 100k-row matrix (500 MB in float32).
_ROW_BLOCK = 4096


class HeadError(TransferkitError):
    """A head got input it cannot use (wrong shapes, one class only, unknown options)."""


def check_X_y(X, y=None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise HeadError(f"features must be a 2-D array [n_samples, n_features], got shape {X.shape}")
    if not np.isfinite(X).all():
        raise HeadError("features contain NaN or infinite values; drop the images that failed to decode")
    if y is None:
        return X, None
    y = np.asarray(y)
    if y.shape != (X.shape[0],):
        raise HeadError(f"{X.shape[0]} feature rows but labels of shape {y.shape}")
    return X, y


def class_weight_array(class_weight, classes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weight per class index in ``classes`` (sklearn's meaning of "balanced")."""
    if class_weight is None:
        return np.ones(len(classes), dtype=np.float64)
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise HeadError(f"class_weight {class_weight!r} is not understood; use None, 'balanced' or a dict")
        counts = np.array([(y == c).sum() for c in classes], dtype=np.float64)
        return len(y) / (len(classes) * counts)
    if isinstance(class_weight, dict):
        return np.array([float(class_weight.get(c, class_weight.get(str(c), 1.0))) for c in classes])
    raise HeadError(f"class_weight {class_weight!r} is not understood; use None, 'balanced' or a dict")


def weighted_log_loss(proba: np.ndarray, y_index: np.ndarray, sample_weight=None) -> float:
    p = np.clip(proba[np.arange(len(y_index)), y_index], 1e-12, 1.0)
    return float(np.average(-np.log(p), weights=sample_weight))


def stratified_folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Up to ``k`` stratified (train, validation) index pairs; fewer when classes are tiny."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(np.searchsorted(np.unique(y), y))
    k = int(min(k, counts.max()))
    if k < 2:
        return []
    fold_of = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        fold_of[idx] = np.arange(len(idx)) % k
    out = []
    for f in range(k):
        va = np.flatnonzero(fold_of == f)
        tr = np.flatnonzero(fold_of != f)
        if len(va) and len(np.unique(y[tr])) >= 2:
            out.append((tr, va))
    return out


def stratified_holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices; every class keeps at least one training sample."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        k = min(k, len(idx) - 1)
        val.extend(idx[:k])
        train.extend(idx[k:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


class single_thread:  # noqa: N801 - a context manager named for the with-statement
    """Run small dense maths on one thread.

    BLAS / OpenMP pools sized to every core are slower than one thread on matrices this small,
    and on a busy machine their spinning threads make an L-BFGS fit 10-20x slower.
    """

    def __enter__(self):
        import torch
        from threadpoolctl import threadpool_limits

        self._limits = threadpool_limits(1)
        self._torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self._torch_threads)
        self._limits.restore_original_limits()
        return False


class FeatureHead(ClassifierMixin, BaseEstimator):
    """Shared parts: standardisation, probabilities, conversion to an nn.Module."""

    def _standardize_fit(self, X: np.ndarray) -> None:
        """Per-feature mean and scale, accumulated in float64 a block of rows at a time (no full-size temporary)."""
        n = max(len(X), 1)
        total = np.zeros(X.shape[1], dtype=np.float64)
        for i in range(0, len(X), _ROW_BLOCK):
            total += X[i : i + _ROW_BLOCK].sum(axis=0, dtype=np.float64)
        mean = total / n
        squares = np.zeros(X.shape[1], dtype=np.float64)
        for i in range(0, len(X), _ROW_BLOCK):
            squares += np.square(X[i : i + _ROW_BLOCK] - mean).sum(axis=0)
        std = np.sqrt(squares / n).astype(np.float32)
        self.mean_ = mean.astype(np.float32)
        self.scale_ = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        self.n_features_in_ = X.shape[1]

    def _standardize(self, X: np.ndarray, in_place: bool = False) -> np.ndarray:
        """``(X - mean_) / scale_`` as float32, a block of rows at a time; ``in_place`` overwrites ``X`` (float32) instead of copying it."""
        if X.shape[1] != self.n_features_in_:
            raise HeadError(f"head was fitted on {self.n_features_in_} features but got {X.shape[1]}")
        out = X if in_place and X.dtype == np.float32 and X.flags.writeable else np.empty(X.shape, dtype=np.float32)
        for i in range(0, len(X), _ROW_BLOCK):
            block = out[i : i + _ROW_BLOCK]
            np.subtract(X[i : i + _ROW_BLOCK], self.mean_, out=block, casting="same_kind")
            np.divide(block, self.scale_, out=block)
        return out

    def _check_fitted_input(self, X) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "classes_")
        X, _ = check_X_y(X)
        if X.shape[1] != self.n_features_in_:
            raise HeadError(f"head was fitted on {self.n_features_in_} features but got {X.shape[1]}")
        return X

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        import torch

        X = self._check_fitted_input(X)
        module = self.to_module()
        with torch.inference_mode():
            logits = module(torch.from_numpy(X)).double()
        return logits.softmax(dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def decision_function(self, X) -> np.ndarray:
        import torch

        X = self._check_fitted_input(X)
        with torch.inference_mode():
            return self.to_module()(torch.from_numpy(X)).numpy()

    def _check_classes(self, y: np.ndarray) -> None:
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise HeadError(f"a classifier needs at least 2 classes in the training labels, got {len(self.classes_)}")

    def expand_module(self, num_outputs: int):
        """:meth:`to_module` with one output per class index ``0..num_outputs-1``.

        Classes absent from the training labels get a very low constant logit, so the module
        covers every class name of a dataset even if a split lacked one.
        """
        import torch
        from torch import nn

        module = self.to_module()
        classes = [int(c) for c in self.classes_]
        if classes == list(range(num_outputs)):
            return module
        if min(classes) < 0 or max(classes) >= num_outputs:
            raise HeadError(f"labels {classes} do not fit {num_outputs} classes")
        last = module if isinstance(module, nn.Linear) else module[-1]
        new_last = nn.Linear(last.in_features, num_outputs)
        with torch.no_grad():
            new_last.weight.zero_()
            new_last.bias.fill_(_ABSENT_CLASS_BIAS)
            new_last.weight[classes] = last.weight
            new_last.bias[classes] = last.bias
        if isinstance(module, nn.Linear):
            return new_last
        module[-1] = new_last
        return module
