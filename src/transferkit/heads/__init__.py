"""Classifier heads on frozen features, following the scikit-learn estimator contract.

- :class:`LogisticHead`: multinomial logistic regression on standardised features, with the L2
  strength ``C`` chosen on validation data (the standard linear-probe protocol), then refitted on
  train + validation.
- :class:`MLPHead`: one hidden layer (ReLU, dropout) trained with AdamW and early stopping on
  validation loss.

Both accept ``class_weight`` (``None``, ``"balanced"`` or ``{class: weight}``) for imbalanced data,
and turn into a plain ``nn.Module`` (standardisation folded into the first linear layer) with
:meth:`to_module` for a :class:`~transferkit.classifier.bundle.ClassifierModel`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from transferkit.core.errors import TransferkitError
from transferkit.core.registry import Registry

log = logging.getLogger(__name__)

HEADS: Registry[type] = Registry("head")
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 1, 11))
_ABSENT_CLASS_BIAS = -30.0  # logit for a class the head never saw (softmax ~ 1e-13)


class HeadError(TransferkitError):
    """A head got input it cannot use (wrong shapes, one class only, unknown options)."""


def _check_X_y(X, y=None) -> tuple[np.ndarray, np.ndarray | None]:
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


def _class_weight_array(class_weight, classes: np.ndarray, y: np.ndarray) -> np.ndarray:
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


def _log_loss(proba: np.ndarray, y_index: np.ndarray, sample_weight=None) -> float:
    p = np.clip(proba[np.arange(len(y_index)), y_index], 1e-12, 1.0)
    return float(np.average(-np.log(p), weights=sample_weight))


def _stratified_folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
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


def _holdout(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
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


class _single_thread:
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


class _FeatureHead(ClassifierMixin, BaseEstimator):
    """Shared parts: standardisation, probabilities, conversion to an nn.Module."""

    def _standardize_fit(self, X: np.ndarray) -> None:
        self.mean_ = X.mean(axis=0).astype(np.float32)
        std = X.std(axis=0).astype(np.float32)
        self.scale_ = np.where(std > 1e-6, std, 1.0).astype(np.float32)
        self.n_features_in_ = X.shape[1]

    def _standardize(self, X: np.ndarray) -> np.ndarray:
        if X.shape[1] != self.n_features_in_:
            raise HeadError(f"head was fitted on {self.n_features_in_} features but got {X.shape[1]}")
        return (X - self.mean_) / self.scale_

    def _check_fitted_input(self, X) -> np.ndarray:
        from sklearn.utils.validation import check_is_fitted

        check_is_fitted(self, "classes_")
        X, _ = _check_X_y(X)
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


@HEADS.register("logistic")
class LogisticHead(_FeatureHead):
    """Multinomial logistic regression with the L2 strength chosen on validation data.

    Args:
        C: inverse L2 strength; ``None`` chooses it from ``Cs`` on validation data.
        Cs: the grid searched when ``C`` is ``None``.
        class_weight: ``None``, ``"balanced"`` or ``{class: weight}``.
        cv: when no validation data is passed to :meth:`fit`, ``C`` is chosen on this many
            stratified folds of the training data.
        scoring: what ``C`` minimises / maximises on validation data: ``"log_loss"`` (smooth, so a
            few lucky images do not decide it; also gives calibrated probabilities) or
            ``"accuracy"`` (ties broken by log loss).
        refit: after choosing ``C`` on separate validation data, fit again on train + validation
            (else on train only).
        max_iter: L-BFGS iterations.
        random_state: seed of the held-out split.
    """

    def __init__(self, *, C: float | None = None, Cs=DEFAULT_CS, class_weight=None, cv: int = 5,
                 scoring: str = "log_loss", refit: bool = True, max_iter: int = 1000, random_state: int = 0) -> None:
        self.C = C
        self.Cs = Cs
        self.class_weight = class_weight
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.max_iter = max_iter
        self.random_state = random_state

    def _lr(self, C: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=self.max_iter, tol=1e-4, class_weight=self.class_weight)

    def _path_scores(self, X_tr, y_tr, X_va, y_va, correct: dict, loss: dict) -> tuple[np.ndarray, float]:
        """Add (weighted) correct counts and log losses on one validation split for every C."""
        from sklearn.exceptions import ConvergenceWarning

        self._standardize_fit(X_tr)
        Xs_tr, Xs_va = self._standardize(X_tr), self._standardize(X_va)
        w_cls = _class_weight_array(self.class_weight, np.unique(y_tr), y_tr)
        known = np.isin(y_va, np.unique(y_tr))
        Xs_va, y_va = Xs_va[known], y_va[known]
        # Weighted by class when class weights are set: choose C for the metric that matters.
        sample_w = w_cls[np.searchsorted(np.unique(y_tr), y_va)]
        # Along the regularisation path, from strong to weak, each fit starting from the last
        # solution (warm start): a few L-BFGS steps per C instead of a cold start each time.
        lr = self._lr(1.0)
        lr.set_params(warm_start=True)
        for C in sorted(float(c) for c in self.Cs):
            lr.set_params(C=C)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                lr.fit(Xs_tr, y_tr)
            correct[C] += float(((lr.predict(Xs_va) == y_va) * sample_w).sum())
            loss[C] += _log_loss(lr.predict_proba(Xs_va), np.searchsorted(lr.classes_, y_va), sample_w) * float(sample_w.sum())
        return sample_w, float(sample_w.sum())

    def fit(self, X, y, X_val=None, y_val=None) -> "LogisticHead":
        """Fit; ``X_val``/``y_val`` choose ``C`` (else a stratified hold-out of ``X``)."""
        with _single_thread():
            return self._fit(X, y, X_val, y_val)

    def _fit(self, X, y, X_val, y_val) -> "LogisticHead":
        from sklearn.exceptions import ConvergenceWarning

        X, y = _check_X_y(X, y)
        self._check_classes(y)
        if X_val is not None:
            X_val, y_val = _check_X_y(X_val, y_val)
        self.val_scores_: dict[float, float] = {}
        self.val_log_loss_: dict[float, float] = {}
        if self.C is not None:
            best_C = float(self.C)
        else:
            if X_val is not None and len(X_val):
                splits = [(X, y, X_val, y_val)]
            else:
                # No validation data given: stratified folds of the training data, so the choice
                # does not hinge on a handful of held-out images.
                folds = _stratified_folds(y, self.cv, self.random_state)
                if not folds:
                    raise HeadError("too few training images to choose C on held-out data; pass C explicitly (`transferkit train --C 1.0`)")
                splits = [(X[tr], y[tr], X[va], y[va]) for tr, va in folds]
            correct = {float(c): 0.0 for c in self.Cs}
            loss = {float(c): 0.0 for c in self.Cs}
            total = 0.0
            for X_tr, y_tr, X_va, y_va in splits:
                w, n = self._path_scores(X_tr, y_tr, X_va, y_va, correct, loss)
                total += n
            self.val_scores_ = {c: correct[c] / total for c in sorted(correct)}
            self.val_log_loss_ = {c: loss[c] / total for c in sorted(loss)}
            if self.scoring == "log_loss":
                best_C = min(self.val_log_loss_, key=lambda c: (self.val_log_loss_[c], c))
            elif self.scoring == "accuracy":
                best = max(self.val_scores_.values())
                # Ties (common with few validation images) go to the lower validation log loss.
                best_C = min((c for c, v in self.val_scores_.items() if v >= best - 1e-12), key=lambda c: (self.val_log_loss_[c], c))
            else:
                raise HeadError(f"scoring {self.scoring!r} is not understood; use 'log_loss' or 'accuracy'")
            if self.refit and X_val is not None and len(X_val):
                X, y = np.concatenate([X, X_val]), np.concatenate([y, y_val])
        self._standardize_fit(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_ = self._lr(best_C).fit(self._standardize(X), y)
        self.C_ = best_C
        log.info("logistic head: C=%g (validation accuracy by C: %s)", best_C, self.val_scores_)
        return self

    def to_module(self):
        """``nn.Linear`` computing the same logits from raw features (standardisation folded in)."""
        import torch
        from torch import nn

        coef = self.model_.coef_.astype(np.float64)
        intercept = self.model_.intercept_.astype(np.float64)
        if coef.shape[0] == 1:  # binary: softmax([0, z]) == sigmoid(z)
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.array([0.0, intercept[0]])
        W = coef / self.scale_.astype(np.float64)
        b = intercept - W @ self.mean_.astype(np.float64)
        layer = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(W).float())
            layer.bias.copy_(torch.from_numpy(b).float())
        return layer.eval()


@HEADS.register("mlp")
class MLPHead(_FeatureHead):
    """A small MLP (Linear-ReLU-Dropout-Linear) trained with AdamW and early stopping.

    Args:
        hidden: width of the hidden layer.
        dropout: dropout after the hidden layer.
        lr, weight_decay: AdamW settings.
        max_epochs: upper bound on epochs; training stops after ``patience`` epochs without a
            better validation loss and keeps the best weights.
        batch_size: mini-batch size.
        class_weight: ``None``, ``"balanced"`` or ``{class: weight}`` (weights the loss).
        val_fraction: share of training data held out for early stopping when no validation
            data is passed to :meth:`fit`.
        random_state: seed for initialisation, shuffling and the hold-out.
    """

    def __init__(self, *, hidden: int = 256, dropout: float = 0.3, lr: float = 1e-3, weight_decay: float = 1e-2,
                 max_epochs: int = 200, patience: int = 15, batch_size: int = 128, class_weight=None,
                 val_fraction: float = 0.2, random_state: int = 0) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.class_weight = class_weight
        self.val_fraction = val_fraction
        self.random_state = random_state

    def fit(self, X, y, X_val=None, y_val=None) -> "MLPHead":
        """Fit; ``X_val``/``y_val`` drive early stopping (else a stratified hold-out of ``X``)."""
        with _single_thread():
            return self._fit(X, y, X_val, y_val)

    def _fit(self, X, y, X_val, y_val) -> "MLPHead":
        import torch
        from torch import nn

        X, y = _check_X_y(X, y)
        self._check_classes(y)
        if X_val is None or len(X_val) == 0:
            tr, va = _holdout(y, self.val_fraction, self.random_state)
            X, y, X_val, y_val = X[tr], y[tr], X[va], y[va]
        else:
            X_val, y_val = _check_X_y(X_val, y_val)
        self._standardize_fit(X)
        k = len(self.classes_)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        Xt, yt = t(self._standardize(X)), t(np.searchsorted(self.classes_, y).astype(np.int64))
        has_val = len(X_val) > 0 and np.isin(y_val, self.classes_).all()
        if has_val:
            Xv, yv = t(self._standardize(X_val)), t(np.searchsorted(self.classes_, y_val).astype(np.int64))
        weights = torch.tensor(_class_weight_array(self.class_weight, self.classes_, y), dtype=torch.float32)
        gen = torch.Generator().manual_seed(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            net = nn.Sequential(nn.Linear(X.shape[1], self.hidden), nn.ReLU(), nn.Dropout(self.dropout), nn.Linear(self.hidden, k))
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = nn.CrossEntropyLoss(weight=weights)
        best_loss, best_state, bad = float("inf"), None, 0
        self.history_: list[dict[str, float]] = []
        for epoch in range(self.max_epochs):
            net.train()
            order = torch.randperm(len(Xt), generator=gen)
            total = 0.0
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.random_state * 100_003 + epoch * 1009 + start)
                    loss = loss_fn(net(Xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            net.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(net(Xv), yv)) if has_val else total / len(Xt)
            self.history_.append({"epoch": epoch, "train_loss": total / len(Xt), "val_loss": val_loss})
            if val_loss < best_loss - 1e-5:
                best_loss, bad = val_loss, 0
                best_state = {k_: v.detach().clone() for k_, v in net.state_dict().items()}
            else:
                bad += 1
                if bad >= self.patience:
                    break
        net.load_state_dict(best_state)
        self.net_ = net.eval()
        self.n_epochs_ = len(self.history_)
        log.info("mlp head: %d epochs, best validation loss %.4f", self.n_epochs_, best_loss)
        return self

    def to_module(self):
        """``nn.Sequential`` on raw features (standardisation folded into the first layer)."""
        import copy

        import torch

        net = copy.deepcopy(self.net_)
        first = net[0]
        scale = torch.from_numpy(self.scale_)
        mean = torch.from_numpy(self.mean_)
        with torch.no_grad():
            W = first.weight / scale
            first.bias.sub_(W @ mean)
            first.weight.copy_(W)
        return net.eval()


def create_head(name: str = "logistic", **options: Any) -> _FeatureHead:
    """A head by registry name (``"logistic"`` or ``"mlp"``) with keyword options."""
    cls = HEADS.get(name)
    try:
        return cls(**options)
    except TypeError as exc:
        raise HeadError(f"head {name!r}: {exc}") from None


__all__ = ["HEADS", "HeadError", "LogisticHead", "MLPHead", "create_head"]
