"""Export a classifier bundle to one ONNX graph: uint8 pixels in, class probabilities out.

The graph takes ``pixels``, uint8 ``[N, H, W, 3]`` (NHWC, RGB, any batch size N), already decoded,
resized (shorter side to ``resize_size``, the spec's interpolation) and centre-cropped to
``H = W = image_size`` exactly as the bundle does (:mod:`transferkit.runtime.decode` does it without
torch); casting, scaling to [0, 1], normalising, the backbone, the head and the softmax are inside.
It returns ``probabilities``, float32 ``[N, K]``. The ``transferkit`` metadata entry holds the class
names, the preprocessing (the backbone spec), the sha256 of the source ``bundle.json``, the toolkit
version and what was measured at export.

Every file is checked before it is written: fp32 probabilities must match the PyTorch model to
``FP32_MAX_ABS_DIFF`` on real photos. An int8 file (static post-training quantisation, QDQ,
calibrated on the user's images) is measured on a held-out part of those images (or given
evaluation data): its top-1 agreement with fp32 and both accuracies; it is refused when it loses
more than ``max_int8_loss`` points unless forced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transferkit import __version__
from transferkit.classifier.bundle import ClassifierModel, is_multi_backbone, load_bundle, read_bundle_meta
from transferkit.classifier.bundle_files import BUNDLE_JSON
from transferkit.core.atomic import atomic_write
from transferkit.core.errors import TransferkitError
from transferkit.features.engines import Uint8Features, cpu_threads, synthetic_probe_pixels
from transferkit.runtime.model import (
    FORMAT,
    FORMAT_VERSION,
    INPUT_NAME,
    LAYOUT,
    METADATA_KEY,
    MULTI_FORMAT_VERSION,
    OUTPUT_NAME,
    open_session,
)

log = logging.getLogger(__name__)

FP32_MAX_ABS_DIFF = 1e-4
OPSET = 17
SUMMARY_METRICS = ("accuracy", "top_k", "macro_f1", "ece", "log_loss", "n", "split", "images", "head")
CHECK_IMAGES = 12  # real photos the fp32 check runs on (from the user's data, then sample photos)


class ExportError(TransferkitError):
    """An export cannot be written (bad target, failed check, int8 loss over the threshold)."""


@dataclass
class ExportResult:
    """What ``export_model`` wrote and measured.

    Attributes:
        path: the ONNX file.
        precision: ``"fp32"`` or ``"int8"``.
        metadata: the ``transferkit`` metadata stored in the file.
        size_bytes: the file's size.
    """

    path: Path
    precision: str
    metadata: dict[str, Any] = field(default_factory=dict)
    size_bytes: int = 0


class _ProbabilityGraph(nn.Module):
    """uint8 NHWC pixels -> softmax probabilities; the graph that gets exported."""

    def __init__(self, model: ClassifierModel) -> None:
        super().__init__()
        self.features = Uint8Features(model)  # permute, cast, /255, then model.forward_features
        self.head = model.head

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.features(pixels)), dim=1)


class _MultiProbabilityGraph(nn.Module):
    """One uint8 NHWC input per member -> the combined softmax probabilities (:mod:`transferkit.classifier.multi`)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.features = nn.ModuleList(Uint8Features(m) for m in model.members)
        self.heads = nn.ModuleList(m.head for m in model.members)
        self.combine = model.combine

    def forward(self, *pixels: torch.Tensor) -> torch.Tensor:
        logits = [head(features(x)) for features, head, x in zip(self.features, self.heads, pixels)]
        if self.combine == "concat":  # the members' shares of one linear head's logits
            return torch.softmax(torch.stack(logits).sum(0), dim=1)
        return torch.stack([torch.softmax(z, dim=1) for z in logits]).mean(0)


def _graph(model) -> nn.Module:
    return (_MultiProbabilityGraph(model) if hasattr(model, "members") else _ProbabilityGraph(model)).eval()


def _input_names(model) -> list[str]:
    return [f"{INPUT_NAME}_{i}" for i in range(len(model.members))] if hasattr(model, "members") else [INPUT_NAME]


def _specs(model) -> list:
    return list(model.specs) if hasattr(model, "members") else [model.spec]


def bundle_sha256(bundle: str | Path) -> str:
    """sha256 of a bundle's ``bundle.json`` (which records the sha256 of every weights file)."""
    return hashlib.sha256((Path(bundle) / BUNDLE_JSON).read_bytes()).hexdigest()


def _as_inputs(pixels) -> list[np.ndarray]:
    return list(pixels) if isinstance(pixels, (list, tuple)) else [pixels]


def torch_probabilities(model: ClassifierModel, pixels) -> np.ndarray:
    """The PyTorch model's probabilities for ``[N, H, W, 3]`` uint8 pixels (float32, ``[N, K]``); a model of several
    members takes one such array per member."""
    graph, arrays = _graph(model), _as_inputs(pixels)
    with torch.inference_mode():
        return np.concatenate([graph(*(torch.from_numpy(np.ascontiguousarray(a[i : i + 16])) for a in arrays)).numpy()
                               for i in range(0, len(arrays[0]), 16)])


def _onnx_probabilities(session, pixels, names: Sequence[str] = (INPUT_NAME,)) -> np.ndarray:
    arrays = _as_inputs(pixels)
    return np.concatenate([session.run([OUTPUT_NAME], {n: a[i : i + 16] for n, a in zip(names, arrays)})[0]
                           for i in range(0, len(arrays[0]), 16)])


def _trace_to_onnx(model, path: Path) -> None:
    names = _input_names(model)
    example = tuple(torch.from_numpy(synthetic_probe_pixels(spec)) for spec in _specs(model))
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer chatter
        torch.onnx.export(_graph(model).cpu(), example, str(path), input_names=names, output_names=[OUTPUT_NAME],
                          dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAME: {0: "batch"}}, opset_version=OPSET, dynamo=False)


def _save_with_metadata(source: Path, target: str, metadata: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(source))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata, sort_keys=True)
    proto.doc_string = f"transferkit {__version__} export: uint8 {LAYOUT} pixels -> class probabilities"
    onnx.save(proto, target)


def _preprocessing(spec) -> dict[str, Any]:
    return {"decoder": "pillow-rgb-exif-draft", "image_size": spec.image_size, "resize_size": spec.resize_size,
            "interpolation": spec.interpolation, "crop_mode": spec.crop_mode, "crop_pct": spec.crop_pct,
            "mean": list(spec.mean), "std": list(spec.std), "normalized_inside": True}


def _input(name: str, spec) -> dict[str, Any]:
    return {"name": name, "dtype": "uint8", "layout": LAYOUT, "shape": ["batch", spec.image_size, spec.image_size, 3], "color": "RGB"}


def base_metadata(model, bundle: Path, bundle_meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata every export carries (the check and quantisation results are added later).

    A model of several members (format version 2) adds ``inputs`` (each member's input and preprocessing, in
    input order), ``members`` (their backbone specs) and ``combine``; ``input``, ``preprocessing`` and
    ``backbone`` then describe the first member.
    """
    specs, names = _specs(model), _input_names(model)
    spec = specs[0]
    config, metrics = bundle_meta.get("config") or {}, bundle_meta.get("metrics") or {}
    multi = {}
    if hasattr(model, "members"):
        multi = {"format_version": MULTI_FORMAT_VERSION, "combine": model.combine, "members": [s.to_dict() for s in specs],
                 "inputs": [{**_input(n, s), "preprocessing": _preprocessing(s)} for n, s in zip(names, specs)]}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "toolkit_version": __version__,
        "class_names": list(model.class_names),
        "input": _input(names[0], spec),
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch", len(model.class_names)], "kind": "softmax probabilities"},
        "preprocessing": _preprocessing(spec),
        **multi,
        "backbone": spec.to_dict(),
        "bundle": {"path": str(bundle), "sha256": bundle_sha256(bundle), "mode": config.get("mode") if isinstance(config, dict) else None,
                   "include_backbone": bool(bundle_meta.get("include_backbone")), "toolkit_version": bundle_meta.get("toolkit_version")},
        "metrics": {k: metrics[k] for k in SUMMARY_METRICS if k in metrics},
    }


# ---------------------------------------------------------------------------------------------
# Images for the checks.


def decode_many(paths: Sequence[Path], spec, decode_options: dict | None = None) -> tuple[np.ndarray, list[int]]:
    """Decode ``paths`` for ``spec`` in threads: (``[M, H, W, 3]`` uint8, indices of the M decoded paths)."""
    from transferkit.data.decode import ImageDecodeError
    from transferkit.features.preprocess import decode_uint8

    def one(p):
        try:
            return decode_uint8(p, spec, **(decode_options or {}))
        except ImageDecodeError as exc:
            log.warning("skipping %s: %s", p, exc)
            return None

    with ThreadPoolExecutor(max(1, cpu_threads())) as pool:
        arrays = list(pool.map(one, paths))
    kept = [i for i, a in enumerate(arrays) if a is not None]
    side = spec.image_size
    stacked = np.stack([arrays[i] for i in kept]) if kept else np.zeros((0, side, side, 3), np.uint8)
    return stacked, kept


def _check_photos(specs: Sequence, extra: Sequence[Path]) -> tuple[list[np.ndarray], list[str]]:
    """Real photos decoded for each spec (the photos every spec could decode), and their names."""
    from transferkit.data.samples import sample_photos

    candidates = (list(extra)[: CHECK_IMAGES // 2] + list(sample_photos().values()))[:CHECK_IMAGES]
    decoded = [decode_many(candidates, spec) for spec in specs]
    common = sorted(set.intersection(*(set(kept) for _, kept in decoded)))
    arrays = [pixels[[kept.index(i) for i in common]] for pixels, kept in decoded]
    return arrays, [Path(candidates[i]).name for i in common]


def check_fp32(model, path: Path, photos: Sequence[Path] = ()) -> dict[str, Any]:
    """Compare the ONNX file's probabilities with the PyTorch model's on real photos and a probe batch.

    Raises:
        ExportError: the largest difference is ``FP32_MAX_ABS_DIFF`` or more, or a top-1 differs.
    """
    specs = _specs(model)
    real, names = _check_photos(specs, photos)
    pixels = [np.concatenate([r, synthetic_probe_pixels(spec, 2)]) for r, spec in zip(real, specs)]
    expected = torch_probabilities(model, pixels)
    got = _onnx_probabilities(open_session(path), pixels, _input_names(model))
    diff = float(np.abs(expected - got).max()) if got.shape == expected.shape else float("inf")
    same_top1 = bool(got.shape == expected.shape and np.array_equal(expected.argmax(1), got.argmax(1)))
    if not (diff < FP32_MAX_ABS_DIFF and same_top1):
        raise ExportError(f"the exported graph differs from the PyTorch model by {diff:.2e} in probability "
                          f"(limit {FP32_MAX_ABS_DIFF:g}, top-1 equal: {same_top1}); nothing was written. Report this with -vv output.")
    log.info("fp32 export matches PyTorch on %d real photos + 2 probes (max abs diff %.1e)", len(names), diff)
    return {"max_abs_diff": diff, "real_photos": len(names), "photos": names, "probe_batches": 2, "limit": FP32_MAX_ABS_DIFF}


# ---------------------------------------------------------------------------------------------
# The public entry point.


def _check_target(out: Path) -> None:
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give a file name for the ONNX model, e.g. --out {out / 'model.onnx'}")
    if out.suffix.lower() != ".onnx":
        raise ExportError(f"{out} does not end in .onnx; name the exported model file *.onnx")


def export_model(
    bundle: str | Path,
    out: str | Path,
    *,
    int8: bool = False,
    calibration: str | Path | None = None,
    eval_data: str | Path | None = None,
    max_int8_loss: float = 1.0,
    force: bool = False,
    calibration_images: int = 200,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a bundle to ``out`` (fp32, or int8 calibrated on ``calibration``), checked before writing.

    Args:
        bundle: the bundle directory (probe or fine-tuned).
        out: the ``.onnx`` file to write (replaced atomically; nothing is written when a check fails).
        int8: quantise (static, QDQ, per-channel int8 weights, calibrated activations).
        calibration: labelled images (any layout ``load_images`` reads) to calibrate on; a held-out
            30 % of them (or their official test split) measures the int8 model.
        eval_data: measure on these images instead and calibrate on all of ``calibration``.
        max_int8_loss: refuse an int8 model whose accuracy is more than this many points below
            fp32's (top-1 disagreement with fp32 when the data's classes are not the model's).
        force: write the int8 model even when it loses more than ``max_int8_loss``.
        calibration_images: at most this many images are used to calibrate.
        progress: called with a short message at each stage.

    Raises:
        ExportError: bad target, failed fp32 check, missing or unusable calibration data, or int8
            loss over the threshold without ``force``.
        BundleError: the bundle cannot be loaded.
    """
    say = progress or (lambda message: log.info("%s", message))
    bundle, out = Path(bundle), Path(out)
    _check_target(out)
    if int8 and calibration is None:
        raise ExportError("--int8 needs calibration images: add --calibration DATA (a folder of labelled images like the training data)")
    bundle_meta = read_bundle_meta(bundle)
    if is_multi_backbone(bundle_meta):
        if int8:
            raise ExportError(f"{bundle} combines {len(bundle_meta['members'])} members; --int8 quantises a model of one network: "
                              "export it in fp32, or train one with `--no-combine`")
        from transferkit.classifier.multi import load_classifier

        model = load_classifier(bundle)
    else:
        model = load_bundle(bundle)
    metadata = base_metadata(model, bundle, bundle_meta)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        say("exporting the fp32 graph")
        _trace_to_onnx(model, fp32)
        data = _load_measure_sets(model, calibration, eval_data) if int8 else None
        say("checking it against PyTorch on real photos")
        metadata["check"] = check_fp32(model, fp32, data.check_paths if data else ())
        if not int8:
            metadata["precision"] = "fp32"
            return _finish(fp32, out, metadata)
        path, measured = quantize_and_measure(fp32, Path(tmp), data, calibration_images=calibration_images, say=say)
        metadata.update(precision="int8", quantization=measured)
        _judge(measured, max_int8_loss, force)
        return _finish(path, out, metadata)


def _judge(measured: dict[str, Any], max_loss: float, force: bool) -> None:
    loss = measured["loss_points"]
    if loss > max_loss:
        what = "accuracy" if measured.get("accuracy_int8") is not None else "top-1 agreement with fp32"
        message = (f"the int8 model loses {loss:.2f} points of {what} on {measured['eval_images']} held-out images "
                   f"(limit {max_loss:g}; agreement with fp32 {measured['agreement'] * 100:.1f} %)")
        if not force:
            raise ExportError(f"{message}; nothing was written. Export fp32, give more calibration images, "
                              "or pass --force (or a larger --max-int8-loss) to write it anyway")
        log.warning("%s; written anyway (--force)", message)
        measured["forced"] = True


def _finish(path: Path, out: Path, metadata: dict[str, Any]) -> ExportResult:
    metadata["exported_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    atomic_write(out, lambda tmp: _save_with_metadata(path, tmp, metadata))
    log.info("wrote %s (%s, %d bytes)", out, metadata["precision"], out.stat().st_size)
    return ExportResult(out, metadata["precision"], metadata, out.stat().st_size)


@dataclass
class MeasureSets:
    """Images to calibrate on and to measure with (paths and, for measuring, model-class labels)."""

    calibrate: list[Path]
    measure: list[Path]
    labels: np.ndarray | None  # model class index per measure image, None when classes differ
    decode_options: dict
    spec: Any
    source: str

    @property
    def check_paths(self) -> list[Path]:
        return self.measure[:: max(1, len(self.measure) // 6)][:6]


def _load_measure_sets(model: ClassifierModel, calibration, eval_data) -> MeasureSets:
    from transferkit.data import load_images, split_imageset

    calib = load_images(calibration)
    if eval_data is not None:
        held, source = load_images(eval_data), f"--eval {eval_data}"
        train = calib
    else:
        split = split_imageset(calib, val=0.0, test=0.3, seed=0)
        train, held = split.where_split("train"), split.where_split("test")
        source = f"held-out split of {calibration} ({split.report.options.get('split', '')})"
    if len(train) == 0 or len(held) == 0:
        raise ExportError(f"{calibration} has too few images to both calibrate and measure ({len(train)} / {len(held)}); "
                          "give more images or a separate --eval DATA")
    labels = None
    if set(held.class_names) <= set(model.class_names):
        to_model = np.array([model.class_names.index(c) for c in held.class_names], dtype=np.int64)
        labels = to_model[held.labels]
    else:
        log.warning("the evaluation images' classes are not the model's; measuring agreement with fp32 only")
    return MeasureSets(list(train.paths), list(held.paths), labels, calib.decode_options, model.spec, source)


# ---------------------------------------------------------------------------------------------
# int8: static post-training quantisation, then measured.


class _CalibrationReader:
    """Feeds calibration pixels to onnxruntime's calibrator in batches of 8."""

    def __init__(self, pixels: np.ndarray) -> None:
        self._batches = iter([pixels[i : i + 8] for i in range(0, len(pixels), 8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def _spread(paths: Sequence[Path], n: int) -> list[Path]:
    """At most ``n`` of ``paths``, evenly spaced (classes are usually stored one after another)."""
    if len(paths) <= n:
        return list(paths)
    return [paths[int(i)] for i in np.linspace(0, len(paths) - 1, n).round().astype(int)]


def _quantize(fp32: Path, tmp: Path, calib_pixels: np.ndarray) -> Path:
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = tmp / "pre.onnx"
    try:
        quant_pre_process(str(fp32), str(pre))
    except Exception as exc:  # pre-processing only helps; quantise the plain graph without it
        log.warning("onnxruntime's quantisation pre-processing failed (%s); quantising the graph as exported", exc)
        pre = fp32
    # The head and the softmax stay fp32: they are a tiny part of the work, and a probe's small
    # margins suffer most from quantised features times quantised weights (Fashion-MNIST probe:
    # 71.7 % int8 with the head quantised, 81.0 % without, 85.3 % fp32).
    keep_fp32 = [n.name for n in onnx.load(str(pre)).graph.node if n.op_type == "Softmax" or n.name.startswith("/head/")]
    out = tmp / "int8.onnx"
    # uint8 activations with int8 weights (U8S8): on x86 ONNX Runtime's fastest int8 kernels; S8S8
    # measured 2.2x slower than U8S8 and 1.5x slower than fp32 for EfficientNet-Lite0 on a Xeon.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(pre), str(out), _CalibrationReader(calib_pixels), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        nodes_to_exclude=keep_fp32)
    return out


def _timed_probabilities(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, float]:
    session = open_session(path)
    _onnx_probabilities(session, pixels[:2])  # warm-up
    start = time.perf_counter()
    probs = _onnx_probabilities(session, pixels)
    return probs, (time.perf_counter() - start) * 1000.0 / max(1, len(pixels))


def quantize_and_measure(fp32: Path, tmp: Path, data: MeasureSets, *, calibration_images: int,
                         say: Callable[[str], None]) -> tuple[Path, dict[str, Any]]:
    """Quantise ``fp32`` calibrated on ``data.calibrate``; measure it against fp32 on ``data.measure``.

    Returns:
        (the int8 file, the measurements stored in its metadata).
    """
    import onnxruntime

    calib_paths = _spread(data.calibrate, calibration_images)
    say(f"calibrating int8 on {len(calib_paths)} images")
    calib_pixels, _ = decode_many(calib_paths, data.spec, data.decode_options)
    if not len(calib_pixels):
        raise ExportError("none of the calibration images could be read; check them with `transferkit data inspect`")
    int8 = _quantize(fp32, tmp, calib_pixels)
    say(f"measuring int8 against fp32 on {len(data.measure)} held-out images")
    pixels, kept = decode_many(data.measure, data.spec, data.decode_options)
    if not len(pixels):
        raise ExportError("none of the evaluation images could be read; check them with `transferkit data inspect`")
    p32, ms32 = _timed_probabilities(fp32, pixels)
    p8, ms8 = _timed_probabilities(int8, pixels)
    agreement = float(np.mean(p32.argmax(1) == p8.argmax(1)))
    measured: dict[str, Any] = {
        "method": "static post-training quantization of the backbone (onnxruntime, QDQ, per-channel int8 weights, "
                  "MinMax-calibrated uint8 activations; head and softmax fp32)",
        "onnxruntime": onnxruntime.__version__, "calibration_images": int(len(calib_pixels)), "eval_images": int(len(pixels)),
        "eval_source": data.source, "agreement": agreement, "accuracy_fp32": None, "accuracy_int8": None,
        "fp32_bytes": fp32.stat().st_size, "int8_bytes": int8.stat().st_size,
        "size_ratio": fp32.stat().st_size / int8.stat().st_size,
        "forward_ms_per_image_fp32": ms32, "forward_ms_per_image_int8": ms8, "speedup": ms32 / ms8 if ms8 else None,
    }
    if data.labels is not None:
        y = data.labels[kept]
        measured["accuracy_fp32"] = float(np.mean(p32.argmax(1) == y))
        measured["accuracy_int8"] = float(np.mean(p8.argmax(1) == y))
        measured["loss_points"] = (measured["accuracy_fp32"] - measured["accuracy_int8"]) * 100.0
    else:
        measured["loss_points"] = (1.0 - agreement) * 100.0
    return int8, measured


__all__ = ["FP32_MAX_ABS_DIFF", "ExportError", "ExportResult", "bundle_sha256", "check_fp32", "export_model", "torch_probabilities"]
