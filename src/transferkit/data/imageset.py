"""ImageSet: a labelled list of image files, plus the report of everything not used."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")


@dataclass
class Rejected:
    """A file that is not used, and why."""

    path: str
    reason: str


@dataclass
class DataReport:
    """Everything a loader noticed: what it detected and why, and each file it did not use.

    Attributes:
        format: the detected layout ("folder", "oxford-pets", "petimages", "kaggle", "csv").
        format_reason: why that layout was chosen.
        rejected: files found but not used (broken, truncated, not an image, ...), with reasons.
        missing: files listed in annotations but absent on disk.
        duplicates: groups of paths with identical content.
        leakage: duplicate groups that span train and test.
        notes: other things worth telling the user.
    """

    format: str = ""
    format_reason: str = ""
    rejected: list[Rejected] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    leakage: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_reason": self.format_reason,
            "rejected": [{"path": r.path, "reason": r.reason} for r in self.rejected],
            "missing": list(self.missing),
            "duplicates": [list(g) for g in self.duplicates],
            "leakage": [list(g) for g in self.leakage],
            "notes": list(self.notes),
        }


@dataclass
class ImageSet:
    """Labelled images: ``paths[i]`` has label ``labels[i]`` (an index into ``class_names``).

    Attributes:
        paths: image files, in a deterministic order.
        labels: int64 array, one label per path.
        class_names: the label names; ``class_names[labels[i]]`` names image i's class.
        split: per-image "train" / "val" / "test" when the dataset or a split function set it.
        report: what the loader detected and everything it did not use.
        root: the folder the set was loaded from.
    """

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    split: list[str] | None = None
    report: DataReport = field(default_factory=DataReport)
    root: Path | None = None

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        if self.split is not None and len(self.split) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.split)} split entries")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Any) -> "ImageSet":
        """A new ImageSet holding the given indices (the report is shared)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            split=[self.split[i] for i in idx] if self.split is not None else None,
            report=self.report,
            root=self.root,
        )

    def where_split(self, name: str) -> "ImageSet":
        """The images whose split is ``name``; raises if the set has no split."""
        if self.split is None:
            raise ValueError("this ImageSet has no split; call transferkit.data.split_imageset first")
        return self.subset([i for i, s in enumerate(self.split) if s == name])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts)}
