"""``load_images``: any of the five layouts -> a verified :class:`ImageSet` plus its report."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from transferkit.core.errors import DataError
from transferkit.data.decode import DEFAULT_MAX_PIXELS
from transferkit.data.formats import list_dataset
from transferkit.data.imageset import DataReport, ImageSet, Rejected
from transferkit.data.split import duplicate_groups, leaking_groups
from transferkit.data.verify import VerifyOptions, verify_files

logger = logging.getLogger(__name__)

LABEL_BY = ("breed", "species")


def load_images(
    path: str | Path,
    format: str = "auto",
    *,
    label_by: str = "breed",
    allow_truncated: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    verify: bool = True,
    workers: int | None = None,
    cache: bool = True,
) -> ImageSet:
    """Load a labelled image dataset from any of five layouts, keeping account of every file.

    Layouts (``format``): ``"folder"`` (``root/<class>/**/<image>``, or ``root/<train|val|test>/<class>/...``),
    ``"oxford-pets"`` (``images/`` + ``annotations/list.txt``, ``trainval.txt``, ``test.txt``),
    ``"petimages"`` (Microsoft ``PetImages/Cat``, ``PetImages/Dog``), ``"kaggle"`` (dogs-vs-cats
    ``train/cat.123.jpg``), ``"csv"`` (rows ``path,label[,split]``). ``"auto"`` detects the layout and
    records what it found and why in ``report.format`` / ``report.format_reason``.

    With ``verify`` every file is decoded once (in parallel, cached on disk by path, size, mtime and
    inode plus the options) and any file that does not decode is moved to ``report.rejected`` with
    its reason; the rest still load. Exact duplicates (content hash) go to ``report.duplicates``;
    those spanning an official train/test split go to ``report.leakage``.

    Args:
        path: dataset folder, or a CSV file.
        format: "auto" or one of the layouts above.
        label_by: Oxford-IIIT only: "breed" (37 classes) or "species" ("cat", "dog").
        allow_truncated: keep truncated JPEGs (missing rows filled grey) instead of rejecting them.
        max_pixels: reject images with more pixels (decompression-bomb guard); None disables it.
        verify: decode every file now; without it only names are checked (no hashes, no sizes).
        workers: processes for the verify pass; None = all cores, 1 = inline.
        cache: reuse verify results from ``$TRANSFERKIT_CACHE_DIR`` (default ``~/.cache/transferkit``).

    Returns:
        ImageSet with paths sorted by their path relative to the root, labels, class names, the
        official split when the layout has one (else None), hashes/sizes when verified, and the report.

    Raises:
        DataError: unknown format or label_by, unreadable layout, or no usable image at all.
    """
    if label_by not in LABEL_BY:
        raise DataError(f"label_by={label_by!r} is not one of {', '.join(LABEL_BY)}")
    if max_pixels is not None and max_pixels <= 0:
        raise DataError(f"max_pixels={max_pixels} must be positive (or None to disable the guard)")
    listing = list_dataset(Path(path), format, label_by=label_by)
    root = listing.root.absolute()
    report = DataReport(
        format=listing.format,
        format_reason=listing.reason,
        rejected=list(listing.rejected),
        missing=list(listing.missing),
        notes=list(listing.notes),
        listed=listing.listed,
        options={
            "label_by": label_by if listing.format == "oxford-pets" else None,
            "allow_truncated": allow_truncated,
            "max_pixels": max_pixels,
            "verify": verify,
        },
    )
    logger.info("%s layout: %s", listing.format, listing.reason)

    for e in listing.entries:
        e.path = e.path.absolute()
    entries = sorted(listing.entries, key=lambda e: _relative(e.path, root))
    report.found = len(entries) + len(listing.unlisted) + sum(1 for r in listing.rejected if Path(r.path).exists())
    hashes: list[str] | None = None
    sizes: list[tuple[int, int]] | None = None
    if verify and entries:
        checks, stats = verify_files(
            [e.path for e in entries],
            root=root,
            options=VerifyOptions(allow_truncated=allow_truncated, max_pixels=max_pixels),
            workers=workers,
            cache=cache,
        )
        report.cache_hits = int(stats["cache_hits"])
        report.verify_seconds = float(stats["seconds"])
        kept_entries, hashes, sizes = [], [], []
        for entry, check in zip(entries, checks):
            if check.ok:
                kept_entries.append(entry)
                hashes.append(check.sha)
                sizes.append((check.width, check.height))
            else:
                report.rejected.append(Rejected(str(entry.path), check.reason))
        entries = kept_entries
        report.verified = True
    _report_unlisted(listing.unlisted, report, verify=verify, root=root, allow_truncated=allow_truncated,
                     max_pixels=max_pixels, workers=workers, cache=cache)
    report.rejected.sort(key=lambda r: r.path)

    present = sorted({e.label for e in entries})
    if listing.class_order is not None:
        order = [c for c in listing.class_order if c in set(present)]
        order += [c for c in present if c not in set(order)]
    else:
        order = present
    index = {c: i for i, c in enumerate(order)}
    splits = [e.split for e in entries]
    has_split = any(s is not None for s in splits)
    imageset = ImageSet(
        paths=[e.path for e in entries],
        labels=np.asarray([index[e.label] for e in entries], dtype=np.int64),
        class_names=order,
        split=[s or "train" for s in splits] if has_split else None,
        report=report,
        root=root,
        hashes=hashes,
        sizes=sizes,
    )
    report.kept = len(imageset)
    if not len(imageset):
        first = f"; first: {report.rejected[0].path}: {report.rejected[0].reason}" if report.rejected else ""
        raise DataError(
            f"no usable images in {path} ({listing.format} layout): {len(report.rejected)} rejected, "
            f"{len(report.missing)} missing{first}"
        )
    if listing.class_order is not None and len(order) < len(listing.class_order):
        absent = [c for c in listing.class_order if c not in index]
        report.notes.append(
            f"{len(absent)} of {len(listing.class_order)} annotated classes have no image here: {', '.join(absent[:8])}"
            + (" ..." if len(absent) > 8 else "")
        )
    _record_duplicates(imageset)
    logger.info("%s", report.summary())
    return imageset


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _record_duplicates(imageset: ImageSet) -> None:
    report = imageset.report
    groups = duplicate_groups(imageset)
    report.duplicates = [[str(imageset.paths[i]) for i in g] for g in groups]
    conflicting = [g for g in groups if len({int(imageset.labels[i]) for i in g}) > 1]
    if conflicting:
        report.notes.append(
            f"{len(conflicting)} duplicate groups carry different labels, e.g. "
            + ", ".join(str(imageset.paths[i]) for i in conflicting[0])
        )
    report.leakage = [[str(imageset.paths[i]) for i in g] for g in leaking_groups(imageset, groups)]
    if report.leakage:
        logger.warning("%d exact duplicates span the official train and test splits (leakage)", len(report.leakage))


def _report_unlisted(unlisted, report: DataReport, *, verify: bool, root: Path, **options) -> None:
    """Unlisted files are not used (no official label or split) but the reason says if they decode."""
    base = "not listed in annotations/list.txt, so it has no official label or split"
    if not unlisted:
        return
    if not verify:
        report.rejected.extend(Rejected(str(p), base) for p in unlisted)
        return
    checks, _ = verify_files(
        unlisted,
        root=root,
        options=VerifyOptions(allow_truncated=options["allow_truncated"], max_pixels=options["max_pixels"]),
        workers=options["workers"],
        cache=options["cache"],
    )
    for p, check in zip(unlisted, checks):
        detail = (f"decodes fine: {check.format} {check.width}x{check.height} {check.mode}"
                  if check.ok else f"and it does not decode: {check.reason}")
        report.rejected.append(Rejected(str(p.absolute()), f"{base} ({detail})"))
