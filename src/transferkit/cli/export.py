"""`transferkit export`: a bundle to one checked ONNX file (fp32, or int8 calibrated on your images)."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli import output


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def _rows(result) -> list[tuple[str, str]]:
    meta = result.metadata
    check = meta["check"]
    inputs = meta.get("inputs") or [{"name": "pixels", "preprocessing": meta["preprocessing"]}]
    rows = [("file", f"{result.path} ({result.size_bytes / 1e6:.2f} MB, {result.precision})")]
    for i in inputs:
        pre = i["preprocessing"]
        rows.append(("input", f"{i['name']} uint8 [N, {pre['image_size']}, {pre['image_size']}, 3] (NHWC RGB; shorter side resized to "
                              f"{pre['resize_size']} {pre['interpolation']}, centre crop)"))
    if meta.get("members"):
        rows.append(("members", f"{', '.join(m['name'] for m in meta['members'])} ({meta['combine']})"))
    rows += [("output", f"probabilities float32 [N, {len(meta['class_names'])}]"),
            ("fp32 check", f"max |p_onnx - p_torch| = {check['max_abs_diff']:.1e} on {check['real_photos']} photos + "
                           f"{check['probe_batches']} probes (limit {check['limit']:g})")]
    q = meta.get("quantization")
    if q:
        rows += [("int8 measured on", f"{q['eval_images']} images ({q['eval_source']}); calibrated on {q['calibration_images']}"),
                 ("top-1 agreement with fp32", _pct(q["agreement"])),
                 ("accuracy fp32 / int8", f"{_pct(q['accuracy_fp32'])} / {_pct(q['accuracy_int8'])} (loss {q['loss_points']:.2f} points)"),
                 ("size fp32 / int8", f"{q['fp32_bytes'] / 1e6:.2f} MB / {q['int8_bytes'] / 1e6:.2f} MB ({q['size_ratio']:.2f}x smaller)"),
                 ("forward ms/image fp32 / int8", f"{q['forward_ms_per_image_fp32']:.1f} / {q['forward_ms_per_image_int8']:.1f} "
                                                  f"({q['speedup']:.2f}x)")]
    return rows


def export(
    model: Path = typer.Argument(..., help="model bundle directory (from `transferkit train`)"),
    out: Path = typer.Option(..., "--out", "-o", help="the .onnx file to write"),
    int8: bool = typer.Option(False, "--int8", help="quantise to int8 (needs --calibration)"),
    calibration: Path | None = typer.Option(None, "--calibration", help="labelled images to calibrate int8 on (30 % held out to measure)"),
    eval_data: Path | None = typer.Option(None, "--eval", help="measure int8 on these images instead of a held-out part"),
    max_int8_loss: float = typer.Option(1.0, "--max-int8-loss", min=0.0, help="refuse int8 losing more accuracy points than this"),
    force: bool = typer.Option(False, "--force", help="write the int8 model even when it loses more than --max-int8-loss"),
    calibration_images: int = typer.Option(200, "--calibration-images", min=1, help="images used to calibrate"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
) -> None:
    """Export a bundle to ONNX: uint8 NHWC pixels in, class probabilities out, checked against PyTorch."""
    from transferkit.classifier.export import export_model

    output.check_format(fmt, ("table", "json"))
    result = export_model(model, out, int8=int8, calibration=calibration, eval_data=eval_data, max_int8_loss=max_int8_loss,
                          force=force, calibration_images=calibration_images, progress=lambda m: output.err_console.print(m))
    if fmt == "json":
        output.print_json({"path": str(result.path), "size_bytes": result.size_bytes, "metadata": result.metadata})
        return
    output.print_table(f"exported {model}", ("", ""), _rows(result))
    if (result.metadata.get("quantization") or {}).get("forced"):
        output.warn("the int8 model loses more than --max-int8-loss; written because of --force")
