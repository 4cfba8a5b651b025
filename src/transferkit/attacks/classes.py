"""The classes an attacked model's logits stand for: naming them and finding one by name.

A model is either a classifier bundle (:class:`~transferkit.classifier.bundle.ClassifierModel`,
which carries its ``class_names``) or a plain ImageNet backbone
(:class:`~transferkit.backbones.model.PixelModel` with its 1000-class head), whose classes are
named through the forgiving ImageNet resolver ("tabby cat", "281").
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from transferkit.core.errors import TransferkitError

IMAGENET_CLASSES = 1000


class AttackInputError(TransferkitError):
    """A bad input to an attack: a class the model does not have, a model without usable classes,
    an output path that would undo the attack, or data that does not fit the model."""


@dataclass(frozen=True)
class ClassSpace:
    """The names of a model's output classes.

    Attributes:
        names: one name per logit, in logit order.
        imagenet: True for a backbone's own ImageNet head (names are ImageNet descriptions).
    """

    names: tuple[str, ...]
    imagenet: bool

    @classmethod
    def of(cls, model: nn.Module) -> ClassSpace:
        """The classes of a classifier bundle or of an ImageNet backbone.

        Raises:
            AttackInputError: the model is a backbone without a 1000-class ImageNet head.
        """
        names = getattr(model, "class_names", None)
        if names is not None:
            return cls(tuple(str(n) for n in names), imagenet=False)
        if getattr(model, "num_classes", 0) == IMAGENET_CLASSES:
            from transferkit.backbones.imagenet import imagenet_class_names

            return cls(imagenet_class_names(), imagenet=True)
        spec = getattr(model, "spec", None)
        name = spec.name if spec is not None else type(model).__name__
        raise AttackInputError(f"backbone {name} has no 1000-class ImageNet head; attack a classifier bundle instead")

    def label(self, index: int) -> str:
        """A short readable name: "tabby (281)" for ImageNet, the class name for a bundle."""
        name = self.names[index]
        if self.imagenet:
            from transferkit.backbones.imagenet import short_name

            return f"{short_name(name)} ({index})"
        return name

    def resolve(self, query: str | int) -> int:
        """The index of exactly one class named by ``query`` (a name, a name's start, or an index).

        Raises:
            AttackInputError / UnknownNameError: no class, or several, match; the message lists them.
        """
        if self.imagenet:
            from transferkit.backbones.imagenet import resolve_imagenet_class

            return resolve_imagenet_class(query)
        q = str(query).strip().lower()
        if q.isdigit() and int(q) < len(self.names):
            return int(q)
        found = [i for i, c in enumerate(self.names) if c.lower() == q]
        if not found:
            found = [i for i, c in enumerate(self.names) if c.lower().startswith(q)]
        if len(found) == 1:
            return found[0]
        listed = ", ".join(self.names[:20]) + (" ..." if len(self.names) > 20 else "")
        what = "matches several" if found else "is not one"
        raise AttackInputError(f"class {query!r} {what} of the model's classes: {listed}")

    def top(self, probs, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes of a probability vector [K], as (label, probability)."""
        values, indices = probs.topk(min(k, probs.numel()))
        return [(self.label(int(i)), float(v)) for v, i in zip(values.tolist(), indices.tolist())]


def describe_model(model: nn.Module) -> str:
    """One line naming the model: "bundle (tiny, 3 classes)" or "ImageNet backbone X (weights: package)"."""
    spec = model.spec
    names = getattr(model, "class_names", None)
    if names is not None:
        return f"bundle ({spec.name}, {len(names)} classes)"
    return f"ImageNet backbone {spec.name} (weights: {spec.weights_source})"
