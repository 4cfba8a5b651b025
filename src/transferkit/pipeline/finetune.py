"""``mode="finetune"``: the training images through :func:`transferkit.finetune.finetune`, evaluated and saved.

Several candidate settings (``TrainConfig.lr_candidates``) are compared on validation data; when
there is no validation split, 15 % of the training images are held out for that choice. On small data
a fine-tuned epoch must also beat the probe clearly there (:func:`_probe_unless_clearly_beaten`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

from transferkit.core.errors import DataError, TransferkitError
from transferkit.finetune.config import FinetuneConfig, FinetuneError
from transferkit.pipeline.config import TrainConfig
from transferkit.pipeline.result import Candidate, FinetuneSummary, TrainResult

log = logging.getLogger(__name__)

CARVED_VAL_FRACTION = 0.15
# Below this many training images in some class (the threshold under which --mode auto does not fine-tune
# at all), validation is a handful of images and the best of several epochs and rates on it is partly
# luck: a fine-tuned epoch is kept only if it beats the probe clearly there (see _probe_unless_clearly_beaten).
SMALL_DATA_PER_CLASS = 20


def finetune_config_for(config: TrainConfig, base: FinetuneConfig | None = None) -> FinetuneConfig:
    """The fine-tuning settings of a run: ``config.finetune`` (else ``base``, else the defaults) with its seed, batch, device, balance."""
    cfg = config.finetune or base or FinetuneConfig()
    kw = {"seed": config.seed, "batch_size": config.batch_size}
    if config.device:
        kw["device"] = config.device
    if config.class_weight == "balanced":
        kw["balance"] = "loss"
    return dataclasses.replace(cfg, **kw).validate()


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


def _score(fit) -> tuple[float, float]:
    """(val accuracy, -val log loss) of the epoch a validated run kept."""
    row = fit.kept_row
    return row["val_acc"], -row["val_loss"]


def finetune_candidates(train, val, base: FinetuneConfig, lrs: tuple[float, ...], *, backbone):
    """Run ``finetune`` once per learning rate; keep the best on validation.

    Candidates compute the frozen trunk once and share its activations in memory. With
    ``base.checkpoint_dir`` each checkpoints (and can resume) in its own ``candidate-<i>`` subfolder.

    Returns:
        ``(FinetuneResult of the kept run, its config, one Candidate per learning rate)``.

    Raises:
        FinetuneError: more than one candidate but no validation images to choose with.
    """
    from transferkit.finetune.loop import finetune, shared_trunk_activations

    if len(lrs) <= 1:
        cfg = dataclasses.replace(base, lr=lrs[0]).validate() if lrs else base
        return finetune(train, cfg, backbone=backbone, val=val), cfg, []
    if val is None or len(val) == 0:
        raise FinetuneError(f"choosing between {len(lrs)} fine-tuning settings needs validation images; give --val > 0")
    best, table = None, []
    root = Path(base.checkpoint_dir) if base.checkpoint_dir else None
    with shared_trunk_activations():
        for i, lr in enumerate(lrs):
            cfg = dataclasses.replace(base, lr=lr)
            if root is not None:
                if i > 0:
                    _share_trunk_cache(root / "candidate-0", root / f"candidate-{i}")
                cfg = dataclasses.replace(cfg, checkpoint_dir=str(root / f"candidate-{i}"))
            cfg.validate()
            t = time.perf_counter()
            fit = finetune(train, cfg, backbone=backbone, val=val)
            score = _score(fit)
            table.append(Candidate(lr=lr, best_epoch=fit.best_epoch, val_acc=score[0], val_loss=-score[1],
                                   seconds=round(time.perf_counter() - t, 2)))
            log.info("candidate lr %g: kept epoch %s, val acc %.4f, val loss %.4f", lr, fit.best_epoch, score[0], -score[1])
            if best is None or score > best[0]:  # ties keep the earlier candidate
                best = (score, fit, cfg, i)
    _, fit, cfg, index = best
    table[index].chosen = True
    return fit, cfg, table


def split_parts(config: TrainConfig, data, lrs):
    """(train, val, test, carved): the parts of ``data``; validation carved from training when choosing needs it."""
    train = data.where_split("train")
    val = data.where_split("val") if "val" in data.split else None
    test = data.where_split("test") if "test" in data.split else None
    carved = False
    # auto always needs validation images: it compares the fine-tune with the probe on them
    if (len(lrs) > 1 or config.mode == "auto") and (val is None or not len(val)):
        from transferkit.data import split_imageset

        inner = split_imageset(train, val=CARVED_VAL_FRACTION, test=0.0, seed=config.seed, stratified=True, use_official=False)
        train, val = inner.where_split("train"), inner.where_split("val")
        carved = True
        log.info("no validation split: held out %d of the training images to choose between %d settings", len(val), len(lrs))
    return train, val, test, carved


def score_held_out(result: TrainResult, data, network) -> TrainResult:
    """Evaluate ``network`` on the run's test images (else its validation images, with a caveat) into ``result``."""
    from transferkit.evaluate.model import evaluate_model
    from transferkit.pipeline.probe import timed

    ft = result.finetune
    test = data.where_split("test") if "test" in data.split else None
    held_out, part = ("test", test) if test is not None and len(test) else ("val", ft.val_images) \
        if ft.val_images is not None and len(ft.val_images) else ("", None)
    if not held_out:
        return result
    config = result.config
    with timed(result.timings, "evaluate"):  # on the feature engine (an export of this network), flip TTA too
        result.evaluation = evaluate_model(network, part, engine=config.engine, batch_size=config.batch_size, cache=config.cache,
                                           device=config.device, tta=config.tta)
        # The run's record keeps the fine-tune's schema: no per-file failures (the split's files were
        # verified) and no scoring pass's extraction counts, which the probe's record uses for training.
        for key in ("failed_images", "features"):
            result.evaluation.metrics.pop(key, None)
    result.split = held_out
    if held_out == "val":
        result.split_note = ("the validation images also chose the epoch (and the setting): this accuracy is optimistic; "
                             "keep a --test split for an unbiased number")
    return result


def _refit_kept_probe(config: TrainConfig, data, network, summary: FinetuneSummary, timings: dict, progress=None) -> None:
    """Validation kept epoch 0, the probe LP-FT started from, fitted on the training part alone: give ``network``
    the probe mode's own head instead (the same features, C by cross-validation on every training image,
    validation included), so ``--mode finetune`` never ends below ``--mode probe`` for want of the images
    it held out. Only where a test split holds the evaluation (else the validation images are the
    evaluation and must stay out of the head), and not under torchrun (the extraction needs every rank)."""
    import numpy as np

    from transferkit.features.cache import usable_cache
    from transferkit.features.distributed import world
    from transferkit.pipeline.probe import fit_head, head_rows, probe_features, split_rows, timed

    split = np.asarray(data.split)
    if not (split == "test").any():
        summary.note = "kept epoch 0: the probe fitted on the training part (the validation images are the evaluation)"
        return
    if world().enabled:
        summary.note = "kept epoch 0: the probe fitted on the training part (not refitted under torchrun)"
        return
    probe_config = dataclasses.replace(config, head="logistic")  # the head validation chose, not an MLP
    cache = usable_cache(config.cache)
    with timed(timings, "refit_probe"):
        feats, _, _ = probe_features(probe_config, data, cache, network.backbone, progress, {})
        idx = split_rows(data, feats.ok)
        n_fit = len(head_rows(idx))
        try:
            head, head_summary, _ = fit_head(probe_config, feats.X, data.labels, idx, data.num_classes, cache, consume_X=True)
        except TransferkitError as exc:
            summary.note = f"kept epoch 0: the probe fitted on the training part (refitting it on every training image failed: {exc})"
            log.warning("%s", summary.note)
            return
    network.head = head.to_module()
    chosen_C = f", C {head_summary.C:g}" if head_summary.C is not None else ""
    summary.note = f"kept epoch 0 (the probe): its head refitted on all {n_fit} training images, as --mode probe fits it{chosen_C}"
    log.info("fine-tuning %s", summary.note)


def _probe_unless_clearly_beaten(config: TrainConfig, data, train, val, fit, summary: FinetuneSummary, backbone) -> bool:
    """On small data (:data:`SMALL_DATA_PER_CLASS`), keep the fine-tuned epoch validation chose only if it beats
    the probe clearly on the validation images (McNemar, the rule ``--mode auto`` decides by); else put the probe
    (pretrained backbone, logistic head on the training part) in ``fit.model``. Returns whether it did."""
    import numpy as np

    from transferkit.classifier.bundle import ClassifierModel
    from transferkit.evaluate.compare import mcnemar
    from transferkit.evaluate.tta import predict_proba
    from transferkit.features.cache import usable_cache
    from transferkit.pipeline.auto import AUTO_SWITCH_P, probe_on_validation
    from transferkit.pipeline.probe import probe_features

    smallest = int(np.bincount(np.asarray(train.labels), minlength=data.num_classes).min())
    if smallest >= SMALL_DATA_PER_CLASS or not fit.best_epoch or val is None or not len(val):
        return False
    probe_config = dataclasses.replace(config, head="logistic", mode="probe")
    feats, _, built = probe_features(probe_config, data, usable_cache(config.cache), None, None, {})
    head, probe_p, ok = probe_on_validation(probe_config, data, feats, train, val)
    y_val = np.asarray(val.labels)
    probe_correct = (np.argmax(probe_p, axis=1) == y_val) & ok
    tuned_correct = np.argmax(predict_proba(fit.model, val), axis=1) == y_val
    cmp = mcnemar(tuned_correct, probe_correct)
    said = (f"on {len(val)} validation images the fine-tune (epoch {fit.best_epoch}) won {cmp.b} and lost {cmp.c} against the "
            f"probe (McNemar p = {cmp.p_better:.3g})")
    if cmp.clearly_better(AUTO_SWITCH_P):
        summary.note = f"small data (smallest class: {smallest} training images): {said}, clearly better, so it was kept"
        return False
    network = ClassifierModel(built if built is not None else backbone, head.expand_module(data.num_classes), data.class_names).eval()
    fit.model, fit.best_epoch = network, 0
    summary.best_epoch = 0
    summary.note = (f"small data (smallest class: {smallest} training images): {said}, not clearly better, so the probe was kept")
    log.info("fine-tuning: %s", summary.note)
    return True


def train_finetune(config: TrainConfig, *, imageset=None, backbone=None, progress=None, base: FinetuneConfig | None = None,
                   lrs: tuple[float, ...] | None = None, write: bool = True, evaluate: bool = True,
                   refit_kept_probe: bool = True, small_data_rule: bool = True) -> TrainResult | None:
    """Fine-tune as ``config`` says; evaluate on the held-out split; save the bundle (backbone included) and report.

    Args:
        base: fine-tuning settings when ``config.finetune`` is ``None`` (``--mode auto`` passes its recipe).
        lrs: learning rates to compare on validation (default: ``config.lr_candidates``, else the config's lr).
        write: save the bundle and report (``--mode auto`` saves only the run it keeps).
        evaluate: score the held-out split (``--mode auto`` scores only the model it keeps).
        refit_kept_probe: when validation keeps epoch 0, refit the probe's head on every training image
            (:func:`_refit_kept_probe`); ``--mode auto`` compares the unrefitted one on validation.
        small_data_rule: on small data keep a fine-tuned epoch only when it beats the probe clearly on
            validation (:func:`_probe_unless_clearly_beaten`); ``--mode auto`` makes that comparison itself.

    Under torchrun every rank trains (DDP); rank 0 alone evaluates and saves, and the other ranks
    return ``None`` (with ``write=False``: the result without an evaluation).
    """
    from transferkit.classifier.trained import TrainedModel
    from transferkit.data.unused import UnusedFiles
    from transferkit.features.distributed import barrier, is_main_process, world
    from transferkit.pipeline.data import load_split
    from transferkit.pipeline.outputs import write_outputs
    from transferkit.pipeline.probe import _data_name, build_backbone, timed

    timings: dict[str, float] = {}
    with timed(timings, "load_data"):
        data = load_split(config, imageset)
    ft_cfg = finetune_config_for(config, base)
    lrs = tuple(lrs if lrs is not None else (config.lr_candidates or ()))
    if backbone is None:
        backbone = build_backbone(config)
    train, val, test, carved = split_parts(config, data, lrs)
    if len(train) == 0:
        raise DataError("the split left no training images; lower --val/--test")
    with timed(timings, "finetune"):
        fit, ft_cfg, table = finetune_candidates(train, val, ft_cfg, lrs, backbone=backbone)
    main = is_main_process()
    summary = FinetuneSummary(config=ft_cfg, history=fit.history, best_epoch=fit.best_epoch, strategy=fit.strategy, device=fit.device,
                              world_size=fit.world_size, timings=fit.timings, candidates=table,
                              chosen_on=(f"{len(val)} images held out of the training split" if carved else f"the {len(val)} validation images")
                              if table else "", train_images=train, val_images=val)
    result = TrainResult(model=TrainedModel.from_network(fit.model, include_backbone=True), config=config, finetune=summary,
                         unused=UnusedFiles.collect(data.report), timings=timings,
                         images={"train": len(train), "val": len(val) if val is not None else 0, "test": len(test) if test is not None else 0})
    if not main:  # another rank of a torchrun job: rank 0 evaluates and saves
        if write:
            barrier()
            return None
        return result
    reverted = small_data_rule and not world().enabled and _probe_unless_clearly_beaten(config, data, train, val, fit, summary, backbone)
    if reverted:
        result.model = TrainedModel.from_network(fit.model, include_backbone=True)
    if refit_kept_probe and fit.best_epoch == 0 and val is not None and len(val):
        said = summary.note if reverted else ""
        _refit_kept_probe(config, data, fit.model, summary, timings, progress)
        summary.note = f"{said}; {summary.note}" if said else summary.note
        result.model = TrainedModel.from_network(fit.model, include_backbone=True)
    if evaluate:
        score_held_out(result, data, fit.model)
    if result.unused:
        log.warning("%s", result.unused.summary())
    if not write:
        return result
    result = write_outputs(result, data_name=_data_name(config), kind="fine-tuned")
    barrier()
    return result


__all__ = ["finetune_candidates", "finetune_config_for", "score_held_out", "split_parts", "train_finetune"]
