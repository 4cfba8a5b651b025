"""The demo's one self-contained HTML page: every image is embedded as a base64 data URI.

Steps appear in the order they ran, numbered as the console numbered them (a step that did not
run keeps its bare title). Each step is a ``<section id="step-KEY" data-status="ok|skipped|failed">``; each embedded image
carries ``data-image="KEY/NAME"``, so a check (``benchmarks/check_demo_report.py``) can find every
section and image in the page a browser rendered.
"""

from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from transferkit.core.atomic import atomic_write_text
from transferkit.demo.result import REPORT_ORDER, DemoResult, StepOutcome

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
.gallery{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.card{font-size:12px;max-width:264px}.card img{display:block;max-width:264px;image-rendering:auto}
.wide img{max-width:560px}.status{font-weight:bold;padding:1px 6px;border-radius:3px}
.ok{background:#dff5df}.skipped{background:#fff3cd}.failed{background:#f8d7da}
code,pre{background:#f6f6f6;font-size:12px}pre{padding:8px;overflow-x:auto;white-space:pre-wrap}
.note{color:#555;font-size:13px}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(value: Any) -> str:
    return f"{100 * float(value):.1f}%" if isinstance(value, (int, float)) else "n/a"


def _img(step: StepOutcome, name: str, alt: str) -> str:
    png = step.images.get(name)
    if png is None:
        return ""
    data = base64.b64encode(png).decode()
    return f'<img alt="{_e(alt)}" data-image="{_e(step.key)}/{_e(name)}" src="data:image/png;base64,{data}">'


def _card(step: StepOutcome, name: str, caption: str) -> str:
    tag = _img(step, name, caption)
    return f'<div class="card">{tag}<div>{caption}</div></div>' if tag else ""


def _top_list(top: list[dict]) -> str:
    return "<br>".join(f"{_e(t['label'])} {_pct(t['probability'])}" for t in top)


def _section_classify(step: StepOutcome) -> str:
    cards = []
    for row in step.data.get("photos", []):
        caption = f"<b>{_e(row['photo'])}</b><br>{_top_list(row['top'])}" if not row.get("error") else _e(row["error"])
        cards.append(_card(step, f"photo_{row['photo']}", caption) or f'<div class="card">{caption}</div>')
    return (f"<p>The ImageNet-pretrained {_e(step.data.get('backbone', ''))} labels photos it has never seen (top 3):</p>"
        f"<div class=\"gallery\">{''.join(cards)}</div>")


def _section_transfer(step: StepOutcome) -> str:
    d = step.data
    ds = d.get("dataset", {})
    images = d.get("images") or {}
    parts = [
        f"<p>Dataset <b>{_e(ds.get('name', ''))}</b> ({_e(ds.get('license', ''))}): {_e(ds.get('reason', ''))}.</p>",
        f"<p>{len(d.get('classes', []))} classes; images train / val / test: {_e(images.get('train'))} / {_e(images.get('val'))} / {_e(images.get('test'))}. "
        "The pretrained network stays frozen; a logistic-regression head (L2 strength chosen on the validation split) is fitted on its pooled features.</p>",
        "<table><tr><th>metric</th><th>value</th></tr>",
        f"<tr><td>accuracy ({_e(d.get('split', 'test'))} split)</td><td class=\"num\" data-metric=\"transfer-accuracy\">{_pct(d.get('accuracy'))}</td></tr>",
    ]
    for k, v in (d.get("top_k") or {}).items():
        parts.append(f"<tr><td>{_e(k)} accuracy</td><td class=\"num\">{_pct(v)}</td></tr>")
    if d.get("macro_f1") is not None:
        parts.append(f"<tr><td>macro F1</td><td class=\"num\">{float(d['macro_f1']):.4f}</td></tr>")
    if d.get("ece") is not None:
        parts.append(f"<tr><td>calibration error (ECE)</td><td class=\"num\">{float(d['ece']):.4f}</td></tr>")
    head = d.get("head") or {}
    if head:
        parts.append(f"<tr><td>head</td><td>{_e(json.dumps(head))}</td></tr>")
    parts.append("</table>")
    parts.append(f'<div class="wide">{_card(step, "confusion", "confusion matrix (rows: true class)")}</div>')
    mistakes = d.get("mistakes") or []
    if mistakes:
        cards = [_card(step, f"mistake_{n}", f"true <b>{_e(m['true'])}</b><br>predicted {_e(m['predicted'])} ({_pct(m['confidence'])})")
                 for n, m in enumerate(mistakes)]
        parts.append(f"<h3>The most confident mistakes</h3><div class=\"gallery\">{''.join(cards)}</div>")
    else:
        parts.append("<p>No mistakes on the held-out split.</p>")
    return "".join(parts)


def _section_finetune(step: StepOutcome) -> str:
    d = step.data

    def cell(h: dict, key: str, pct: bool) -> str:
        v = h.get(key)
        return "" if v is None else (_pct(v) if pct else f"{float(v):.4f}")

    rows = "".join(
        f"<tr><td>{_e(h.get('epoch'))}</td><td>{_e(h.get('stage', ''))}</td><td class=\"num\">{cell(h, 'train_loss', False)}</td>"
        f"<td class=\"num\">{cell(h, 'train_acc', True)}</td><td class=\"num\">{cell(h, 'val_acc', True)}</td></tr>"
        for h in d.get("history", [])
    )
    return (
        "<p class=\"note\">This step runs last, so that it can use whatever time the budget has left.</p>"
        f"<p>Fine-tuned accuracy <b data-metric=\"finetune-accuracy\">{_pct(d.get('accuracy'))}</b> against the probe's "
        f"{_pct(d.get('probe_accuracy'))} on the same held-out images. Settings: <code>{_e(json.dumps(d.get('options', {})))}</code>: "
        "the top layer groups train on stored activations of augmented views, the head starts from the probe (LP-FT), "
        "BatchNorm statistics stay frozen.</p>"
        f"<table><tr><th>epoch</th><th>stage</th><th>train loss</th><th>train accuracy</th><th>val accuracy</th></tr>{rows}</table>"
        f'<div class="wide">{_card(step, "confusion", "confusion matrix after fine-tuning")}</div>'
    )


def _section_featuremaps(step: StepOutcome) -> str:
    cards = [_card(step, "photo", "the input photo")]
    for layer in step.data.get("layers", []):
        name = layer.get("layer")
        shape = "x".join(str(v) for v in layer.get("shape", []))
        caption = f"layer <code>{_e(name)}</code> ({_e(layer.get('role', ''))}, {_e(shape)}): the {len(layer.get('channels', []))} most active channels"
        cards.append(_card(step, f"layer_{name}", caption))
    return "<p>The most active channels of an early, a middle and a late layer: edges and colours first, parts of the cat later.</p>" \
           f"<div class=\"gallery\">{''.join(cards)}</div>"


def _section_dream(step: StepOutcome) -> str:
    cards = []
    for r in step.data.get("renders", []):
        top = ", ".join(f"{_e(t['label'])} {_pct(t['probability'])}" for t in r.get("top", []))
        cards.append(_card(step, r["image"], f"<b>{_e(r['class'])}</b>, {_e(r['variant'])}"
                            f"<br>p = {float(r['probability']):.4f}, TV = {float(r['tv']):.4f}<br>top: {top}"))
    return (f"<p>Images grown from noise until the network calls them the class ({_e(step.data.get('steps'))} Adam steps at {_e(step.data.get('size'))} px). "
            "Without a total-variation penalty (and on raw pixels) the result is noise the network is sure about; with TV, "
            "a smooth Fourier parameterisation and random jitter/scale/rotation it starts to look like the class.</p>"
            f"<div class=\"gallery\">{''.join(cards)}</div>")


def _section_attack(step: StepOutcome) -> str:
    d = step.data
    if not d:
        return ""
    return (
        f"<p>Targeted PGD ({_e(d['direction'])}) on {_e(d['source'])}: L-inf budget {_e(d['eps_255'])}/255, {_e(d['steps'])} steps, "
        f"kept on the 8-bit grid so the saved PNG fools the network too. Success: <b data-metric=\"attack-success\">{'yes' if d['success'] else 'no'}</b>. "
        f"Change: L-inf {_e(d['linf_255'])}/255, PSNR {float(d['psnr']):.1f} dB, SSIM {float(d['ssim']):.4f}.</p>"
        "<div class=\"gallery\">"
        + _card(step, "original", f"original<br>{_top_list(d['top_before'])}")
        + _card(step, "adversarial", f"adversarial<br>{_top_list(d['top_after'])}")
        + _card(step, "perturbation", "the perturbation, amplified")
        + "</div>"
    )


def _section_robustness(step: StepOutcome) -> str:
    d = step.data
    rows = "".join(f"<tr><td>{_e(p['eps'])}</td><td class=\"num\">{_pct(p['accuracy'])}</td><td class=\"num\">{_pct(p['success_rate'])}</td></tr>"
                   for p in d.get("points", []))
    return (f"<p>Untargeted {_e(str(d.get('method', '')).upper())} ({_e(d.get('steps'))} steps)"
            f" against the transfer model on {_e(d.get('images'))} held-out images.</p>"
            f"<table><tr><th>eps</th><th>accuracy</th><th>attack success</th></tr>{rows}</table>"
            f'<div class="wide">{_card(step, "curve", "accuracy against eps")}</div>')


def _section_deploy(step: StepOutcome) -> str:
    d = step.data
    rows = [("fp32 ONNX file", f"{d['fp32_bytes'] / 1e6:.1f} MB"),
            ("fp32 through the torch-free runtime: same top-1 as the bundle", _pct(d["fp32_runtime_agrees_with_bundle"])),
            ("fp32 runtime accuracy / bundle accuracy", f"{_pct(d['fp32_runtime_accuracy'])} / {_pct(d['bundle_accuracy'])}")]
    if "int8_bytes" in d:
        rows += [("int8 ONNX file", f"{d['int8_bytes'] / 1e6:.1f} MB ({float(d['size_ratio'] or 0):.1f}x smaller)"),
                 ("int8 forward speed", f"{float(d['speedup'] or 0):.2f}x fp32's"),
                 ("int8 top-1 agreement with fp32", _pct(d["int8_agreement"])),
                 ("accuracy fp32 / int8 (held-out images)", f"{_pct(d['accuracy_fp32'])} / {_pct(d['accuracy_int8'])}")]
    table = "".join(f"<tr><td>{_e(k)}</td><td class=\"num\">{_e(v)}</td></tr>" for k, v in rows)
    verdict = ""
    if d.get("refused_by_default"):
        verdict = (f"<p><b>int8 loses {float(d['loss_points']):.1f} points here</b>: <code>transferkit export --int8</code> refuses it "
                   "unless <code>--force</code> (or a larger <code>--max-int8-loss</code>); ship the fp32 file.</p>")
    return (f"<p>The transfer model as one ONNX file (uint8 pixels in, probabilities out) and what int8 costs on this data.</p>"
            f"<table>{table}</table>{verdict}")


_SECTIONS = {
    "classify": _section_classify,
    "transfer": _section_transfer,
    "finetune": _section_finetune,
    "featuremaps": _section_featuremaps,
    "dream": _section_dream,
    "attack": _section_attack,
    "robustness": _section_robustness,
    "deploy": _section_deploy,
}


def _section(step: StepOutcome | None, key: str, title: str) -> str:
    if step is None:
        return f'<section id="step-{key}" data-status="not-run"><h2>{_e(title)}</h2><p class="note">not run</p></section>'
    status = f'<span class="status {step.status}">{step.status}</span> <span class="note">{step.seconds:.1f} s</span>'
    body = _SECTIONS[key](step) if step.status == "ok" else f"<p>{_e(step.message)}</p>"
    if step.status == "ok" and step.message:
        body = f"<p class=\"note\">{_e(step.message)}</p>" + body
    command = f"<p class=\"note\">Same numbers from the separate command: <code>{_e(step.command)}</code></p>" if step.command and step.status == "ok" else ""
    return f'<section id="step-{key}" data-status="{step.status}"><h2>{_e(title)}</h2>{status}{body}{command}</section>'


def render_demo_report(result: DemoResult) -> str:
    """The report as one HTML string (no external resources)."""
    cfg = result.config
    timing_rows = "".join(
        f"<tr><td>{_e(result.title(k))}</td><td>{_e(result.steps[k].status)}</td>"
            f"<td class=\"num\">{result.steps[k].seconds:.1f}</td><td class=\"num\">{result.steps[k].cpu_seconds:.1f}</td></tr>"
        for k in REPORT_ORDER if k in result.steps
    )
    ds = result.dataset
    dataset_line = (f"<p><b>Dataset:</b> {_e(ds.get('name'))}, {_e(ds.get('images'))} images in {_e(ds.get('classes'))} classes "
                    f"(<code>{_e(ds.get('used'))}</code>). <b>Why:</b> {_e(ds.get('reason'))}</p>") if ds else ""
    choices = {
        "max_images": cfg.max_images, "quick": cfg.quick, "dream_steps": cfg.dream_steps, "dream_size": cfg.dream_size,
        "attack_eps": f"{cfg.attack_eps * 255:g}/255", "attack_steps": cfg.attack_steps,
        "robustness_images": cfg.robustness_images, "robustness_method": cfg.robustness_method,
        "robustness_steps": cfg.robustness_steps, "finetune_epochs": cfg.finetune_epochs, "time_budget_s": cfg.time_budget_s,
    }
    sections = "".join(_section(result.steps.get(k), k, result.title(k)) for k in REPORT_ORDER)
    m = result.machine
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>transferkit demo report</title><style>{_CSS}</style></head>
<body>
<h1>transferkit demo</h1>
<p class="note">Backbone {_e(cfg.backbone)}, seed {_e(cfg.seed)}; total {result.seconds:.0f} s on {_e(m.get('cpu_count'))} CPU cores
({_e(m.get('platform'))}, torch {_e(m.get('torch'))}, {_e(m.get('torch_threads'))} threads, OMP_WAIT_POLICY {_e(m.get('omp_wait_policy'))};
load average at start {_e(m.get('load_average_at_start'))}, at end {_e(m.get('load_average_at_end'))}).</p>
{dataset_line}
<section id="summary"><h2>Steps and time</h2>
<table><tr><th>step</th><th>status</th><th>wall seconds</th><th>CPU seconds</th></tr>{timing_rows}</table>
<p class="note">Sizes chosen so the default run fits 10 minutes on 2 CPU cores: <code>{_e(json.dumps(choices))}</code></p>
</section>
{sections}
<section id="config"><h2>Settings</h2><pre>{_e(json.dumps(asdict(cfg), indent=2, default=str))}</pre></section>
</body></html>
"""


def write_demo_report(result: DemoResult, path: str | os.PathLike) -> Path:
    """Write the report (and ``summary.json`` beside it) atomically; returns the report's path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, text in ((path, render_demo_report(result)),
                         (path.with_name("summary.json"), json.dumps(result.summary(), indent=2, default=str))):
        atomic_write_text(target, text)
    return path
