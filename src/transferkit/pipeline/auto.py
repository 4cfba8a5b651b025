"""``--mode auto``: compare candidate models on the same images and keep the probe unless one wins clearly.

The decision, in two stages, all inside a time budget (:data:`AUTO_TIME_BUDGET` unless the user sets one):

1. **Backbone.** The probe (logistic head, L2 strength by 5-fold cross-validation) on the features of
   each offline backbone (:data:`AUTO_BACKBONES`: EfficientNet-Lite0/1/2), scored by its
   out-of-fold predictions over every training image: each image is predicted by a fit that did not
   see it, so all of them, not a small validation split, take part. With ``config.combine``, two
   more candidates on the same features (:mod:`transferkit.pipeline.combined`): one probe over them
   all concatenated, and the backbones' probes averaged. Another candidate replaces the configured
   backbone's probe only if it is *clearly* better in a paired test on those images; a combined one
   that wins is fitted and saved as a multi-backbone bundle, and stage 2 is not run.
2. **Model.** When :func:`choose_mode` allows fine-tuning and its estimated cost fits in what is left
   of the budget: the cached-trunk LP-FT fine-tune (:func:`auto_finetune_config`, the learning rates
   of :data:`AUTO_CPU_LRS`), the probe and fine-tuned network averaged in weight space
   (:func:`transferkit.finetune.interpolate_weights`), and the two side by side with their
   probabilities averaged, each scored on the validation images against the probe fitted without them.
   A fine-tune replaces the probe only if it is clearly better there.

"Clearly better" is McNemar's exact test on the images both models were scored on: more images won
than lost and a one-sided p-value below :data:`AUTO_SWITCH_P`. Validation also chose the fine-tune's
epoch and rate, which flatters it a little; the test's margin is what guards against that. Every
candidate, its cost, its scores and the test go into ``result.auto`` and the report.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from transferkit.finetune.config import FinetuneConfig
from transferkit.pipeline.config import TrainConfig
from transferkit.pipeline.finetune import train_finetune
from transferkit.pipeline.result import AutoCandidate, AutoChoice, Candidate, TrainResult

log = logging.getLogger(__name__)

# --mode auto thresholds (see choose_mode).
AUTO_MIN_PER_CLASS = 20
AUTO_MAX_CPU_IMAGES = 20_000
# The backbones auto compares when the configured one is among them and nothing else was asked for.
AUTO_BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
# Default time budget of --mode auto, in seconds (--time-budget changes it).
AUTO_TIME_BUDGET = 15 * 60.0
# A candidate replaces the probe (or the configured backbone) only when McNemar's one-sided exact
# p-value on the images compared is below this, with more images won than lost.
AUTO_SWITCH_P = 0.05
# Where the weight-space average sits between the probe (0) and the fine-tuned network (1).
AUTO_WISE_ALPHA = 0.5
# The cost model behind the budget, measured on the 2-core CPUs with EfficientNet-Lite0 (cats vs dogs,
# 850 training images: 110 s for the cached-trunk fine-tune with two learning rates): seconds per
# training image for the trunk pass of 4 views, and per training image per learning rate; seconds per
# image of an eager validation pass. Other backbones scale by RELATIVE_COST; a GPU divides by GPU_SPEEDUP.
FT_SECONDS_PER_IMAGE = (0.045, 0.04)
EVAL_SECONDS_PER_IMAGE = 0.035
RELATIVE_COST = {"efficientnet_lite0": 1.0, "efficientnet_lite1": 1.6, "efficientnet_lite2": 2.3}
GPU_SPEEDUP = 10.0
DEFAULT_EXTRACTION_RATE = 60.0  # images/s when the first backbone's features all came from the cache
BACKBONE_BUDGET_SHARE = 0.5  # extra backbones may use up to this share of the budget


def choose_mode(class_counts: dict[str, int] | list[int], device: str = "auto") -> tuple[str, str]:
    """Whether ``--mode auto`` may fine-tune at all: ``("probe" | "finetune", reason)``.

    1. Fewer than 20 training images in some class -> ``probe``: too little data for fine-tuning to
       beat a linear probe on frozen features reliably (auto still compares backbones).
    2. A GPU (CUDA or Apple MPS) is available -> ``finetune`` is tried (staged, ``strategy="full"``).
    3. CPU only and at most 20,000 training images -> ``finetune`` is tried with ``strategy="cached"``
       (trunk activations cached once, top blocks trained), if its estimate fits the time budget.
    4. CPU only and more images -> ``probe`` (fine-tuning would take hours on a CPU).

    Whatever is tried, the probe is kept unless a fine-tune beats it clearly (see the module).
    """
    counts = list(class_counts.values()) if isinstance(class_counts, dict) else list(class_counts)
    total = int(sum(counts))
    smallest = int(min(counts)) if counts else 0
    if smallest < AUTO_MIN_PER_CLASS:
        return "probe", f"the smallest class has {smallest} training images (< {AUTO_MIN_PER_CLASS}): a probe is safer"
    if _has_gpu(device):
        return "finetune", "a GPU is available: full staged fine-tuning"
    if total <= AUTO_MAX_CPU_IMAGES:
        return "finetune", f"CPU with {total} training images (<= {AUTO_MAX_CPU_IMAGES}): fine-tune the top blocks on cached activations"
    return "probe", f"CPU with {total} training images (> {AUTO_MAX_CPU_IMAGES}): fine-tuning would take hours, use the probe"


def _has_gpu(device: str) -> bool:
    if device.startswith(("cuda", "mps")):
        return True
    if device != "auto":
        return False
    import torch

    mps = getattr(torch.backends, "mps", None)
    return torch.cuda.is_available() or (mps is not None and mps.is_available())


# --mode auto on a CPU tries these head learning rates (the layer groups below get less) and keeps
# what validation prefers, the probe it starts from included. Far-from-ImageNet data (Fashion-MNIST:
# 2e-3 wins) and near-ImageNet photos (cats vs dogs: small rates keep the probe's accuracy) want
# rates an order of magnitude apart; both candidates share one trunk-activation cache.
AUTO_CPU_LRS = (3e-4, 2e-3)


def auto_finetune_config(device: str = "auto", **overrides) -> FinetuneConfig:
    """The fine-tuning recipe of ``--mode auto`` and ``--mode finetune`` (cached top blocks on CPU).

    On a CPU: the top 3 layer groups train on cached trunk activations of 4 views (light
    augmentation), 3 epochs, no label smoothing (it pulled LP-FT below the probe on cats vs dogs),
    the best validation epoch kept (epoch 0 = the probe). The learning rate is the first of
    :data:`AUTO_CPU_LRS`; :func:`auto_lr_candidates` lists the ones compared. On a GPU: the library's
    staged whole-network defaults.
    """
    base = dict(strategy="cached", unfreeze=3, cached_views=4, epochs=3, head_epochs=0, lr=AUTO_CPU_LRS[0], label_smoothing=0.0,
                augment="light") if not _has_gpu(device) else {}
    base.update(overrides)
    return FinetuneConfig(**base)


def auto_lr_candidates(config: FinetuneConfig) -> tuple[float, ...]:
    """Learning rates compared on validation: :data:`AUTO_CPU_LRS` on the CPU recipe
    (``strategy="cached"``), else the config's own rate alone."""
    return AUTO_CPU_LRS if config.strategy == "cached" else (config.lr,)


def _class_counts_for_choice(config: TrainConfig, imageset) -> list[int]:
    """Training images per class the split will leave (an official split: its training part, less validation)."""
    labels, train_share = imageset.labels, max(0.0, 1.0 - config.val - config.test)
    if imageset.split is not None and "train" in imageset.split:
        labels = imageset.labels[np.asarray(imageset.split) == "train"]
        train_share = 1.0 if "val" in imageset.split else max(0.0, 1.0 - config.val)
    counts = np.bincount(labels, minlength=len(imageset.class_names))
    return [int(c * train_share) for c in counts]


def _as_candidate(tuned: TrainResult) -> Candidate:
    """The one fine-tune a run tried, as a row of the candidates table."""
    ft = tuned.finetune
    row = next((r for r in ft.history if r["epoch"] == ft.best_epoch), {})
    return Candidate(lr=ft.config.lr, best_epoch=ft.best_epoch, val_acc=row.get("val_acc", float("nan")),
                     val_loss=row.get("val_loss", float("nan")), seconds=round(tuned.timings.get("finetune", 0.0), 2))


def backbone_candidates(config: TrainConfig) -> tuple[str, ...]:
    """The backbones auto compares, the configured one first: ``config.backbone_candidates`` when set,
    else :data:`AUTO_BACKBONES` when the configured backbone is one of them with its offline weights
    (``weights="auto"``), else the configured backbone alone."""
    if config.backbone_candidates is not None:
        rest = [b for b in config.backbone_candidates if b != config.backbone]
        return (config.backbone, *rest)
    if config.backbone in AUTO_BACKBONES and config.weights == "auto":
        return (config.backbone, *[b for b in AUTO_BACKBONES if b != config.backbone])
    return (config.backbone,)


def time_budget(config: TrainConfig) -> float:
    """Seconds auto may spend (``inf``: no limit)."""
    return AUTO_TIME_BUDGET if config.time_budget is None else float(config.time_budget)


def estimate_finetune_seconds(n_train: int, n_val: int, lrs: tuple[float, ...], backbone: str, device: str) -> float:
    """What the fine-tune candidates should cost (the budget's cost model; see :data:`FT_SECONDS_PER_IMAGE`)."""
    trunk, per_lr = FT_SECONDS_PER_IMAGE
    seconds = n_train * (trunk + per_lr * max(1, len(lrs))) + 2 * n_val * EVAL_SECONDS_PER_IMAGE
    seconds *= RELATIVE_COST.get(backbone, 2.0)
    return seconds / GPU_SPEEDUP if _has_gpu(device) else seconds


def _correct(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.argmax(proba, axis=1) == y


def _log_loss(proba: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.log(p).mean()) if len(y) else float("nan")


def _full_proba(head, proba: np.ndarray, num_classes: int) -> np.ndarray:
    """Probabilities over every class index (columns of classes the head never saw are 0)."""
    out = np.zeros((len(proba), num_classes), dtype=np.float64)
    out[:, np.asarray(head.classes_, dtype=np.int64)] = proba
    return out


@dataclasses.dataclass
class _BackboneScore:
    name: str
    feats: object
    spec: object
    backbone: object
    oof_rows: np.ndarray | None = None
    oof_correct: np.ndarray | None = None
    row: AutoCandidate | None = None
    oof_proba: np.ndarray | None = None
    combine: str = ""  # "concat" / "ensemble": a probe over several backbones (``members``)
    members: list | None = None


def _probe_cv(config: TrainConfig, X: np.ndarray, y: np.ndarray, rows: np.ndarray | None):
    """The probe's logistic head fitted on ``rows`` with C by cross-validation, and its out-of-fold record.

    ``rows=None``: on every row of ``X``, which is then the caller's to lose (standardised in place, not copied).
    """
    from transferkit.heads import create_head
    from transferkit.pipeline.probe import head_options

    head = create_head("logistic", **{k: v for k, v in head_options(config).items() if k != "C"})
    if rows is None:
        head.set_params(copy_X=False)
        return head.fit(X, y)
    head.fit(X[rows], y[rows])
    return head


def _compare_backbones(config: TrainConfig, data, cache, backbone, progress, timings, budget, started) -> tuple[_BackboneScore, list]:
    """Stage 1: features of each candidate backbone; the configured one unless another is clearly better."""
    from transferkit.features.distributed import world
    from transferkit.pipeline.probe import head_rows, probe_features, split_rows

    names = backbone_candidates(config)
    if backbone is not None or world().enabled or config.head != "logistic" or config.C is not None:
        names = names[:1]  # a given network, sharded ranks, or a head without CV: nothing to compare with
    scores: list[_BackboneScore] = []
    rate = None
    for i, name in enumerate(names):
        cfg_b = dataclasses.replace(config, backbone=name, mode="probe")
        if i > 0:
            est = len(data.paths) * RELATIVE_COST.get(name, 2.0) / max(rate or DEFAULT_EXTRACTION_RATE, 1e-3)
            if _all_cached(cfg_b, data, cache):
                est = 0.0
            elapsed = time.perf_counter() - started
            if elapsed + est > budget * BACKBONE_BUDGET_SHARE:
                scores.append(_BackboneScore(name, None, None, None, row=AutoCandidate(
                    f"probe {name}", "backbone", note=f"skipped: its features would take about {est:.0f} s and the budget "
                    f"leaves {max(0.0, budget * BACKBONE_BUDGET_SHARE - elapsed):.0f} s for backbones")))
                continue
        t = time.perf_counter()
        feats, spec, built = probe_features(cfg_b, data, cache, backbone if i == 0 else None, progress, timings)
        score = _BackboneScore(name, feats, spec, built)
        scores.append(score)
        if i == 0:
            rate = (feats.stats.get("images_per_s_computed") if feats is not None else None) or rate
        if len(names) == 1 or feats is None:
            break
        rows = head_rows(split_rows(data, feats.ok))
        head = _probe_cv(cfg_b, feats.X, data.labels, rows)
        score.oof_rows = rows[head.oof_index_]
        y = data.labels[score.oof_rows]
        proba = head.oof_proba_
        score.oof_correct = _correct(proba, np.searchsorted(head.classes_, y))
        score.oof_proba = _full_proba(head, proba, data.num_classes)
        score.row = AutoCandidate(f"probe {name}", "backbone", n=len(y), accuracy=float(score.oof_correct.mean()),
                                  log_loss=head.cv_summary["log_loss"], seconds=round(time.perf_counter() - t, 2))
    scores += _combined_scores(config, data, [s for s in scores if s.oof_correct is not None], budget, started)
    chosen = scores[0]
    if len(scores) > 1 and chosen.oof_correct is not None:
        base = chosen
        correct = {}
        for s in scores[1:]:
            if s.oof_correct is not None:
                _, ia, ib = np.intersect1d(s.oof_rows, base.oof_rows, return_indices=True)
                if len(ia) == len(base.oof_rows):  # the same images (the same readable files)
                    correct[s.row.name] = s.oof_correct[ia][np.argsort(ib)]
        rows, baseline = [s.row for s in scores], base.oof_correct
        averaged = next((s for s in scores if s.combine == "ensemble" and s.row.name in correct), None)
        if config.prefer_combined and averaged is not None:
            rows, baseline = _averaged_as_baseline(rows, averaged.row, baseline, correct)
        winner = decide(rows, baseline, correct)
        chosen = next(s for s in scores if s.row.name == winner)
    return chosen, [s.row for s in scores if s.row is not None]


def _averaged_as_baseline(rows: list[AutoCandidate], averaged: AutoCandidate, base_correct: np.ndarray,
                          correct: dict[str, np.ndarray]) -> tuple[list[AutoCandidate], np.ndarray]:
    """``config.prefer_combined``: the backbones' probes averaged become the baseline the others must clearly beat,
    unless the configured backbone's probe is clearly better than them (then nothing changes)."""
    from transferkit.evaluate.compare import mcnemar

    if mcnemar(base_correct, correct[averaged.name]).clearly_better(AUTO_SWITCH_P):
        return rows, base_correct
    averaged.versus, averaged.comparison = rows[0].name, mcnemar(correct[averaged.name], base_correct).to_dict()
    others = {**correct, rows[0].name: base_correct}
    baseline = others.pop(averaged.name)
    correct.clear()
    correct.update(others)
    return [averaged] + [r for r in rows if r is not averaged], baseline


def _combined_scores(config: TrainConfig, data, scored: list[_BackboneScore], budget: float, started: float) -> list[_BackboneScore]:
    """Stage 1's probes over several backbones together (``config.combine``): concatenated and averaged."""
    from transferkit.pipeline.combined import MemberFeatures, concat_candidate, ensemble_candidate

    if not config.combine or len(scored) < 2:
        return []
    if time.perf_counter() - started > budget * BACKBONE_BUDGET_SHARE:
        words = "features concatenated, probabilities averaged"
        return [_BackboneScore("several backbones", None, None, None, row=AutoCandidate(
            f"probe over several backbones ({words})", "backbone", note="skipped: the time budget's share for backbones is spent"))]
    members = [MemberFeatures(s.name, s.feats, s.spec, s.backbone) for s in scored]
    out = []
    cfg = dataclasses.replace(config, mode="probe")
    for c in (concat_candidate(cfg, data, members, _probe_cv),
              ensemble_candidate(members, [(s.oof_rows, s.oof_proba) for s in scored], data.labels)):
        out.append(_BackboneScore(c.row.name.removeprefix("probe "), None, None, None, oof_rows=c.rows, oof_correct=c.correct, row=c.row, combine=c.combine,
                                  members=members))
    return out


def _all_cached(config: TrainConfig, data, cache) -> bool:
    if cache is None:
        return False
    from transferkit.pipeline.probe import _remembered_features

    try:
        return _remembered_features(config, data.paths, cache) is not None
    except Exception:  # noqa: BLE001 - a cache that cannot answer only costs the estimate
        return False


def _model_candidates(config: TrainConfig, data, chosen: _BackboneScore, tuned: TrainResult) -> tuple[str, list[AutoCandidate], object]:
    """Stage 2 on rank 0: the probe, the fine-tuned network, the two averaged in weight space and the two side by
    side with their probabilities averaged, all on the fine-tune's validation images.

    Returns ``(name of the winner, rows, its network (a ``TrainedMultiModel`` for the probabilities averaged) or None
    for the probe)``.
    """
    import torch

    from transferkit.classifier.bundle import ClassifierModel
    from transferkit.evaluate.tta import predict_proba
    from transferkit.finetune.interpolate import interpolate_weights
    from transferkit.pipeline.probe import build_backbone

    ft = tuned.finetune
    val = ft.val_images
    t = time.perf_counter()
    y_val = np.asarray(val.labels)
    cfg_b = dataclasses.replace(config, backbone=chosen.name, mode="probe")
    head, probe_p, ok = probe_on_validation(cfg_b, data, chosen.feats, ft.train_images, val)
    probe_correct = _correct(probe_p, y_val) & ok
    rows = [AutoCandidate("probe", "model", n=len(y_val), accuracy=float(probe_correct.mean()), log_loss=_log_loss(probe_p[ok], y_val[ok]),
                          seconds=round(time.perf_counter() - t, 2))]
    nets: dict[str, object] = {}
    t = time.perf_counter()
    tuned_net = tuned.model.network()
    p_ft = predict_proba(tuned_net, val)
    rows.append(AutoCandidate("fine-tuned", "model", n=len(y_val), accuracy=float(_correct(p_ft, y_val).mean()),
                              log_loss=_log_loss(p_ft, y_val), seconds=round(tuned.timings.get("finetune", 0.0) + time.perf_counter() - t, 2)))
    nets["fine-tuned"] = tuned_net
    correct = {"fine-tuned": _correct(p_ft, y_val)}
    wise_name = f"probe + fine-tuned (weights averaged, alpha {AUTO_WISE_ALPHA:g})"
    ensemble_name = "probe + fine-tuned (probabilities averaged)"
    if ft.best_epoch == 0:
        rows.append(AutoCandidate(wise_name, "model", note="skipped: the fine-tune kept epoch 0, the probe itself"))
        rows.append(AutoCandidate(ensemble_name, "model", note="skipped: the fine-tune kept epoch 0, the probe itself"))
    else:
        t = time.perf_counter()
        start = ClassifierModel(chosen.backbone if chosen.backbone is not None else build_backbone(cfg_b),
                                head.expand_module(data.num_classes), data.class_names).eval()
        _ensemble_candidate(ensemble_name, config, start, tuned_net, probe_p, p_ft, ok, y_val, rows, correct, nets)
        try:
            with torch.no_grad():
                wise = interpolate_weights(start, tuned_net, AUTO_WISE_ALPHA)
        except ValueError as exc:
            rows.append(AutoCandidate(wise_name, "model", note=f"skipped: {exc}"))
        else:
            p_w = predict_proba(wise, val)
            correct[wise_name] = _correct(p_w, y_val)
            nets[wise_name] = wise
            rows.append(AutoCandidate(wise_name, "model", n=len(y_val), accuracy=float(correct[wise_name].mean()),
                                      log_loss=_log_loss(p_w, y_val), seconds=round(time.perf_counter() - t, 2)))
    winner = decide(rows, probe_correct, correct)
    return winner, rows, nets.get(winner)


def probe_on_validation(config: TrainConfig, data, feats, train, val) -> tuple[object, np.ndarray, np.ndarray]:
    """The probe fitted on a fine-tune's training images (C by cross-validation), scored on its validation images:
    ``(head, probabilities over every class [len(val), K], which validation images it could read)``. An image it
    could not read should count as wrong for it."""
    row_of = {str(p): i for i, p in enumerate(data.paths)}
    tr_rows = np.array([row_of[str(p)] for p in train.paths], dtype=np.int64)
    va_rows = np.array([row_of[str(p)] for p in val.paths], dtype=np.int64)
    head = _probe_cv(config, feats.X, data.labels, tr_rows[feats.ok[tr_rows]])
    return head, _full_proba(head, head.predict_proba(feats.X[va_rows]), data.num_classes), feats.ok[va_rows]


def _ensemble_candidate(name: str, config: TrainConfig, probe_net, tuned_net, probe_p: np.ndarray, p_ft: np.ndarray, ok: np.ndarray,
                        y_val: np.ndarray, rows: list[AutoCandidate], correct: dict, nets: dict) -> None:
    """The probe and the fine-tuned network side by side, their probabilities averaged on the validation images.

    Kept, it is saved as a model of two members (:class:`~transferkit.classifier.multi.TrainedMultiModel`): the
    pretrained backbone with the probe, and the fine-tuned network; prediction runs both.
    """
    if config.tta == "flip-zoom":
        rows.append(AutoCandidate(name, "model", note="skipped: --tta flip-zoom runs one network on zoomed views"))
        return
    from transferkit.classifier.multi import TrainedMultiModel
    from transferkit.classifier.trained import TrainedModel

    t = time.perf_counter()
    p = np.where(ok[:, None], (probe_p + p_ft) / 2.0, p_ft)  # an image the probe could not read: the fine-tune's alone
    correct[name] = _correct(p, y_val)
    nets[name] = TrainedMultiModel([TrainedModel.from_network(probe_net), TrainedModel.from_network(tuned_net, include_backbone=True)],
                                   "ensemble")
    rows.append(AutoCandidate(name, "model", n=len(y_val), accuracy=float(correct[name].mean()), log_loss=_log_loss(p, y_val),
                              seconds=round(time.perf_counter() - t, 2)))


def decide(rows: list[AutoCandidate], baseline_correct: np.ndarray, correct: dict[str, np.ndarray]) -> str:
    """The name of the row kept: ``rows[0]`` (the baseline) unless another is clearly better than it.

    Each other row with an entry in ``correct`` (per-image correctness on the baseline's images) gets
    its paired test against the baseline; among the clearly better ones (:data:`AUTO_SWITCH_P`) the
    highest accuracy wins, then the lower log loss. Marks ``chosen`` on the rows.
    """
    from transferkit.evaluate.compare import mcnemar

    winner, best = rows[0].name, None
    for r in rows[1:]:
        if r.name not in correct:
            continue
        cmp = mcnemar(correct[r.name], baseline_correct)
        r.versus, r.comparison = rows[0].name, cmp.to_dict()
        if cmp.clearly_better(AUTO_SWITCH_P) and (best is None or (r.accuracy, -r.log_loss) > (best.accuracy, -best.log_loss)):
            winner, best = r.name, r
    for r in rows:
        r.chosen = r.name == winner
    return winner


RULE = (f"a candidate replaces the probe (or the configured backbone) only if, on the images both were scored on, it wins more "
        f"images than it loses and McNemar's one-sided exact p < {AUTO_SWITCH_P:g}")
PREFER_COMBINED_RULE = ("with prefer_combined, the backbones' probes averaged are the baseline of the first stage unless the "
                        "configured backbone's probe is clearly better than them; then " + RULE)


def _rule(config: TrainConfig) -> str:
    """The decision rule the run followed, as recorded in its result."""
    return PREFER_COMBINED_RULE if config.prefer_combined else RULE


def _finish_combined(config: TrainConfig, data, chosen: _BackboneScore, rows: list[AutoCandidate], budget: float,
                     started: float, timings: dict[str, float]) -> TrainResult:
    """Stage 1 kept a probe over several backbones: fit it on every training image, evaluate, save.

    Fine-tuning is not tried then: it trains one backbone, and is compared with that backbone's probe.
    """
    from transferkit.pipeline.combined import train_combined

    row = chosen.row
    cmp = row.comparison or {}
    clearly = cmp.get("b", 0) > cmp.get("c", 0) and cmp.get("p_better", 1.0) < AUTO_SWITCH_P
    verb = "beat" if clearly else "was preferred (prefer_combined: not clearly worse) to"
    why = (f"a probe over {chosen.name} {verb} the probe of {config.backbone} on out-of-fold predictions over {row.n} training images "
           f"({row.accuracy:.4f}: {cmp.get('b', 0)} won, {cmp.get('c', 0)} lost, McNemar p = {cmp.get('p_better', float('nan')):.3g}); "
           "fine-tuning, which trains one backbone, was not tried")
    log.info("--mode auto: %s", why)
    choice = AutoChoice("probe", why, candidates=rows, backbone=chosen.name, rule=_rule(config),
                        time_budget=None if budget == float("inf") else budget)
    result = train_combined(dataclasses.replace(config, mode="probe"), data=data, members=chosen.members, combine=chosen.combine,
                            auto=choice)
    result.timings.update({k: round(v, 4) for k, v in timings.items() if k not in result.timings})
    result.timings["auto_total"] = round(time.perf_counter() - started, 2)
    return result


def train_auto(config: TrainConfig, *, imageset=None, backbone=None, progress=None) -> TrainResult | None:
    """``--mode auto``: compare backbones and models as the module says; the probe wins unless a candidate wins clearly.

    Under torchrun every rank shares the extraction and the fine-tune; rank 0 decides, evaluates and
    saves, and the other ranks return ``None``.
    """
    from transferkit.features.cache import usable_cache
    from transferkit.features.distributed import barrier, broadcast_from_main, is_main_process
    from transferkit.pipeline.data import load_config_imageset, load_split
    from transferkit.pipeline.finetune import score_held_out
    from transferkit.pipeline.outputs import write_outputs
    from transferkit.pipeline.probe import _data_name, train_probe

    started = time.perf_counter()
    budget = time_budget(config)
    imageset = load_config_imageset(config, imageset)
    data = load_split(config, imageset)
    cache = usable_cache(config.cache)
    timings: dict[str, float] = {}
    chosen, rows = _compare_backbones(config, data, cache, backbone, progress, timings, budget, started)
    if chosen.combine:
        return _finish_combined(config, data, chosen, rows, budget, started, timings)
    config_b = dataclasses.replace(config, backbone=chosen.name)
    if chosen.name != config.backbone:
        log.info("--mode auto: %s is clearly better than %s on out-of-fold predictions", chosen.name, config.backbone)
    mode, reason = choose_mode(_class_counts_for_choice(config, imageset), device=config.device or "auto")
    n_train = int((np.asarray(data.split) == "train").sum())
    n_val = int((np.asarray(data.split) == "val").sum())
    base = config.finetune or auto_finetune_config(config.device or "auto")
    lrs = config.lr_candidates or auto_lr_candidates(base)
    if mode == "finetune":
        est = estimate_finetune_seconds(n_train, n_val or int(0.15 * n_train), lrs, chosen.name, config.device or "auto")
        left = budget - (time.perf_counter() - started)
        if est > left:
            mode, reason = "probe", f"{reason}, but that should take about {est:.0f} s and the time budget leaves {max(left, 0):.0f} s"
    log.info("--mode auto: %s (%s)", "comparing the probe with fine-tunes" if mode == "finetune" else "the probe", reason)

    def finish_probe(why: str, model_rows: list[AutoCandidate], tried=(), tried_seconds=0.0) -> TrainResult | None:
        choice = AutoChoice("probe", why, tried=list(tried), tried_seconds=tried_seconds, candidates=rows + model_rows,
                            backbone=chosen.name, rule=_rule(config), time_budget=None if budget == float("inf") else budget)
        result = train_probe(dataclasses.replace(config_b, mode="probe"), imageset=imageset,
                             backbone=chosen.backbone if chosen.backbone is not None else backbone, progress=None, auto=choice)
        if result is None:
            return None
        if tried_seconds:
            result.timings["auto_finetune_tried"] = tried_seconds
        result.timings["auto_total"] = round(time.perf_counter() - started, 2)
        return result

    if mode == "probe":
        return finish_probe(reason, [])
    tuned = train_finetune(config_b, imageset=imageset, backbone=chosen.backbone if chosen.backbone is not None else backbone,
                           base=base, lrs=lrs, write=False, evaluate=False, refit_kept_probe=False, small_data_rule=False)
    tried = [dataclasses.replace(c, chosen=False) for c in tuned.finetune.candidates] or [_as_candidate(tuned)]
    winner, model_rows, net = "probe", [], None
    if is_main_process():
        if chosen.feats is None or tuned.finetune.val_images is None or not len(tuned.finetune.val_images):
            model_rows = [AutoCandidate("fine-tuned", "model", note="not compared: no validation images")]
        else:
            winner, model_rows, net = _model_candidates(config, data, chosen, tuned)
    winner = broadcast_from_main(winner)
    if winner == "probe":
        why = (f"{reason}; no fine-tune was clearly better than the probe on the validation images, so the probe was fitted "
               f"on all training images")
        log.info("--mode auto: %s", why)
        return finish_probe(why, model_rows, tried, tuned.timings.get("finetune", 0.0))
    if not is_main_process():
        barrier()
        return None
    from transferkit.classifier.multi import TrainedMultiModel
    from transferkit.classifier.trained import TrainedModel

    best = next(r for r in model_rows if r.chosen)
    cmp = best.comparison
    why = (f"{reason}; {winner} beat the probe on {best.n} validation images ({best.accuracy:.4f} vs "
           f"{model_rows[0].accuracy:.4f}: {cmp['b']} won, {cmp['c']} lost, McNemar p = {cmp['p_better']:.3g})")
    if isinstance(net, TrainedMultiModel):  # the probe and the fine-tuned network, probabilities averaged
        tuned.model = net
        score_held_out(tuned, data, net.network())
    else:
        tuned.model = TrainedModel.from_network(net, include_backbone=True)
        score_held_out(tuned, data, net)
    tuned.auto = AutoChoice("finetune", why, tried=[dataclasses.replace(c, chosen=c.chosen) for c in tuned.finetune.candidates],
                            candidates=rows + model_rows, backbone=chosen.name, rule=_rule(config),
                            time_budget=None if budget == float("inf") else budget)
    tuned.timings["auto_total"] = round(time.perf_counter() - started, 2)
    log.info("--mode auto: %s", why)
    result = write_outputs(tuned, data_name=_data_name(config), kind="fine-tuned")
    barrier()
    return result


__all__ = ["AUTO_BACKBONES", "AUTO_CPU_LRS", "AUTO_MAX_CPU_IMAGES", "AUTO_MIN_PER_CLASS", "AUTO_SWITCH_P", "AUTO_TIME_BUDGET",
           "auto_finetune_config", "auto_lr_candidates", "backbone_candidates", "choose_mode", "decide", "estimate_finetune_seconds", "probe_on_validation",
           "train_auto"]
