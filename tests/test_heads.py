"""Heads: the scikit-learn estimator contract, C chosen on validation data, class weights, modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.base import clone

from transferkit.core.errors import TransferkitError
from transferkit.heads import HEADS, HeadError, LogisticHead, MLPHead, create_head


def _blobs(n_per_class=(60, 60, 60), dim=12, sep=2.5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, sep, (len(n_per_class), dim))
    X = np.concatenate([rng.normal(c, 1.0, (n, dim)) for c, n in zip(centres, n_per_class)]).astype(np.float32)
    y = np.concatenate([np.full(n, k) for k, n in enumerate(n_per_class)])
    return X, y


@pytest.mark.parametrize("name", HEADS.list())
def test_estimator_contract(name):
    X, y = _blobs()
    head = create_head(name, random_state=0)
    assert clone(head).get_params() == head.get_params()
    assert not hasattr(head, "classes_")  # __init__ only stores arguments
    assert head.fit(X, y) is head
    assert head.classes_.tolist() == [0, 1, 2] and head.n_features_in_ == X.shape[1]
    proba = head.predict_proba(X)
    assert proba.shape == (len(X), 3) and np.allclose(proba.sum(axis=1), 1.0)
    assert head.score(X, y) > 0.9
    assert (head.predict(X) == head.classes_[proba.argmax(axis=1)]).all()


@pytest.mark.parametrize("name", HEADS.list())
def test_module_reproduces_probabilities(name):
    X, y = _blobs()
    head = create_head(name, random_state=0).fit(X, y)
    module = head.to_module()
    with torch.inference_mode():
        p = module(torch.from_numpy(X)).double().softmax(1).numpy()
    np.testing.assert_allclose(p, head.predict_proba(X), atol=1e-6)


def test_logistic_chooses_C_on_validation_data():
    X_all, y_all = _blobs((80, 80, 80), sep=0.5, dim=40, seed=3)  # overlapping classes: C matters
    X, y, Xv, yv = X_all[::2], y_all[::2], X_all[1::2], y_all[1::2]
    grid = (1e-4, 1e-2, 1.0, 100.0)
    head = LogisticHead(Cs=grid).fit(X, y, Xv, yv)
    assert set(head.val_log_loss_) == set(grid)
    assert head.val_log_loss_[head.C_] == min(head.val_log_loss_.values())
    by_accuracy = LogisticHead(Cs=grid, scoring="accuracy").fit(X, y, Xv, yv)
    assert by_accuracy.val_scores_[by_accuracy.C_] == max(by_accuracy.val_scores_.values())
    # The choice really depends on the validation data: labels shuffled -> strongest regularisation wins.
    shuffled = LogisticHead(Cs=grid).fit(X, y, Xv, np.random.default_rng(0).permutation(yv))
    assert shuffled.C_ == 1e-4 and head.C_ != 1e-4
    fixed = LogisticHead(C=0.5).fit(X, y)
    assert fixed.C_ == 0.5 and fixed.val_scores_ == {}


def test_logistic_without_validation_data_uses_folds():
    X, y = _blobs(sep=0.6, dim=40, seed=3)
    head = LogisticHead(Cs=(1e-3, 1e-1), cv=3).fit(X, y)
    assert head.C_ in (1e-3, 1e-1) and 0.0 < head.val_log_loss_[head.C_] < np.log(3)
    with pytest.raises(HeadError, match="scoring"):
        LogisticHead(scoring="f2").fit(X, y)


def test_binary_logistic_has_two_outputs():
    X, y = _blobs((40, 40))
    head = LogisticHead().fit(X, y)
    assert head.to_module().out_features == 2
    assert head.predict_proba(X).shape == (80, 2)


@pytest.mark.parametrize("name", HEADS.list())
def test_balanced_class_weight_helps_the_minority_class(name):
    X, y = _blobs((200, 12), dim=6, sep=0.7, seed=5)
    plain = create_head(name, C=1.0, random_state=0) if name == "logistic" else create_head(name, random_state=0)
    weighted = clone(plain).set_params(class_weight="balanced")
    plain.fit(X, y)
    weighted.fit(X, y)
    Xt, yt = _blobs((200, 200), dim=6, sep=0.7, seed=6)
    recall = lambda h: float((h.predict(Xt[yt == 1]) == 1).mean())  # noqa: E731
    assert recall(weighted) > recall(plain)


def test_expand_module_covers_classes_absent_from_training():
    X, y = _blobs()
    keep = y != 1
    head = LogisticHead().fit(X[keep], y[keep])
    module = head.expand_module(4)
    with torch.inference_mode():
        p = module(torch.from_numpy(X)).softmax(1).numpy()
    assert p.shape == (len(X), 4) and p[:, 1].max() < 1e-6 and p[:, 3].max() < 1e-6


def test_bad_input_is_a_clear_error():
    X, y = _blobs()
    with pytest.raises(HeadError, match="at least 2 classes"):
        LogisticHead().fit(X, np.zeros(len(X)))
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(HeadError, match="NaN"):
        MLPHead().fit(X_nan, y)
    with pytest.raises(HeadError, match="class_weight"):
        LogisticHead(class_weight="heavy").fit(X, y, X, y)
    with pytest.raises(TransferkitError, match="unknown head 'logstic'.*logistic"):
        create_head("logstic")
    head = LogisticHead().fit(X, y)
    with pytest.raises(HeadError, match="12 features"):
        head.predict(X[:, :5])


def test_standardisation_in_blocks_matches_the_whole_matrix_formula():
    from transferkit.heads import base

    X, y = _blobs(n_per_class=(3000, 2000, 1000), dim=7)  # more rows than one block
    assert len(X) > base._ROW_BLOCK
    head = LogisticHead(C=1.0).fit(X, y)
    assert np.allclose(head.mean_, X.astype(np.float64).mean(axis=0), atol=1e-5)
    assert np.allclose(head.scale_, X.astype(np.float64).std(axis=0), rtol=1e-5)
    expected = (X - head.mean_) / head.scale_
    assert np.allclose(head._standardize(X), expected, atol=1e-6)


def test_logistic_copy_X_false_standardises_in_place_with_the_same_fit():
    X, y = _blobs()
    kept = X.copy()
    a = LogisticHead(random_state=0).fit(X, y)
    assert np.array_equal(X, kept)  # the default never touches the caller's array
    b = LogisticHead(random_state=0, copy_X=False).fit(X, y)
    assert not np.array_equal(X, kept)  # overwritten, as asked: the fit used no second copy
    assert np.allclose(X, (kept - b.mean_) / b.scale_, atol=1e-6)
    assert a.C_ == b.C_ and np.allclose(a.predict_proba(kept), b.predict_proba(kept), atol=1e-6)


@pytest.mark.parametrize("rows", ["contiguous", "scattered"])
def test_probe_head_fit_leaves_the_feature_matrix_intact(rows):
    from transferkit.pipeline.config import TrainConfig
    from transferkit.pipeline.probe import fit_head

    X, y = _blobs()
    kept = X.copy()
    train = np.arange(150) if rows == "contiguous" else np.arange(0, 180, 2)
    idx = {"train": train, "val": np.array([], dtype=np.int64), "test": np.setdiff1d(np.arange(180), train)}
    weights, summary, hit = fit_head(TrainConfig(), X, y, idx, 3, cache=None)
    assert not hit and summary.C is not None
    assert np.array_equal(X, kept)  # the test rows the evaluation reads next are the original features


def test_probe_head_fit_that_consumes_the_features_fits_the_same_head():
    from transferkit.pipeline.config import TrainConfig
    from transferkit.pipeline.probe import _move_rows_to_front, fit_head

    X, y = _blobs()
    train = np.sort(np.random.default_rng(1).choice(180, 120, replace=False))
    idx = {"train": train, "val": np.array([], dtype=np.int64), "test": np.setdiff1d(np.arange(180), train)}
    copied, _, _ = fit_head(TrainConfig(), X.copy(), y, idx, 3, cache=None)
    consumed, _, _ = fit_head(TrainConfig(), X.copy(), y, idx, 3, cache=None, consume_X=True)
    for name in copied.state:
        assert np.allclose(copied.state[name], consumed.state[name], atol=1e-6)
    moved = X.copy()
    assert np.array_equal(_move_rows_to_front(moved, train), X[train])  # sources are read before they are overwritten
    big = np.arange(9000 * 2, dtype=np.float32).reshape(9000, 2)  # several 4096-row blocks
    for index in (np.arange(3, 9000, 3), np.arange(9000), np.flatnonzero(np.random.default_rng(2).random(9000) < 0.8)):
        assert np.array_equal(_move_rows_to_front(big.copy(), index), big[index])
