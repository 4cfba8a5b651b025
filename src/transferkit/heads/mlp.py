"""A small MLP head trained with AdamW and early stopping on validation loss."""

from __future__ import annotations

import logging

import numpy as np

from transferkit.heads.base import (
    HEADS,
    FeatureHead,
    check_X_y,
    class_weight_array,
    single_thread,
    stratified_holdout,
)

log = logging.getLogger(__name__)


@HEADS.register("mlp")
class MLPHead(FeatureHead):
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

    def fit(self, X, y, X_val=None, y_val=None) -> MLPHead:
        """Fit; ``X_val``/``y_val`` drive early stopping (else a stratified hold-out of ``X``)."""
        with single_thread():
            return self._fit(X, y, X_val, y_val)

    def _fit(self, X, y, X_val, y_val) -> MLPHead:
        import torch
        from torch import nn

        X, y = check_X_y(X, y)
        self._check_classes(y)
        if X_val is None or len(X_val) == 0:
            tr, va = stratified_holdout(y, self.val_fraction, self.random_state)
            X, y, X_val, y_val = X[tr], y[tr], X[va], y[va]
        else:
            X_val, y_val = check_X_y(X_val, y_val)
        self._standardize_fit(X)
        k = len(self.classes_)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        Xt, yt = t(self._standardize(X)), t(np.searchsorted(self.classes_, y).astype(np.int64))
        has_val = len(X_val) > 0 and np.isin(y_val, self.classes_).all()
        if has_val:
            Xv, yv = t(self._standardize(X_val)), t(np.searchsorted(self.classes_, y_val).astype(np.int64))
        weights = torch.tensor(class_weight_array(self.class_weight, self.classes_, y), dtype=torch.float32)
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
