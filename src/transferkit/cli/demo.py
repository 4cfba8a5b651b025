"""`transferkit demo`: the whole lesson in one offline command, with an HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from transferkit.cli import output


def demo(
    data: Path = typer.Option(None, "--data", help="dataset folder or CSV (class folders, Oxford-IIIT, PetImages, Kaggle, CSV)"),
    dataset: str = typer.Option(None, "--dataset", help="a dataset by name: oxford-pets, petimages, fashion-mnist"),
    out: Path = typer.Option(Path("transferkit-demo"), "--out", "-o", help="output folder (report.html, summary.json, model/)"),
    quick: bool = typer.Option(False, "--quick", help="skip fine-tuning; smaller dataset cap, renders and attack counts"),
    backbone: str = typer.Option("efficientnet_lite0", "--backbone", "-b", help="pretrained network (see `transferkit backbones`)"),
    weights: str = typer.Option("auto", "--weights", help="auto, a weights file, package, hub or none"),
    seed: int = typer.Option(0, "--seed", help="seeds the split, the head, the renders and the attacks"),
    max_images: int = typer.Option(None, "--max-images", min=20, help="cap on dataset images (stratified subset; default 1300)"),
    time_budget: float = typer.Option(570.0, "--time-budget", min=0, help="seconds; fine-tuning runs only if it fits in what is left"),
    steps: str = typer.Option(None, "--steps", help="run only these steps, comma-separated: classify,transfer,finetune,featuremaps,dream,attack,robustness"),
    fmt: str = typer.Option("table", "--format", help="table or json (the summary printed at the end)"),
) -> None:
    """Run the whole lesson offline: pretrained labels, transfer, fine-tuning, feature maps, ideal images, attacks.

    The dataset is, in order: --data; --dataset; Oxford-IIIT Pet (cached, or downloaded when the
    site is reachable); Fashion-MNIST from the Debian package dataset-fashion-mnist.
    """
    import warnings

    # scikit-learn's notices about its own future API say nothing a demo user can act on.
    warnings.filterwarnings("ignore", category=FutureWarning, module="sklearn")
    from transferkit.demo.result import REPORT_ORDER, DemoConfig
    from transferkit.demo.run import run_demo

    output.check_format(fmt, ("table", "json"))
    if data is not None and dataset is not None:
        raise typer.BadParameter("give --data or --dataset, not both")
    wanted = None
    if steps:
        wanted = tuple(x.strip() for x in steps.split(",") if x.strip())
        unknown = [x for x in wanted if x not in REPORT_ORDER]
        if unknown:
            raise typer.BadParameter(f"unknown step(s) {', '.join(unknown)}; use {', '.join(REPORT_ORDER)}")
    config = DemoConfig(data=str(data) if data else None, dataset=dataset, out=str(out), quick=quick, backbone=backbone,
                        weights=weights, seed=seed, max_images=max_images, time_budget_s=time_budget)
    # Progress goes to stderr so that stdout holds only the summary (a table, or JSON for scripts).
    import contextlib

    from transferkit.cli.datasets import download_progress

    with contextlib.ExitStack() as stack:
        factories: list = []

        def progress_factory(name: str):
            # The progress display starts only if a download happens (the offline path never shows it).
            if not factories:
                factories.append(stack.enter_context(download_progress()))
            return factories[0](name)

        result = run_demo(config, notify=lambda line: output.err_console.print(line, highlight=False), steps=wanted,
                          progress_factory=progress_factory)
    if fmt == "json":
        output.print_json({**result.summary(), "report": str(result.report_path)})
    else:
        rows = []
        for key in REPORT_ORDER:
            step = result.steps.get(key)
            if step is None:
                continue
            rows.append((result.title(key), step.status, f"{step.seconds:.1f}", _headline(key, step)))
        output.print_table(f"transferkit demo: {result.seconds:.0f} s", ("step", "status", "seconds", "result"), rows)
        output.info(f"report: {result.report_path}")
    if not result.ok:
        failed = ", ".join(k for k, s in result.steps.items() if s.status == "failed")
        raise output.fail(f"demo steps failed: {failed} (details in {result.report_path})")


def _headline(key: str, step) -> str:
    """One short line per step for the console summary."""
    d = step.data
    if step.status != "ok":
        return step.message[:100]
    if key == "classify":
        return "; ".join(f"{p['photo']}: {p['top'][0]['label']}" for p in d.get("photos", []) if p.get("top"))[:100]
    if key == "transfer":
        return (f"{d.get('dataset', {}).get('name')}: accuracy {100 * d['accuracy']:.1f}%"
               f" on {d.get('images', {}).get(d.get('split', 'test'))} {d.get('split')} images")
    if key == "finetune":
        return f"accuracy {100 * d['accuracy']:.1f}% (probe {100 * d['probe_accuracy']:.1f}%)"
    if key == "dream":
        return "; ".join(f"{r['class']} ({'TV' if r['image'].endswith('_tv') else 'no TV'}): p={r['probability']:.3f}" for r in d.get("renders", []))
    if key == "attack":
        after = d["top_after"][0]
        return f"{d['direction']}: now '{after['label']}' {100 * after['probability']:.0f}% at eps {d['eps_255']:g}/255"
    if key == "robustness":
        return ", ".join(f"{p['eps']}: {100 * p['accuracy']:.0f}%" for p in d.get("points", []))
    if key == "featuremaps":
        return f"{len(d.get('layers', []))} layers"
    if key == "deploy":
        line = f"fp32 ONNX agrees with the bundle on {100 * d['fp32_runtime_agrees_with_bundle']:.0f}%"
        if d.get("accuracy_int8") is not None:
            line += (f"; int8 {float(d['size_ratio']):.1f}x smaller, {100 * d['accuracy_int8']:.1f}% vs {100 * d['accuracy_fp32']:.1f}%"
                     + (" (refused by default)" if d.get("refused_by_default") else ""))
        return line
    return ""
