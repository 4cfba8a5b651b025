"""The five dataset layouts: detecting which one a path holds, and listing its labelled files.

Listing only looks at names and annotation files; decoding is the verify pass's job. A
:class:`Listing` keeps everything found that cannot be used (wrong suffix, outside a class folder,
not in the annotations) with a reason, and everything listed but absent.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from transferkit.core.errors import DataError
from transferkit.core.paths import describe_os_error
from transferkit.data.imageset import Rejected

logger = logging.getLogger(__name__)

FORMATS = ("folder", "oxford-pets", "petimages", "kaggle", "csv")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
)
SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini", ".ds_store"})
SPLIT_ALIASES = {
    "train": "train", "training": "train", "trainval": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}
_KAGGLE_NAME = re.compile(r"^([A-Za-z][A-Za-z_-]*)\.(\d+)\.[A-Za-z0-9]+$")


@dataclass
class Entry:
    path: Path
    label: str
    split: str | None = None


@dataclass
class Listing:
    """What a layout holds before decoding."""

    format: str
    reason: str
    root: Path
    entries: list[Entry] = field(default_factory=list)
    class_order: list[str] | None = None  # preferred order of class names; None = sorted
    rejected: list[Rejected] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    listed: int = 0
    notes: list[str] = field(default_factory=list)
    # Image files present but absent from the annotations (Oxford): not used, but still decoded by
    # the verify pass so the report can say whether they are healthy.
    unlisted: list[Path] = field(default_factory=list)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _unreadable_folder(folder, exc: OSError) -> Rejected:
    return Rejected(str(folder), f"cannot read folder ({describe_os_error(exc)}); fix its permissions or move it out of the dataset")


def _entries(folder: Path) -> list[Path]:
    """The entries of a dataset's own folder, sorted; a folder that cannot be read is a DataError."""
    try:
        return sorted(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot read the folder {folder} ({describe_os_error(exc)}); fix its permissions") from None


def _walk_files(folder: Path, notes: list[str], rejected: list[Rejected] | None = None) -> list[Path]:
    """Every non-hidden file under ``folder`` (following no symlinked dirs), sorted.

    Folders that cannot be read (permissions) go to ``rejected`` with the reason, when given.
    """
    files: list[Path] = []
    hidden = 0

    def unreadable(exc: OSError) -> None:
        if rejected is not None:
            rejected.append(_unreadable_folder(exc.filename or folder, exc))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unreadable):
        kept_dirs = [d for d in dirnames if not d.startswith(".")]
        hidden += len(dirnames) - len(kept_dirs)
        dirnames[:] = sorted(kept_dirs)
        for name in filenames:
            if name.startswith(".") and name.lower() not in SYSTEM_FILES:
                hidden += 1
                continue
            files.append(Path(dirpath) / name)
    if hidden:
        notes.append(f"{hidden} hidden files/folders (names starting with '.') under {folder} not looked at")
    return sorted(files)


def _unusable_reason(path: Path) -> str | None:
    if path.name.lower() in SYSTEM_FILES:
        return "system file, not an image"
    if not is_image_name(path):
        return f"not an image file name (suffix {path.suffix or 'none'!r}); rename it if it is an image"
    return None


# --------------------------------------------------------------------------------------- detection


def _flat_kaggle_dir(folder: Path) -> bool:
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith(".")]
        has_dirs = any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(folder))
    except OSError:
        return False
    if has_dirs or not names:
        return False
    matching = sum(1 for n in names if _KAGGLE_NAME.match(n))
    return matching >= 0.8 * len(names)


def detect_format(path: Path) -> tuple[str, str]:
    """Which layout ``path`` holds and why; raises DataError when none fits."""
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a dataset folder or a CSV file")
    if path.is_file():
        if path.suffix.lower() in (".csv", ".tsv"):
            return "csv", f"{path.name} is a {path.suffix.lower()[1:].upper()} file (path,label[,split] rows)"
        raise DataError(f"{path} is a file but not a .csv; pass a dataset folder or a path,label CSV")
    if (path / "annotations").is_dir() and (path / "images").is_dir():
        lists = [n for n in ("list.txt", "trainval.txt", "test.txt") if (path / "annotations" / n).is_file()]
        if lists:
            return "oxford-pets", f"found images/ and annotations/{', annotations/'.join(lists)} (Oxford-IIIT Pet layout)"
    if path.name == "images" and (path.parent / "annotations" / "list.txt").is_file():
        return "oxford-pets", f"{path} is the images/ folder of an Oxford-IIIT Pet layout (../annotations/list.txt)"
    pet_root = path if path.name == "PetImages" else path / "PetImages"
    if pet_root.is_dir() and (pet_root / "Cat").is_dir() and (pet_root / "Dog").is_dir():
        return "petimages", f"found {pet_root.relative_to(path.parent).as_posix()}/Cat and /Dog (Microsoft PetImages layout)"
    if (path / "train").is_dir() and _flat_kaggle_dir(path / "train"):
        return "kaggle", "train/ holds flat files named <label>.<n>.<ext> (Kaggle dogs-vs-cats layout)"
    if _flat_kaggle_dir(path):
        return "kaggle", f"{path.name}/ holds flat files named <label>.<n>.<ext> (Kaggle dogs-vs-cats layout)"
    subdirs = [d for d in _entries(path) if d.is_dir() and not d.name.startswith(".")]
    if subdirs:
        splits = [d.name for d in subdirs if d.name.lower() in SPLIT_ALIASES]
        if splits and len(splits) == len(subdirs):
            return "folder", f"subfolders {', '.join(splits)} look like split folders holding class folders"
        return "folder", f"{len(subdirs)} subfolders taken as class folders ({', '.join(d.name for d in subdirs[:5])}{', ...' if len(subdirs) > 5 else ''})"
    raise DataError(
        f"cannot tell the layout of {path}: no class subfolders, no images/+annotations/, no PetImages/, "
        "no <label>.<n>.jpg files; pass --format or a path,label CSV"
    )


# ----------------------------------------------------------------------------------------- listing


def list_folder(root: Path, *, lowercase_classes: bool = False) -> Listing:
    """Class folders (``root/<class>/**/<image>``) or split folders (``root/<split>/<class>/...``)."""
    listing = Listing("folder", "", root)
    subdirs = [d for d in _entries(root) if d.is_dir() and not d.name.startswith(".")]
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
    if split_dirs and len(split_dirs) == len(subdirs):
        groups = [(d, SPLIT_ALIASES[d.name.lower()]) for d in split_dirs]
    else:
        groups = [(root, None)]
    for base, split in groups:
        try:
            inside = sorted(base.iterdir())
        except OSError as exc:  # an unreadable split folder: say so, use the others
            listing.rejected.append(_unreadable_folder(base, exc))
            continue
        for f in (p for p in inside if p.is_file() and not p.name.startswith(".")):
            listing.rejected.append(Rejected(str(f), "not inside a class folder (no label)"))
        for class_dir in (d for d in inside if d.is_dir() and not d.name.startswith(".")):
            label = class_dir.name.lower() if lowercase_classes else class_dir.name
            n_before = len(listing.entries)
            n_rejected = len(listing.rejected)
            for f in _walk_files(class_dir, listing.notes, listing.rejected):
                reason = _unusable_reason(f)
                if reason:
                    listing.rejected.append(Rejected(str(f), reason))
                else:
                    listing.entries.append(Entry(f, label, split))
            if len(listing.entries) == n_before and len(listing.rejected) == n_rejected:
                listing.notes.append(f"class folder {class_dir} holds no image files")
    return listing


def list_oxford(root: Path, *, label_by: str = "breed") -> Listing:
    """Oxford-IIIT Pet: images/<Breed>_<n>.jpg + annotations/list.txt, trainval.txt, test.txt."""
    if root.name == "images" and not (root / "images").is_dir():
        root = root.parent
    listing = Listing("oxford-pets", "", root)
    ann = root / "annotations"
    rows: dict[str, tuple[int, int]] = {}  # name -> (class id, species id)
    official: dict[str, str] = {}
    for fname, split in (("list.txt", None), ("trainval.txt", "train"), ("test.txt", "test")):
        f = ann / fname
        if not f.is_file():
            continue
        for lineno, line in enumerate(f.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            parts = line.split()
            if not parts or parts[0].startswith("#"):
                continue
            name = parts[0]
            try:
                class_id, species_id = int(parts[1]), int(parts[2])
            except (IndexError, ValueError):
                listing.notes.append(f"annotations/{fname} line {lineno} is malformed: {line.strip()!r}")
                continue
            rows.setdefault(name, (class_id, species_id))
            if split is not None:
                if name in official and official[name] != split:
                    listing.notes.append(f"{name} is in both trainval.txt and test.txt; kept in test")
                    official[name] = "test"
                else:
                    official[name] = split
    listing.listed = len(rows)
    breed_ids: dict[str, int] = {}
    for name, (class_id, _species) in rows.items():
        breed_ids.setdefault(name.rsplit("_", 1)[0], class_id)
    if label_by == "species":
        listing.class_order = ["cat", "dog"]
    else:
        listing.class_order = sorted(breed_ids, key=lambda b: (breed_ids[b], b))
    images = root / "images"
    on_disk = {p.stem: p for p in _walk_files(images, listing.notes) if is_image_name(p)}
    no_split = 0
    for name in sorted(rows):
        path = on_disk.get(name)
        if path is None:
            listing.missing.append(str(images / f"{name}.jpg"))
            continue
        class_id, species_id = rows[name]
        if label_by == "species":
            label = {1: "cat", 2: "dog"}.get(species_id) or ("cat" if name[:1].isupper() else "dog")
        else:
            label = name.rsplit("_", 1)[0]
        split = official.get(name)
        if official and split is None:
            no_split += 1
            split = "train"
        listing.entries.append(Entry(path, label, split))
    if no_split:
        listing.notes.append(f"{no_split} images are in list.txt but in neither trainval.txt nor test.txt; put in train")
    for f in _walk_files(images, [], listing.rejected):  # notes were taken on the first walk
        reason = _unusable_reason(f)
        if reason:
            listing.rejected.append(Rejected(str(f), reason))
        elif f.stem not in rows:
            listing.unlisted.append(f)
    if official:
        listing.notes.append("official split: trainval.txt -> train, test.txt -> test")
    return listing


def list_petimages(root: Path) -> Listing:
    """Microsoft PetImages: PetImages/Cat/*.jpg and PetImages/Dog/*.jpg (labels cat, dog)."""
    pet_root = root if root.name == "PetImages" else root / "PetImages"
    listing = list_folder(pet_root, lowercase_classes=True)
    listing.format = "petimages"
    return listing


def list_kaggle(root: Path) -> Listing:
    """Kaggle dogs-vs-cats: train/cat.123.jpg, train/dog.45.jpg (test1/ is unlabelled)."""
    train = root / "train" if (root / "train").is_dir() else root
    listing = Listing("kaggle", "", root)
    for f in _walk_files(train, listing.notes, listing.rejected):
        reason = _unusable_reason(f)
        match = _KAGGLE_NAME.match(f.name)
        if reason:
            listing.rejected.append(Rejected(str(f), reason))
        elif f.parent != train:
            listing.rejected.append(Rejected(str(f), "in a subfolder of train/; Kaggle layout files are flat"))
        elif not match:
            listing.rejected.append(Rejected(str(f), "name is not <label>.<n>.<ext> (no label)"))
        else:
            listing.entries.append(Entry(f, match.group(1).lower(), None))
    for other in ("test1", "test"):
        if train != root and (root / other).is_dir():
            n = sum(1 for p in (root / other).iterdir() if p.is_file())
            listing.notes.append(f"{other}/ holds {n} unlabelled files (Kaggle's test set), not used")
    return listing


def list_csv(csv_path: Path) -> Listing:
    """CSV rows ``path,label[,split]`` (header optional; relative paths from the CSV's folder)."""
    root = csv_path.parent
    listing = Listing("csv", "", root)
    delimiter = "\t" if csv_path.suffix.lower() == ".tsv" else ","
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {csv_path}: {exc}; save it as UTF-8 text") from None
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    cols = {"path": 0, "label": 1, "split": 2}
    start = 0
    if rows and rows[0] and rows[0][0].strip().lower() in ("path", "file", "filename", "filepath", "image", "image_path"):
        header = [h.strip().lower() for h in rows[0]]
        start = 1
        aliases = {
            "path": ("path", "file", "filename", "filepath", "image", "image_path"),
            "label": ("label", "class", "category", "target"),
            "split": ("split", "subset", "fold"),
        }
        cols = {}
        for key, names in aliases.items():
            for i, h in enumerate(header):
                if h in names:
                    cols[key] = i
                    break
        if "label" not in cols:
            raise DataError(f"{csv_path}: header {rows[0]} has no label column; name it 'label'")
    seen: set[Path] = set()
    splits_given = 0
    for lineno, row in enumerate(rows[start:], start + 1):
        if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
            continue
        listing.listed += 1
        try:
            rel = row[cols["path"]].strip()
            label = row[cols["label"]].strip()
        except IndexError:
            listing.rejected.append(Rejected(f"{csv_path}:{lineno}", f"CSV row has too few columns: {row}"))
            continue
        if not rel or not label:
            listing.rejected.append(Rejected(f"{csv_path}:{lineno}", "CSV row has an empty path or label"))
            continue
        split = None
        if "split" in cols and cols["split"] < len(row) and row[cols["split"]].strip():
            raw = row[cols["split"]].strip().lower()
            split = SPLIT_ALIASES.get(raw)
            if split is None:  # a typo must not silently drop (or re-split) the row
                others = ", ".join(a for a in SPLIT_ALIASES if a not in ("train", "val", "test"))
                raise DataError(f"{csv_path} line {lineno}: unknown split {row[cols['split']].strip()!r}; "
                                f"use train, val, test (or {others}), or leave it empty")
            splits_given += 1
        path = Path(rel).expanduser()
        path = path if path.is_absolute() else root / path
        if path in seen:
            listing.rejected.append(Rejected(str(path), f"listed again on CSV line {lineno}; first row kept"))
            continue
        seen.add(path)
        if not path.exists():
            listing.missing.append(str(path))
            continue
        listing.entries.append(Entry(path, label, split))
    if splits_given and splits_given < len(listing.entries) + len(listing.missing):
        n = sum(1 for e in listing.entries if e.split is None)
        for e in listing.entries:
            if e.split is None:
                e.split = "train"
        listing.notes.append(f"{n} CSV rows without a split put in train")
    return listing


def list_dataset(path: Path, fmt: str = "auto", *, label_by: str = "breed") -> Listing:
    """Detect (when ``fmt`` is "auto") and list the dataset at ``path``."""
    path = Path(path).expanduser()
    if fmt == "auto":
        fmt, reason = detect_format(path)
        logger.info("detected %s layout at %s: %s", fmt, path, reason)
    else:
        if fmt not in FORMATS:
            raise DataError(f"unknown format {fmt!r}; use auto or one of {', '.join(FORMATS)}")
        if not path.exists():
            raise DataError(f"{path} does not exist; pass a dataset folder or a CSV file")
        reason = "format given explicitly"
    if fmt == "csv":
        if not path.is_file():
            raise DataError(f"format csv needs a .csv file, but {path} is a folder")
        listing = list_csv(path)
    else:
        if not path.is_dir():
            raise DataError(f"format {fmt} needs a folder, but {path} is a file")
        if fmt == "oxford-pets":
            listing = list_oxford(path, label_by=label_by)
        elif fmt == "petimages":
            listing = list_petimages(path)
        elif fmt == "kaggle":
            listing = list_kaggle(path)
        else:
            listing = list_folder(path)
    listing.format, listing.reason = fmt, reason
    return listing
