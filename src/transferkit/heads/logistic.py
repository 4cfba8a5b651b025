"""The linear probe: multinomial logistic regression with C chosen on validation data or by cross-validation."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from transferkit.heads.base import (
    DEFAULT_CS,
    HEADS,
    FeatureHead,
    HeadError,
    check_X_y,
    class_weight_array,
    single_thread,
    stratified_folds,
    weighted_log_loss,
)

log = logging.getLogger(__name__)


def cv_subsample(y: np.ndarray, max_rows: int, seed: int) -> np.ndarray:
    """Sorted row indices: all rows, or a stratified random ``max_rows`` of them (each class keeps at least 2)."""
    n = len(y)
    if n <= max_rows:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = min(len(idx), max(2, int(round(len(idx) * max_rows / n))))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))


@HEADS.register("logistic")
class LogisticHead(FeatureHead):
    """Multinomial logistic regression with the L2 strength chosen on validation data, or by cross-validation without it.

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
        random_state: seed of the folds (and of the subsample below).
        cv_max_rows: above this many training rows, ``C`` is chosen by cross-validation on a
            stratified subsample of this size (the final fit uses every row): the choice of one
            number does not need 100k rows, and the folds would copy them.
        copy_X: ``False`` lets the final fit standardise ``X`` in place (float32) instead of
            copying it: for a caller whose ``X`` is a copy it no longer needs (100k rows are 500 MB).

    After a cross-validated fit, ``oof_proba_`` holds the out-of-fold probabilities at the chosen
    ``C`` (each row predicted by a fit that did not see it; columns in ``classes_`` order) for the
    rows in ``oof_index_``: the honest per-image record that ``mode="auto"`` compares candidates with.
    """

    def __init__(self, *, C: float | None = None, Cs=DEFAULT_CS, class_weight=None, cv: int = 5,
                 scoring: str = "log_loss", refit: bool = True, max_iter: int = 1000, random_state: int = 0,
                 cv_max_rows: int = 20_000, copy_X: bool = True) -> None:
        self.C = C
        self.Cs = Cs
        self.class_weight = class_weight
        self.cv = cv
        self.scoring = scoring
        self.refit = refit
        self.max_iter = max_iter
        self.random_state = random_state
        self.cv_max_rows = cv_max_rows
        self.copy_X = copy_X

    def _lr(self, C: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=self.max_iter, tol=1e-4, class_weight=self.class_weight)

    def _path_scores(self, X_tr, y_tr, X_va, y_va, correct: dict, loss: dict, proba: dict | None = None) -> tuple[np.ndarray, float]:
        """Add (weighted) correct counts and log losses on one validation split for every C
        (and, with ``proba``, the validation probabilities per C over every class of ``classes_``)."""
        from sklearn.exceptions import ConvergenceWarning

        self._standardize_fit(X_tr)
        Xs_tr, Xs_va = self._standardize(X_tr), self._standardize(X_va)
        w_cls = class_weight_array(self.class_weight, np.unique(y_tr), y_tr)
        known = np.isin(y_va, np.unique(y_tr))
        Xs_va_all, Xs_va, y_va = Xs_va, Xs_va[known], y_va[known]
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
            p = lr.predict_proba(Xs_va_all)
            pk = p[known]
            correct[C] += float(((lr.classes_[np.argmax(pk, axis=1)] == y_va) * sample_w).sum())
            loss[C] += weighted_log_loss(pk, np.searchsorted(lr.classes_, y_va), sample_w) * float(sample_w.sum())
            if proba is not None:  # columns of every class; a class absent from this fold's training part gets 0
                full = np.zeros((len(p), len(self.classes_)), dtype=np.float64)
                full[:, np.searchsorted(self.classes_, lr.classes_)] = p
                proba[C].append(full)
        return sample_w, float(sample_w.sum())

    def fit(self, X, y, X_val=None, y_val=None) -> LogisticHead:
        """Fit; ``X_val``/``y_val`` choose ``C`` (else a stratified hold-out of ``X``)."""
        with single_thread():
            return self._fit(X, y, X_val, y_val)

    def _fit(self, X, y, X_val, y_val) -> LogisticHead:
        from sklearn.exceptions import ConvergenceWarning

        own_copy = not self.copy_X
        X, y = check_X_y(X, y)
        self._check_classes(y)
        if X_val is not None:
            X_val, y_val = check_X_y(X_val, y_val)
        self.val_scores_: dict[float, float] = {}
        self.val_log_loss_: dict[float, float] = {}
        if self.C is not None:
            best_C = float(self.C)
        else:
            if X_val is not None and len(X_val):
                splits = [(X, y, X_val, y_val)]
            else:
                # No validation data given: stratified folds of the training data (as
                # GridSearchCV does), so the choice does not hinge on a handful of held-out images.
                rows = cv_subsample(y, self.cv_max_rows, self.random_state)
                folds = stratified_folds(y[rows], self.cv, self.random_state)
                if not folds:
                    raise HeadError("too few training images to choose C on held-out data; pass C explicitly (`transferkit train --C 1.0`)")
                splits = ((X[rows[tr]], y[rows[tr]], X[rows[va]], y[rows[va]]) for tr, va in folds)  # one fold's copy at a time
            correct = {float(c): 0.0 for c in self.Cs}
            loss = {float(c): 0.0 for c in self.Cs}
            proba = {float(c): [] for c in self.Cs} if X_val is None or not len(X_val) else None
            total = 0.0
            for X_tr, y_tr, X_va, y_va in splits:
                w, n = self._path_scores(X_tr, y_tr, X_va, y_va, correct, loss, proba)
                total += n
            del splits
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
            if proba is not None:
                order = np.concatenate([rows[va] for _, va in folds])
                self.oof_index_ = np.sort(order)
                self.oof_proba_ = np.concatenate(proba[best_C])[np.argsort(order)]
                del proba
            if self.refit and X_val is not None and len(X_val):
                X, y = np.concatenate([X, X_val]), np.concatenate([y, y_val])
                own_copy = True
        self._standardize_fit(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_ = self._lr(best_C).fit(self._standardize(X, in_place=own_copy), y)
        self.C_ = best_C
        log.info("logistic head: C=%g (validation accuracy by C: %s)", best_C, self.val_scores_)
        return self

    @property
    def cv_summary(self) -> dict[str, float]:
        """Cross-validated accuracy and log loss at the chosen ``C`` (empty when ``C`` was fixed)."""
        if not self.val_scores_:
            return {}
        return {"C": self.C_, "accuracy": self.val_scores_[self.C_], "log_loss": self.val_log_loss_[self.C_]}

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
