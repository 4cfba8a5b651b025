"""`transferkit train`: frozen backbone features + a head -> model bundle + report."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import typer

from transferkit.cli import output


@contextlib.contextmanager
def extraction_progress(description: str = "extracting features") -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar (images/s and ETA) on stderr, as a ``progress(done, total)`` callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class _Rate(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f} img/s" if task.speed else "-- img/s")

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate(), TimeElapsedColumn(),
                   TextColumn("ETA"), TimeRemainingColumn(), console=output.err_console, transient=False)
    state: dict = {}

    def update(done: int, total: int) -> None:
        if "task" not in state:
            # Images served from the cache are done before the clock starts: keep them out of img/s.
            state["task"] = bar.add_task(description, total=total, completed=done)
            bar.start()
            state["started"] = True
        else:
            bar.update(state["task"], completed=done, total=total)

    try:
        yield update
    finally:
        if state.get("started"):
            bar.stop()


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"5m"``, ``"1.5h"`` or ``"none"`` (no limit); one clear error otherwise."""
    t = text.strip().lower()
    if t in ("none", "inf", "unlimited"):
        return float("inf")
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(t[-1:], None)
    number = t[:-1] if scale else t
    try:
        value = float(number) * (scale or 1.0)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise output.fail(f"--time-budget {text!r} is not a duration; use e.g. 90s, 5m, 1h or none")
    return value


def train(
    data: Path = typer.Argument(..., help="dataset folder or CSV (see `transferkit data inspect`)"),
    backbone: str = typer.Option(None, "--backbone", "-b",
                                 help="timm name; see `transferkit backbones` (default efficientnet_lite0; --mode auto then also compares Lite1/Lite2)"),
    mode: str = typer.Option("probe", "--mode", help=(
        "probe (frozen features + head), finetune (LP-FT: probe-initialised head; on a CPU the top blocks on cached trunk "
        "activations, two learning rates compared on validation) or auto: compares the probe on EfficientNet-Lite0/1/2 (each, and "
        "together), then "
        "the probe, the fine-tune and their weight average on validation images, and keeps the probe unless a candidate is "
        "clearly better (McNemar p < 0.05); within --time-budget")),
    time_budget: str = typer.Option(None, "--time-budget", help="--mode auto: how long to spend comparing, e.g. 5m, 90s, 1h or none "
                                                               "(default 15m); what does not fit is skipped and reported"),
    backbones: str = typer.Option(None, "--backbones", help="--mode auto: comma-separated backbones whose probes to compare "
                                                           "(the first is the default choice)"),
    out: Path = typer.Option(Path("model"), "--out", "-o", help="bundle directory to write"),
    engine: str = typer.Option("auto", "--engine", help="feature engine: auto, torch or onnxruntime"),
    seed: int = typer.Option(0, "--seed", help="seed for the split and the head"),
    val: float = typer.Option(0.15, "--val", min=0.0, max=0.95, help="validation fraction"),
    test: float = typer.Option(0.15, "--test", min=0.0, max=0.95, help="test fraction (ignored if the data has an official split)"),
    head: str = typer.Option("logistic", "--head", help="logistic or mlp"),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="images per forward pass"),
    weights: str = typer.Option("auto", "--weights", help="auto, a .safetensors/.pth file, package, hub, or none"),
    class_weight: str = typer.Option("none", "--class-weight", help="none or balanced (for imbalanced classes)"),
    c_value: float = typer.Option(None, "--C", min=1e-9,
                                  help="logistic head: fixed inverse L2 strength (default: chosen by validation/cross-validation)"),
    data_format: str = typer.Option("auto", "--data-format", help="dataset layout: auto, folder, oxford-pets, petimages, kaggle, csv"),
    no_cache: bool = typer.Option(False, "--no-cache", help="do not read or write the feature cache"),
    no_report: bool = typer.Option(False, "--no-report", help="skip the HTML report"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
    epochs: int = typer.Option(None, "--epochs", min=1, help="finetune: total epochs (default 6; --mode auto on a CPU: 3)"),
    head_epochs: int = typer.Option(None, "--head-epochs", min=0, help="finetune: stage-1 epochs training only the head"),
    strategy: str = typer.Option(None, "--strategy", help="finetune: full, or cached (CPU trick: top blocks on cached trunk activations)"),
    unfreeze: str = typer.Option(None, "--unfreeze", help="finetune: layer groups unfrozen in stage 2, from the top: a number or all"),
    lr: float = typer.Option(None, "--lr", help="finetune: head learning rate (see `transferkit lr-find`); lower groups get lr*decay^k"),
    augment: str = typer.Option(None, "--augment", help="finetune: none, light, standard or strong"),
    tta: str = typer.Option("none", "--tta", help="finetune: test-time augmentation for the held-out metrics: none, flip, flip-zoom"),
    checkpoint_dir: Path = typer.Option(None, "--checkpoint-dir", help="finetune: write resumable checkpoints here"),
    resume: bool = typer.Option(False, "--resume", help="finetune: continue from --checkpoint-dir/last.pt (--mode auto: from each candidate-<i>/last.pt)"),
    device: str = typer.Option(None, "--device", help="auto, cpu, cuda, cuda:N or mps (default: CUDA when available)"),
    combine: bool = typer.Option(True, "--combine/--no-combine", help="--mode auto: also compare probes over several backbones together "
                                 "(--no-combine keeps one backbone, as attack, dream, featuremaps and int8 export need)"),
    prefer_combined: bool = typer.Option(False, "--prefer-combined", help="--mode auto: take the backbones' probes averaged unless "
                                         "the configured one is clearly better (more accurate on small data; ~4x prediction time)"),
) -> None:
    """Train a classifier on DATA (frozen-feature probe, or fine-tuning with --mode finetune/auto); write a bundle and a report."""
    from transferkit.pipeline.config import HEAD_KINDS, MODES, TTA_CHOICES, TrainConfig
    from transferkit.pipeline.train import finetune_recipe
    from transferkit.pipeline.train import train as run_train

    output.check_format(fmt, ("table", "json"))
    output.check_format(mode, MODES)
    output.check_format(engine, ("auto", "torch", "onnxruntime"))
    output.check_format(head, HEAD_KINDS)
    output.check_format(class_weight, ("none", "balanced"))
    output.check_format(tta, TTA_CHOICES)
    given = {"epochs": epochs, "head_epochs": head_epochs, "strategy": strategy, "lr": lr, "augment": augment,
             "unfreeze": int(unfreeze) if unfreeze and unfreeze.isdigit() else unfreeze,
             "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir else None, "resume": resume or None}
    given = {k: v for k, v in given.items() if v is not None}
    names = tuple(b.strip() for b in backbones.split(",") if b.strip()) if backbones else None
    if names and mode != "auto":
        raise output.fail("--backbones compares backbones under --mode auto only; use --backbone NAME for one backbone")
    chosen_backbone = backbone or (names[0] if names else "efficientnet_lite0")
    config = TrainConfig(
        data=str(data), backbone=chosen_backbone, time_budget=parse_duration(time_budget) if time_budget else None,
        backbone_candidates=names if names else ((chosen_backbone,) if backbone else None), weights=weights, mode=mode, out=str(out), engine=engine, head=head,
        val=val, test=test, seed=seed, batch_size=batch_size, class_weight=None if class_weight == "none" else class_weight, C=c_value,
        format=data_format, cache=not no_cache, report=not no_report, device=device,
        finetune=finetune_recipe(mode, device, **given) if mode != "probe" and given else None,
        lr_candidates=(lr,) if lr is not None and mode != "probe" else None, tta=tta if mode != "probe" else "none", combine=combine,
        prefer_combined=prefer_combined,
    )
    from transferkit.features.distributed import is_main_process

    if not is_main_process():  # another rank of a torchrun job: it shares the work, rank 0 reports
        run_train(config)
        return
    with extraction_progress() as progress:
        result = run_train(config, progress=progress)
    if fmt == "json":
        output.print_json({"bundle": str(result.bundle_path) if result.bundle_path else None,
                           "report": str(result.report_path) if result.report_path else None,
                           "report_error": result.report_error or None, "metrics": result.metrics})
        if result.report_error:
            output.warn(f"the bundle was saved but its report was not: {result.report_error}")
        return
    trained = result.auto.backbone if result.auto is not None and result.auto.backbone else chosen_backbone
    output.print_table(f"trained {trained} ({mode})", ("", ""), _result_rows(result))
    if result.bundle_path:
        output.info(f"model bundle: {result.bundle_path}")
    if result.report_path:
        output.info(f"report: {result.report_path}")
    if result.report_error:
        output.warn(f"the bundle was saved but its report was not: {result.report_error}")


def _result_rows(result) -> list[tuple[str, str]]:
    """The table ``train`` prints: images, held-out metrics, what was chosen, the head or fine-tune, time."""
    m = result.evaluation.metrics if result.evaluation is not None else {}
    rows = [("images (train / val / test)", " / ".join(str(result.images.get(s, 0)) for s in ("train", "val", "test")))]
    if len(result.unused):
        rows.append(("files not used", f"{len(result.unused)} ({', '.join(f'{n} {k}' for k, n in result.unused.by_reason().items())})"))
    if m:
        s = result.split
        rows += [(f"{s} accuracy", f"{m['accuracy']:.4f}")]
        rows += [(f"{s} {k} accuracy", f"{v:.4f}") for k, v in m["top_k"].items() if k != "top1"]
        rows += [(f"{s} macro F1", f"{m['macro_f1']:.4f}"), (f"{s} calibration error (ECE)", f"{m['ece']:.4f}")]
    if result.auto is not None:
        rows.append(("--mode auto chose", f"{result.auto.mode}: {result.auto.reason}"))
        for c in result.auto.candidates:
            if c.note:
                rows.append((f"  compared: {c.name}", c.note))
                continue
            cmp = f"; vs {c.versus}: +{c.comparison['b']}/-{c.comparison['c']}, p={c.comparison['p_better']:.3g}" if c.comparison else ""
            rows.append((f"  compared: {c.name}", f"{c.stage} stage, {c.n} images: accuracy {c.accuracy:.4f}, log loss {c.log_loss:.4f}, "
                                                 f"{c.seconds:.0f}s{cmp}{' <- kept' if c.chosen else ''}"))
    ft = result.finetune
    if ft is not None:
        cfg = ft.config
        rows.append(("fine-tuning", f"strategy {cfg.strategy}, unfreeze {cfg.unfreeze}, lr {cfg.lr:g}, {cfg.epochs} epochs"))
        if ft.best_epoch is not None:
            rows.append(("kept epoch", ("0 (the probe LP-FT started from; see the note)" if ft.note else
                                        "0 (the probe LP-FT started from: no epoch beat it on validation)") if ft.best_epoch == 0
                         else str(ft.best_epoch)))
        if ft.note:
            rows.append(("note", ft.note))
    candidates = ft.candidates if ft is not None else (result.auto.tried if result.auto is not None else [])
    for c in candidates:
        rows.append((f"fine-tune candidate lr {c.lr:g}", f"val accuracy {c.val_acc:.4f}, val loss {c.val_loss:.4f}, "
                                                         f"kept epoch {c.best_epoch}{' <- chosen' if c.chosen else ''}"))
    if result.split_note:
        rows.append(("note", result.split_note))
    if ft is None and result.head is not None:
        h = result.head
        how = ", chosen by cross-validation" if result.config.C is None else ""
        per = ", ".join(f"{c:.4g}" for c in h.C_per_backbone if c is not None)
        rows.append(("head", h.kind + (f" (C={h.C:.4g}{how})" if h.C is not None else
                                       f", one per backbone (C={per}{how})" if per else "")))
        f = result.features
        rows.append(("features", f"{f.get('computed', 0)} computed ({f.get('engine')}), {f.get('cached', 0)} from cache, "
                                 f"{f.get('failed', 0)} unreadable"))
    rows.append(("time", ", ".join(f"{k} {v:.2f}s" for k, v in result.timings.items())))
    return rows
