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
        kept: images in the set (found, decoded when verified).
        found: candidate files found on disk (kept + rejected).
        listed: entries in the annotations (Oxford, CSV); 0 when the layout has none.
        verified: whether every kept image was decoded by the verify pass.
        cache_hits: verify results reused from the on-disk cache.
        verify_seconds: wall time of the verify pass.
        options: the loader options that shaped this set (for reports and cache keys).
    """

    format: str = ""
    format_reason: str = ""
    rejected: list[Rejected] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    duplicates: list[list[str]] = field(default_factory=list)
    leakage: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    kept: int = 0
    found: int = 0
    listed: int = 0
    verified: bool = False
    cache_hits: int = 0
    verify_seconds: float = 0.0
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        """``kept``, ``rejected``, ``missing``, ``duplicate_groups`` and ``leakage_groups``."""
        return {
            "kept": self.kept,
            "rejected": len(self.rejected),
            "missing": len(self.missing),
            "duplicate_groups": len(self.duplicates),
            "leakage_groups": len(self.leakage),
        }

    def rejected_reasons(self) -> dict[str, int]:
        """How many files were rejected for each kind of reason (text before any '(' or ':')."""
        out: dict[str, int] = {}
        for r in self.rejected:
            kind = r.reason.split("(")[0].split(":")[0].strip()
            out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: (-kv[1], kv[0])))

    def summary(self) -> str:
        """One line: the format and the kept / rejected / missing counts."""
        c = self.counts
        text = f"{self.format or 'unknown'}: kept {c['kept']}, rejected {c['rejected']}, missing {c['missing']}"
        if c["duplicate_groups"]:
            text += f", {c['duplicate_groups']} duplicate groups"
        if c["leakage_groups"]:
            text += f", {c['leakage_groups']} LEAKING across train/test"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "format_reason": self.format_reason,
            "counts": self.counts,
            "found": self.found,
            "listed": self.listed,
            "verified": self.verified,
            "cache_hits": self.cache_hits,
            "verify_seconds": round(self.verify_seconds, 3),
            "options": dict(self.options),
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
        hashes: per-image content hash (blake2b of the file bytes) when verified, else None.
        sizes: per-image (width, height) after EXIF rotation when verified, else None.
    """

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    split: list[str] | None = None
    report: DataReport = field(default_factory=DataReport)
    root: Path | None = None
    hashes: list[str] | None = None
    sizes: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        if self.split is not None and len(self.split) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.split)} split entries")
        for name, values in (("hashes", self.hashes), ("sizes", self.sizes)):
            if values is not None and len(values) != len(self.paths):
                raise ValueError(f"{len(self.paths)} paths but {len(values)} {name}")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: Any) -> ImageSet:
        """A new ImageSet holding the given indices (the report is shared)."""
        idx = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            paths=[self.paths[i] for i in idx],
            labels=self.labels[idx],
            class_names=list(self.class_names),
            split=[self.split[i] for i in idx] if self.split is not None else None,
            report=self.report,
            root=self.root,
            hashes=[self.hashes[i] for i in idx] if self.hashes is not None else None,
            sizes=[self.sizes[i] for i in idx] if self.sizes is not None else None,
        )

    @property
    def decode_options(self) -> dict[str, Any]:
        """The decode options the loader verified these images with (``allow_truncated``, ``max_pixels``).

        Every later stage that decodes the files (feature extraction, fine-tuning, evaluation) passes
        them on, so an image the loader kept is not rejected later for a stricter default.
        """
        from transferkit.data.decode import DEFAULT_MAX_PIXELS

        opts = self.report.options if self.report is not None else {}
        return {"allow_truncated": bool(opts.get("allow_truncated", False)), "max_pixels": opts.get("max_pixels", DEFAULT_MAX_PIXELS)}

    def relative_paths(self) -> list[str]:
        """Paths relative to ``root`` with '/' separators (absolute when outside ``root``)."""
        out = []
        for p in self.paths:
            if self.root is not None:
                try:
                    out.append(p.relative_to(self.root).as_posix())
                    continue
                except ValueError:
                    pass
            out.append(p.as_posix())
        return out

    def split_counts(self) -> dict[str, int]:
        """Images per split ("train", "val", "test"); empty when the set has no split."""
        if self.split is None:
            return {}
        return {name: sum(1 for s in self.split if s == name) for name in SPLITS if name in self.split}

    def where_split(self, name: str) -> ImageSet:
        """The images whose split is ``name``; raises if the set has no split."""
        if self.split is None:
            raise ValueError("this ImageSet has no split; call transferkit.data.split_imageset first")
        return self.subset([i for i, s in enumerate(self.split) if s == name])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts)}
