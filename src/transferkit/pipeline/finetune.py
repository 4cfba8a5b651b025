"""``transferkit train --mode finetune|auto``: the bridge from :class:`transferkit.pipeline.train.TrainConfig`.

:func:`train_finetune` loads and splits the data like the probe, fine-tunes with a
:class:`FinetuneConfig` built from ``TrainConfig.options`` (any FinetuneConfig field, plus ``tta``),
evaluates the held-out split, and saves the bundle (backbone weights included) and a report with
the training curves. ``--mode auto`` is :mod:`transferkit.pipeline.auto`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transferkit.core.errors import DataError
from transferkit.finetune.config import FinetuneConfig, FinetuneError

log = logging.getLogger(__name__)


def finetune_config_from(train_config, base: FinetuneConfig | None = None) -> tuple[FinetuneConfig, str]:
    """(FinetuneConfig, tta mode) from a TrainConfig: its seed/batch/device plus ``options``."""
    options = dict(train_config.options or {})
    tta = str(options.pop("tta", "none"))
    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise FinetuneError(f"unknown fine-tuning option(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    kw: dict[str, Any] = {"seed": train_config.seed, "batch_size": train_config.batch_size}
    if train_config.device:
        kw["device"] = train_config.device
    if train_config.class_weight == "balanced":
        kw["balance"] = "loss"
    kw.update(options)
    cfg = dataclasses.replace(base, **kw) if base is not None else FinetuneConfig(**kw)
    return cfg.validate(), tta


def _kept_score(model, history: list[dict]) -> tuple[float, float]:
    """(val accuracy, -val log loss) of the epoch a validated run kept."""
    row = next(r for r in history if r["epoch"] == model.fit_info["best_epoch"])
    return row["val_acc"], -row["val_loss"]


def _share_trunk_cache(source: Path, target: Path) -> None:
    """Put the trunk activations ``source`` holds into ``target`` too (hard link, else copy), so a
    resumed candidate finds them in its own checkpoint folder."""
    import os
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for f in source.glob("trunk-*.pt"):
        if not (target / f.name).exists():
            try:
                os.link(f, target / f.name)
            except OSError:
                shutil.copy2(f, target / f.name)


def finetune_candidates(train, val, base: FinetuneConfig, candidates: list[dict], *, backbone) -> tuple[Any, list[dict], FinetuneConfig, list[dict]]:
    """Run ``finetune`` once per candidate (overrides of ``base``); keep the best on validation.

    Candidates that differ only in optimisation settings compute the frozen trunk once and share
    its activations in memory. With ``base.checkpoint_dir`` each candidate checkpoints (and can
    resume) in its own ``candidate-<i>`` subfolder. Returns ``(model, history, config, table)``;
    ``table`` has one row per candidate, the chosen one marked.

    Raises:
        FinetuneError: more than one candidate but no validation images to choose with.
    """
    from transferkit.finetune.loop import finetune, shared_trunk_activations

    if len(candidates) <= 1:
        cfg = dataclasses.replace(base, **(candidates[0] if candidates else {})).validate()
        model, history = finetune(train, cfg, backbone=backbone, val=val)
        return model, history, cfg, []
    if val is None or len(val) == 0:
        raise FinetuneError(f"choosing between {len(candidates)} fine-tuning settings needs validation images; give --val > 0")
    best = None
    table: list[dict] = []
    root = Path(base.checkpoint_dir) if base.checkpoint_dir else None
    with shared_trunk_activations():
        for i, overrides in enumerate(candidates):
            cfg = dataclasses.replace(base, **overrides)
            if root is not None:
                if i > 0:
                    _share_trunk_cache(root / "candidate-0", root / f"candidate-{i}")
                cfg = dataclasses.replace(cfg, checkpoint_dir=str(root / f"candidate-{i}"))
            cfg.validate()
            t = time.perf_counter()
            model, history = finetune(train, cfg, backbone=backbone, val=val)
            score = _kept_score(model, history)
            table.append({**overrides, "best_epoch": model.fit_info["best_epoch"], "val_acc": score[0], "val_loss": -score[1],
                          "seconds": round(time.perf_counter() - t, 2)})
            log.info("candidate %d %s: kept epoch %d, val acc %.4f, val loss %.4f", i, overrides, model.fit_info["best_epoch"],
                     score[0], -score[1])
            if best is None or score > best[0]:  # ties keep the earlier candidate
                best = (score, model, history, cfg, i)
    _, model, history, cfg, index = best
    table[index]["chosen"] = True
    return model, history, cfg, table


def train_finetune(config, *, imageset=None, backbone=None, progress=None, finetune_config: FinetuneConfig | None = None,
                   candidates: list[dict] | None = None, write_outputs: bool = True):
    """Fine-tune as ``config`` (a :class:`transferkit.pipeline.train.TrainConfig`) says; returns a ``TrainResult``.

    ``candidates`` (``--mode auto``): overrides of the fine-tuning config to compare on validation
    data; without a validation split, 15 % of the training images are held out for the choice.
    ``write_outputs=False`` leaves the bundle and report to :func:`write_finetune_outputs`.
    """
    from transferkit.backbones import create_backbone
    from transferkit.evaluate.metrics import evaluate_probabilities
    from transferkit.pipeline.train import TrainResult, _load_split

    timings: dict[str, float] = {}
    t = time.perf_counter()
    data = _load_split(config, imageset)
    timings["load_data"] = time.perf_counter() - t
    ft_cfg, tta = finetune_config_from(config, finetune_config)
    if backbone is None:
        backbone = create_backbone(config.backbone, weights=config.weights, image_size=config.image_size, seed=config.seed)
    train = data.where_split("train")
    val = data.where_split("val") if "val" in data.split else None
    test = data.where_split("test") if "test" in data.split else None
    if len(train) == 0:
        raise DataError("the split left no training images; lower --val/--test")
    carved = False
    if candidates and len(candidates) > 1 and (val is None or not len(val)):
        from transferkit.data import split_imageset

        inner = split_imageset(train, val=0.15, test=0.0, seed=config.seed, stratified=True, use_official=False)
        train, val = inner.where_split("train"), inner.where_split("val")
        carved = True
        log.info("no validation split: held out %d of the training images to choose between %d settings", len(val), len(candidates))
    t = time.perf_counter()
    model, history, ft_cfg, table = finetune_candidates(train, val, ft_cfg, candidates or [], backbone=backbone)
    timings["finetune"] = time.perf_counter() - t

    held_out, evaluation = ("test", test) if test is not None and len(test) else ("val", val) if val is not None and len(val) else ("", None)
    metrics: dict[str, Any] = {}
    if held_out:
        t = time.perf_counter()
        from transferkit.evaluate.tta import predict_proba

        probs = predict_proba(model, evaluation, tta=tta)
        evaluation = evaluate_probabilities(probs, evaluation.labels, data.class_names, paths=[str(p) for p in evaluation.paths])
        metrics = dict(evaluation.metrics)
        metrics["split"] = held_out
        if held_out == "val" and candidates and len(candidates) > 1:
            metrics["split_note"] = ("the validation images also chose the setting and the epoch: this accuracy is optimistic; "
                                     "keep a --test split for an unbiased number")
        metrics["tta"] = tta
        timings["evaluate"] = time.perf_counter() - t
    metrics["images"] = {"train": len(train), "val": len(val) if val is not None else 0, "test": len(test) if test is not None else 0}
    metrics["mode"] = "finetune"
    metrics["history"] = history
    metrics["finetune"] = {**model.fit_info, "config": ft_cfg.to_dict()}
    if table:
        metrics["finetune"]["candidates"] = table
        metrics["finetune"]["chosen_on"] = f"{len(val)} images held out of the training split" if carved else f"the {len(val)} validation images"

    metrics["timings"] = {k: round(v, 4) for k, v in timings.items()}
    result = TrainResult(model=model, metrics=metrics, timings=timings, evaluation=evaluation if held_out else None)
    return write_finetune_outputs(config, result) if write_outputs else result


def write_finetune_outputs(config, result):
    """Save a fine-tuned ``result``'s bundle (backbone included) and report under ``config.out``."""
    from transferkit.classifier.bundle import save_bundle

    if not config.out:
        return result
    m = result.metrics
    ft_cfg = m["finetune"]["config"]
    t = time.perf_counter()
    result.bundle_path = save_bundle(config.out, result.model, metrics=m, config={**dataclasses.asdict(config), "finetune": ft_cfg},
                                     include_backbone=True)
    result.timings["save"] = time.perf_counter() - t
    held_out = m.get("split", "")
    if config.report and result.evaluation is not None:
        from transferkit.evaluate.report import write_report

        out_dir = Path(config.out) / "report"
        from transferkit.evaluate.report import training_curves_png

        training_curves_png(m["history"], out_dir / "curves.png")
        result.report_path = write_report(result.evaluation, out_dir,
                                          title=f"{Path(config.data).name or 'data'}: {config.backbone} fine-tuned ({held_out} split)",
                                          details={"config": ft_cfg, "history": m["history"], "curves": "curves.png"})
    m["timings"] = {k: round(v, 4) for k, v in result.timings.items()}
    return result
