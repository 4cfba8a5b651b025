"""What a training run returns: :class:`TrainResult` and the typed pieces it is made of."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.classifier.multi import TrainedMultiModel
from transferkit.classifier.trained import TrainedModel
from transferkit.data.unused import UnusedFiles
from transferkit.finetune.config import FinetuneConfig
from transferkit.pipeline.config import TrainConfig


@dataclass
class HeadSummary:
    """The probe's head: its kind and, for the logistic head, the L2 strength it used (one per backbone
    when a probe per backbone is averaged)."""

    kind: str
    C: float | None = None
    C_per_backbone: tuple[float | None, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = {"type": self.kind, **({"C": self.C} if self.C is not None else {})}
        if self.C_per_backbone:
            d["C_per_backbone"] = list(self.C_per_backbone)
        return d


@dataclass
class Candidate:
    """One fine-tuning setting compared on validation data."""

    lr: float
    best_epoch: int | None
    val_acc: float
    val_loss: float
    seconds: float
    chosen: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.chosen:
            d.pop("chosen")
        return d


@dataclass
class FinetuneSummary:
    """How a fine-tuned model was trained.

    Attributes:
        config: the settings of the run that was kept.
        history: one row per epoch (epoch 0: the probe LP-FT starts from, when there is validation data).
        best_epoch: the epoch whose weights were kept (0: the probe itself).
        candidates: the settings compared on validation data (empty when there was one).
        chosen_on: which images chose between them.
        train_images, val_images: the ImageSets it trained on and chose the epoch (and setting) with
            (not saved; ``mode="auto"`` compares its candidates on the same validation images).
        note: what happened after the fine-tune (the kept probe refitted on every training image).
    """

    config: FinetuneConfig
    history: list[dict[str, Any]]
    best_epoch: int | None
    strategy: str
    device: str
    world_size: int = 1
    timings: dict[str, float] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    chosen_on: str = ""
    train_images: Any = field(default=None, repr=False)
    val_images: Any = field(default=None, repr=False)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = {"best_epoch": self.best_epoch, "timings": self.timings, "strategy": self.strategy, "device": self.device,
             "world_size": self.world_size, "config": self.config.to_dict()}
        if self.note:
            d["note"] = self.note
        if self.candidates:
            d["candidates"] = [c.to_dict() for c in self.candidates]
            d["chosen_on"] = self.chosen_on
        return d


@dataclass
class AutoCandidate:
    """One model ``mode="auto"`` compared, scored on the same images as the baseline it must beat.

    Attributes:
        name: ``"probe"``, ``"probe <backbone>"``, ``"probe <a> + <b> (features concatenated)"``, ``"probe <a> + <b>
            (probabilities averaged)"``, ``"fine-tuned"``, ``"probe + fine-tuned (weights averaged)"``.
        stage: ``"backbone"`` (probes of several backbones, out-of-fold predictions over the training
            images) or ``"model"`` (probe vs fine-tunes, on the validation images).
        accuracy, log_loss: on the images compared (``n`` of them).
        versus: the baseline's name; ``comparison``: the paired test against it (``None`` for the baseline).
        seconds: what the candidate cost to train and score.
        chosen: the one kept. ``note``: why it was skipped, when it was.
    """

    name: str
    stage: str
    n: int = 0
    accuracy: float = float("nan")
    log_loss: float = float("nan")
    seconds: float = 0.0
    versus: str = ""
    comparison: dict[str, Any] | None = None
    chosen: bool = False
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", None)}


@dataclass
class AutoChoice:
    """What ``mode="auto"`` chose and why.

    Attributes:
        mode: ``"probe"`` or ``"finetune"`` (the kind of bundle written).
        reason: one sentence: what won and by how much, or why the probe was kept.
        tried: the fine-tuning settings (learning rates) it ran.
        tried_seconds: seconds spent on fine-tunes that were then set aside.
        candidates: every model it compared, with scores, costs and the paired tests.
        backbone: the backbone of the model kept (several, described, for a combined probe).
        rule: the decision rule, stated.
        time_budget: seconds it was allowed (``None``: no limit).
    """

    mode: str
    reason: str
    tried: list[Candidate] = field(default_factory=list)
    tried_seconds: float = 0.0
    candidates: list[AutoCandidate] = field(default_factory=list)
    backbone: str = ""
    rule: str = ""
    time_budget: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mode": self.mode, "reason": self.reason}
        if self.backbone:
            d["backbone"] = self.backbone
        if self.rule:
            d["rule"] = self.rule
        if self.time_budget is not None:
            d["time_budget_s"] = self.time_budget
        if self.candidates:
            d["candidates"] = [c.to_dict() for c in self.candidates]
        if self.tried:
            d["tried"] = [c.to_dict() for c in self.tried]
        return d


@dataclass
class TrainResult:
    """A training run's outcome.

    Attributes:
        model: the trained classifier (:meth:`TrainedModel.network` gives the ``nn.Module``).
        config: the settings it ran with.
        evaluation: metrics on the held-out split (``None`` when there was none).
        split: which split ``evaluation`` is on: ``"test"``, ``"val"`` or ``""``.
        images: images per split that were used.
        unused: files found but not used, with reasons.
        head: the probe's head (``None`` for a fine-tuned model).
        finetune: how the network was fine-tuned (``None`` for a probe).
        auto: what ``mode="auto"`` chose and why (``None`` in the other modes).
        features: feature-extraction counts (computed, cached, failed, engine, speed).
        from_cache: what a warm rerun took from the caches (``"features"``, ``"head"``, ``"probabilities"``).
        timings: seconds per stage.
        bundle_path, report_path: what was written (``None`` when not).
        report_error: why the report could not be written (the bundle was kept).
        split_note: a caveat about the held-out number.
    """

    model: TrainedModel | TrainedMultiModel
    config: TrainConfig
    evaluation: Any = None
    split: str = ""
    images: dict[str, int] = field(default_factory=dict)
    unused: UnusedFiles = field(default_factory=UnusedFiles)
    head: HeadSummary | None = None
    finetune: FinetuneSummary | None = None
    auto: AutoChoice | None = None
    features: dict[str, Any] = field(default_factory=dict)
    from_cache: tuple[str, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    bundle_path: Path | None = None
    report_path: Path | None = None
    report_error: str = ""
    split_note: str = ""

    @property
    def accuracy(self) -> float | None:
        return None if self.evaluation is None else float(self.evaluation.metrics["accuracy"])

    @property
    def metrics(self) -> dict[str, Any]:
        """The JSON record of the run (stored in bundle.json, printed by ``--format json``)."""
        m: dict[str, Any] = dict(self.evaluation.metrics) if self.evaluation is not None else {}
        if self.split:
            m["split"] = self.split
        if self.split_note:
            m["split_note"] = self.split_note
        m["images"] = dict(self.images)
        m["unused_files"] = self.unused.to_dict()
        if self.finetune is not None:
            m.update(mode="finetune", tta=self.config.tta, history=self.finetune.history, finetune=self.finetune.to_dict())
        else:
            m["failed_images"] = int(self.features.get("failed", 0))
            m["head"] = self.head.to_dict() if self.head else {}
            m["features"] = self.features
        if self.auto is not None:
            m["auto"] = self.auto.to_dict()
            if self.auto.tried:
                m["auto_finetune_candidates"] = [c.to_dict() for c in self.auto.tried]
        m["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        return m

    def __repr__(self) -> str:
        acc = f", {self.split} accuracy {self.accuracy:.4f}" if self.accuracy is not None else ""
        return f"TrainResult({self.model!r}{acc}, {len(self.unused)} unused files)"


__all__ = ["AutoCandidate", "AutoChoice", "Candidate", "FinetuneSummary", "HeadSummary", "TrainResult"]
