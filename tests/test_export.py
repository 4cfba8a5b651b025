"""ONNX export: one checked graph (uint8 NHWC -> probabilities), metadata, int8 gate, CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.classifier import export as export_mod
from transferkit.classifier.bundle import ClassifierModel, load_bundle, save_bundle
from transferkit.classifier.export import ExportError, export_model, torch_probabilities
from transferkit.runtime import Runtime


def _bundle(path, backbone, class_names=("class_0", "class_1", "class_2"), hidden=False):
    torch.manual_seed(0)
    d = backbone.num_features
    head = nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, len(class_names))) if hidden else nn.Linear(d, len(class_names))
    model = ClassifierModel(backbone, head, list(class_names)).eval()
    save_bundle(path, model, metrics={"accuracy": 0.75, "confusion_matrix": [[1]]}, config={"mode": "probe"})
    return path


@pytest.fixture
def tiny_bundle(tmp_path, tiny_backbone):
    return _bundle(tmp_path / "bundle", tiny_backbone)


def _pixels(folder, spec):
    from transferkit.features.preprocess import decode_uint8

    return np.stack([decode_uint8(p, spec) for p in sorted(folder.rglob("*.jpg"))])


@pytest.mark.parametrize("hidden", [False, True])
def test_fp32_export_matches_the_bundle_and_carries_its_metadata(tmp_path, tiny_backbone, tiny_image_folder, hidden):
    bundle = _bundle(tmp_path / "b", tiny_backbone, hidden=hidden)
    result = export_model(bundle, tmp_path / "m.onnx")
    assert result.path.is_file() and result.precision == "fp32"
    rt = Runtime(result.path)
    meta = rt.metadata
    assert meta["class_names"] == ["class_0", "class_1", "class_2"]
    assert meta["bundle"]["sha256"] == hashlib.sha256((bundle / "bundle.json").read_bytes()).hexdigest()
    assert meta["toolkit_version"] and meta["precision"] == "fp32"
    assert meta["input"] == {"name": "pixels", "dtype": "uint8", "layout": "NHWC", "shape": ["batch", 32, 32, 3], "color": "RGB"}
    spec = load_bundle(bundle).spec
    assert meta["preprocessing"]["resize_size"] == spec.resize_size and meta["backbone"] == spec.to_dict()
    assert meta["metrics"] == {"accuracy": 0.75}  # the summary, not the confusion matrix
    assert meta["check"]["max_abs_diff"] < 1e-4 and meta["check"]["real_photos"] >= 1
    # Dynamic batch, and the bundle's own PyTorch probabilities on real (generated) images.
    model = load_bundle(bundle)
    pixels = _pixels(tiny_image_folder, model.spec)
    for n in (1, 5, len(pixels)):
        got = rt.run(pixels[:n])
        assert got.shape == (n, 3)
        np.testing.assert_allclose(got, torch_probabilities(model, pixels[:n]), atol=1e-4)
    np.testing.assert_allclose(rt.run(pixels).sum(1), 1.0, atol=1e-5)


def test_export_refuses_a_graph_that_disagrees_with_pytorch(tmp_path, tiny_bundle, monkeypatch):
    real_trace = export_mod._trace_to_onnx

    def wrong_trace(model, path):
        with torch.no_grad():
            model.head.bias[0] += 1.0  # the traced graph no longer computes the bundle's model
        real_trace(model, path)
        with torch.no_grad():
            model.head.bias[0] -= 1.0

    monkeypatch.setattr(export_mod, "_trace_to_onnx", wrong_trace)
    with pytest.raises(ExportError, match="differs from the PyTorch model"):
        export_model(tiny_bundle, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.onnx")]  # no temporary left behind


def test_bad_targets_and_missing_calibration(tmp_path, tiny_bundle):
    with pytest.raises(ExportError, match="does not end in .onnx"):
        export_model(tiny_bundle, tmp_path / "m.pt")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(ExportError, match="is a folder"):
        export_model(tiny_bundle, tmp_path / "dir.onnx")
    with pytest.raises(ExportError, match="--calibration"):
        export_model(tiny_bundle, tmp_path / "m.onnx", int8=True)


def test_int8_export_is_measured_on_held_out_images(tmp_path, tiny_bundle, tiny_image_folder):
    result = export_model(tiny_bundle, tmp_path / "m8.onnx", int8=True, calibration=tiny_image_folder, max_int8_loss=100.0)
    q = Runtime(result.path).metadata["quantization"]
    assert Runtime(result.path).metadata["precision"] == "int8"
    assert 0 < q["eval_images"] < 18 and q["calibration_images"] + q["eval_images"] == 18  # disjoint parts of the 18 images
    assert 0.0 <= q["agreement"] <= 1.0 and q["accuracy_fp32"] is not None and q["accuracy_int8"] is not None
    assert q["loss_points"] == pytest.approx((q["accuracy_fp32"] - q["accuracy_int8"]) * 100)
    assert q["int8_bytes"] < q["fp32_bytes"]
    import onnx

    graph = onnx.load(str(result.path)).graph
    ops = {n.op_type for n in graph.node}
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    # The head keeps fp32 weights (its inputs after the features are not dequantised int8).
    producers = {o: n.op_type for n in graph.node for o in n.output}
    head = [n for n in graph.node if n.name.startswith("/head/")]
    assert head and all(producers.get(i) != "DequantizeLinear" for n in head for i in n.input[1:])


def test_int8_loss_over_the_threshold_is_refused_unless_forced(tmp_path, tiny_bundle, tiny_image_folder, monkeypatch):
    real = export_mod.quantize_and_measure

    def lossy(*args, **kwargs):
        path, measured = real(*args, **kwargs)
        measured.update(accuracy_fp32=0.9, accuracy_int8=0.8, loss_points=10.0)
        return path, measured

    monkeypatch.setattr(export_mod, "quantize_and_measure", lossy)
    with pytest.raises(ExportError, match=r"loses 10.00 points.*limit 1"):
        export_model(tiny_bundle, tmp_path / "m8.onnx", int8=True, calibration=tiny_image_folder)
    assert not (tmp_path / "m8.onnx").exists()
    result = export_model(tiny_bundle, tmp_path / "m8.onnx", int8=True, calibration=tiny_image_folder, force=True)
    assert result.metadata["quantization"]["forced"] is True and result.path.is_file()


def test_int8_with_separate_eval_data_and_foreign_classes(tmp_path, tiny_backbone, tiny_image_folder):
    bundle = _bundle(tmp_path / "b", tiny_backbone, class_names=("x", "y", "z"))
    result = export_model(bundle, tmp_path / "m8.onnx", int8=True, calibration=tiny_image_folder, eval_data=tiny_image_folder,
                          max_int8_loss=100.0)
    q = result.metadata["quantization"]
    # Classes the model does not know: accuracy cannot be measured, the gate uses disagreement.
    assert q["accuracy_fp32"] is None and q["loss_points"] == pytest.approx((1 - q["agreement"]) * 100)
    assert q["eval_images"] == 18 and q["calibration_images"] == 18


def test_cli_export_json_and_refusal_line(tmp_path, tiny_bundle, capsys):
    from transferkit.cli.main import main

    assert main(["export", str(tiny_bundle), "--out", str(tmp_path / "m.onnx"), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["metadata"]["class_names"] == ["class_0", "class_1", "class_2"] and (tmp_path / "m.onnx").is_file()
    assert main(["export", str(tiny_bundle), "--out", str(tmp_path / "m.onnx"), "--int8"]) == 1
    err = capsys.readouterr().err
    assert "--calibration" in err and "Traceback" not in err
