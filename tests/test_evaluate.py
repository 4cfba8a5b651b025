"""Metrics on hand-made predictions, where every number can be worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.core.errors import DataError
from transferkit.evaluate.metrics import evaluate_probabilities, expected_calibration_error


def test_metrics_by_hand():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 1, 1, 2])
    ev = evaluate_probabilities(probs, y, ["a", "b", "c"], paths=["p0", "p1", "p2", "p3"], top_k=(1, 2))
    m = ev.metrics
    assert m["accuracy"] == 0.75 and m["top_k"] == {"top1": 0.75, "top2": 1.0}
    assert ev.confusion.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    assert m["per_class"]["b"]["recall"] == 0.5 and m["per_class"]["b"]["precision"] == 1.0
    assert ev.confidently_wrong == [
        {"index": 2, "path": "p2", "true": "b", "predicted": "a", "confidence": 0.6, "true_probability": 0.3}
    ]
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.7, 0.3, 0.8])))


def test_ece_by_hand():
    # Two bins used: confidence 0.9 (both right) and 0.6 (one of two right).
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 0, 0, 0])
    ece, table = expected_calibration_error(probs, y, bins=10)
    assert ece == pytest.approx(0.5 * abs(1.0 - 0.9) + 0.5 * abs(0.5 - 0.6))
    assert [b["count"] for b in table] == [2, 2]


def test_perfectly_calibrated_predictions_have_zero_ece():
    probs = np.tile([[1.0, 0.0]], (5, 1))
    assert expected_calibration_error(probs, np.zeros(5, dtype=int))[0] == 0.0


def test_shape_mismatch_is_refused():
    with pytest.raises(DataError, match="do not match"):
        evaluate_probabilities(np.ones((3, 2)) / 2, np.array([0, 1]), ["a", "b"])


def test_report_is_self_contained(tmp_path, tiny_image_folder):
    from transferkit.evaluate.report import write_report

    paths = sorted(str(p) for p in tiny_image_folder.rglob("*.jpg"))[:4]
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.45, 0.55]])
    ev = evaluate_probabilities(probs, np.array([0, 1, 1, 0]), ["cat", "dog"], paths=paths)
    page = write_report(ev, tmp_path / "r", title="t").read_text()
    assert page.count("data:image/png;base64,") == 2  # confusion matrix + calibration
    assert page.count("data:image/jpeg;base64,") == 2  # the two mistakes, as thumbnails
    assert "src=\"/" not in page and "src='/" not in page  # nothing linked from disk
    assert (tmp_path / "r" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_model_matches_labels_by_name(tmp_path, tiny_image_folder, tiny_backbone):
    import torch

    from transferkit.classifier.bundle import ClassifierModel
    from transferkit.data import load_images
    from transferkit.evaluate.model import evaluate_model

    images = load_images(tiny_image_folder)
    model = ClassifierModel(tiny_backbone, torch.nn.Linear(tiny_backbone.num_features, 4), ["x", *images.class_names])
    ev = evaluate_model(model, images, engine="torch")
    assert ev.metrics["n"] == len(images) and ev.confusion.shape == (4, 4)
    assert ev.confusion[0].sum() == 0  # no image is labelled "x": labels were mapped by name
    other = ClassifierModel(tiny_backbone, torch.nn.Linear(tiny_backbone.num_features, 2), ["x", "y"])
    with pytest.raises(DataError, match="not trained on"):
        evaluate_model(other, images, engine="torch")
