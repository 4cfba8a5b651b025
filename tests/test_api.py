"""The Python facade: fit -> predict -> save -> load -> the same probabilities; evaluate -> report."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import transferkit as tk


def _tiny(**kw):
    return tk.Classifier("test_efficientnet", mode="probe", weights="none", image_size=32, val=0.2, test=0.3, batch_size=8,
                         engine="torch", **kw)


def test_import_transferkit_imports_no_torch():
    code = "import sys, transferkit as tk; tk.Classifier; tk.TrainConfig; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_fit_predict_save_load_round_trip(tiny_image_folder, tmp_path):
    clf = _tiny().fit(tiny_image_folder)
    assert clf.classes_ == ["class_0", "class_1", "class_2"] and clf.result_.split == "test"
    assert "3 classes" in repr(clf) and "test accuracy" in repr(clf)
    files = sorted(tiny_image_folder.rglob("*.jpg"))[:4]
    pil = Image.open(files[0])
    arr = np.asarray(Image.open(files[1]).convert("RGB"))
    preds = clf.predict([str(files[0]), pil, arr], top_k=2)
    assert [len(p.top) for p in preds] == [2, 2, 2] and all(p.ok for p in preds)
    # A file and the same picture in memory get the same answer (same preprocessing).
    assert preds[0].top[0][0] == preds[1].top[0][0]
    assert abs(preds[0].top[0][1] - preds[1].top[0][1]) < 1e-3
    probs = clf.predict_proba(files)
    assert probs.shape == (4, 3) and np.allclose(probs.sum(axis=1), 1.0)
    clf.save(tmp_path / "m")
    again = tk.Classifier.load(tmp_path / "m")
    assert again.classes_ == clf.classes_ and again.result_ is None
    np.testing.assert_allclose(again.predict_proba(files), probs, atol=1e-6)
    # A folder is searched recursively.
    assert len(again.predict(tiny_image_folder)) == len(list(tiny_image_folder.rglob("*.jpg")))


def test_evaluate_on_the_training_split_and_write_report(tiny_image_folder, tmp_path):
    clf = _tiny().fit(tiny_image_folder)
    ev = clf.evaluate(tiny_image_folder, split="test")
    # The re-created test split is the one fit held out.
    assert ev.metrics["n"] == clf.result_.images["test"] and ev.accuracy == clf.result_.accuracy
    report = ev.write_report(tmp_path / "eval")
    assert report.name == "report.html" and (tmp_path / "eval" / "metrics.json").is_file()
    assert clf.evaluate(tiny_image_folder).metrics["n"] == 18


def test_unfitted_and_bad_inputs_say_what_to_do(tiny_image_folder):
    with pytest.raises(tk.NotFittedError, match="call fit"):
        _tiny().predict("x.jpg")
    clf = _tiny().fit(tiny_image_folder)
    bad = clf.predict([np.zeros((4, 4), dtype=np.float32), object()])
    assert "uint8" in bad[0].error and "cannot read" in bad[1].error
    from transferkit.core.errors import DataError

    with pytest.raises(DataError, match="unknown split"):
        clf.evaluate(tiny_image_folder, split="tset")


def test_dream_attack_and_featuremaps_take_the_classifier(tiny_image_folder, tmp_path):
    clf = _tiny().fit(tiny_image_folder)
    photo = sorted(tiny_image_folder.rglob("*.jpg"))[0]
    maps = tk.featuremaps(clf, photo, layer=1, channels=4)
    assert len(maps.channels) == 4 and maps.activations.ndim == 3
    grown = tk.dream(clf, "class_1", steps=3, size=32, compare=True)
    assert grown.class_name == "class_1" and grown.variants == ["main", "noisy (tv 0)"]
    assert grown.side_by_side().shape == (32, 72, 3) and grown.save_png(tmp_path / "d.png").is_file()
    report = tk.attack(clf, photo, target="class_2", eps=8 / 255, steps=2, out=tmp_path / "adv")
    assert report.target == "class_2" and report.files.adversarial.is_file() and report.files.perturbation.is_file()


def test_report_and_attack_plots_leave_the_matplotlib_backend_alone(tiny_image_folder, tmp_path):
    import subprocess
    import sys

    code = f"""
import matplotlib
matplotlib.use("svg")
import transferkit as tk
clf = tk.Classifier("test_efficientnet", mode="probe", weights="none", image_size=32, engine="torch", cache=False).fit({str(tiny_image_folder)!r})
clf.evaluate({str(tiny_image_folder)!r}).write_report({str(tmp_path / "ev")!r})
print(matplotlib.get_backend())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "svg"


def test_classify_and_backbone_names_with_options(tiny_image_folder):
    results = tk.classify(tiny_image_folder / "class_0", "test_efficientnet", top_k=2, weights="none", image_size=32)
    assert len(results) == 6 and all(r.ok and len(r.top) == 2 for r in results)
    maps = tk.featuremaps("test_efficientnet", sorted(tiny_image_folder.rglob("*.jpg"))[0], layer=1, channels=2,
                          weights="none", image_size=32)
    assert len(maps.channels) == 2


def test_loading_a_fine_tuned_bundle_does_not_warn_about_random_weights(tiny_image_folder, tmp_path, caplog):
    cfg = tk.FinetuneConfig(epochs=1, head_epochs=0, strategy="cached", unfreeze=1, batch_size=4)
    clf = tk.Classifier("test_efficientnet", mode="finetune", weights="none", image_size=32, finetune=cfg, cache=False).fit(tiny_image_folder)
    clf.save(tmp_path / "ft")
    caplog.clear()  # fit itself warns, rightly: it asked for random weights
    with caplog.at_level("WARNING"):
        again = tk.Classifier.load(tmp_path / "ft")
    assert again.model_.backbone_state is not None
    assert not [r for r in caplog.records if "random weights" in r.getMessage()]
