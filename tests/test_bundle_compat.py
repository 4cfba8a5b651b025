"""Bundles written by the previous release still load, predict identically and can be replaced."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch

import transferkit as tk
from transferkit.classifier.bundle import load_bundle

FIXTURES = Path(__file__).parent / "fixtures"


def _pixels():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_a_previous_release_bundle_predicts_what_it_did():
    expected = np.load(FIXTURES / "previous_release_probs.npy")
    model = load_bundle(FIXTURES / "previous_release_bundle")
    with torch.inference_mode():
        probs = model(_pixels()).softmax(1).double().numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)
    clf = tk.Classifier.load(FIXTURES / "previous_release_bundle")
    assert clf.classes_ == model.class_names and clf.model_.backbone_state is not None


def test_a_previous_release_bundle_can_be_replaced_by_a_new_one(tiny_image_folder, tmp_path):
    target = tmp_path / "m"
    shutil.copytree(FIXTURES / "previous_release_bundle", target)
    clf = tk.Classifier("test_efficientnet", mode="probe", weights="none", image_size=32, engine="torch").fit(tiny_image_folder, out=target)
    assert clf.result_.bundle_path == target and "manifest" in (target / "bundle.json").read_text()
