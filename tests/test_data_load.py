"""load_images on generated datasets in all five layouts: exact counts, nothing lost silently."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.core.errors import DataError
from transferkit.data import load_images
from transferkit.data.messy import BAD_KINDS, GOOD_KINDS, write_bad_files, write_good_images


def _jpeg(path: Path, colour=(200, 30, 30), size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=90)
    return path


@pytest.fixture
def messy_folder(tmp_path) -> Path:
    """Class folders: a/ holds one image of every good kind, b/ every bad kind + 2 copies of a/rgb.jpg."""
    root = tmp_path / "messy"
    write_good_images(root / "a")
    write_bad_files(root / "b")
    shutil.copy(root / "a" / "rgb.jpg", root / "b" / "copy1.jpg")
    (root / "b" / "nested").mkdir()
    shutil.copy(root / "a" / "rgb.jpg", root / "b" / "nested" / "copy2.jpg")
    return root


def test_messy_folder_counts_are_exact(messy_folder):
    s = load_images(messy_folder)
    r = s.report
    assert r.format == "folder" and "class folders" in r.format_reason
    assert r.counts == {"kept": len(GOOD_KINDS) + 2, "rejected": len(BAD_KINDS), "missing": 0,
                        "duplicate_groups": 1, "leakage_groups": 0}
    assert len(s) == 18 and r.found == 24
    assert s.class_names == ["a", "b"]
    assert s.class_counts() == {"a": 16, "b": 2}
    reasons = {Path(x.path).name: x.reason for x in r.rejected}
    assert set(reasons) == set(BAD_KINDS)
    assert "truncated" in reasons["truncated.jpg"] and "empty" in reasons["empty.jpg"]
    assert "too many pixels" in reasons["bomb.png"] and "not an image file name" in reasons["notes.txt"]
    assert "cannot read" in reasons["unreadable.jpg"]
    assert [Path(p).name for p in r.duplicates[0]] == ["rgb.jpg", "copy1.jpg", "copy2.jpg"]
    assert any("different labels" in n for n in r.notes)
    assert r.verified and s.hashes is not None and s.sizes is not None
    assert all(p.is_absolute() for p in s.paths)
    json.dumps(r.to_dict())  # the report is plain data


def test_allow_truncated_keeps_the_truncated_jpeg(messy_folder):
    r = load_images(messy_folder, allow_truncated=True).report
    assert (r.kept, len(r.rejected)) == (19, 5)
    assert not any(Path(x.path).name == "truncated.jpg" for x in r.rejected)


def test_max_pixels_guard_with_no_image_left_raises_one_clear_error(messy_folder):
    with pytest.raises(DataError, match="no usable images"):
        load_images(messy_folder, max_pixels=31 * 32)


def test_without_verify_only_names_are_checked(messy_folder):
    s = load_images(messy_folder, verify=False)
    assert s.report.verified is False and s.hashes is None
    # Only notes.txt is rejected by its name; the broken files are kept, unverified.
    assert [Path(x.path).name for x in s.report.rejected] == ["notes.txt"]
    assert len(s) == 16 + 2 + 5


def test_detection_says_what_and_why(tmp_path, caplog):
    _jpeg(tmp_path / "ds" / "cat" / "1.jpg")
    with caplog.at_level(logging.INFO, logger="transferkit.data"):
        s = load_images(tmp_path / "ds")
    assert s.report.format == "folder"
    assert "1 subfolders taken as class folders (cat)" in s.report.format_reason
    assert any("detected folder layout" in m for m in caplog.messages)


def test_nested_class_folders_and_files_outside_classes(tmp_path):
    root = tmp_path / "ds"
    _jpeg(root / "cat" / "indoor" / "1.jpg")
    _jpeg(root / "cat" / "outdoor" / "deep" / "2.jpg", seed=1)
    _jpeg(root / "dog" / "3.jpg", colour=(20, 20, 200))
    _jpeg(root / "stray.jpg", seed=2)
    (root / ".hidden").mkdir()
    _jpeg(root / ".hidden" / "x.jpg")
    s = load_images(root)
    assert s.class_counts() == {"cat": 2, "dog": 1}
    assert [(Path(x.path).name, x.reason) for x in s.report.rejected] == [("stray.jpg", "not inside a class folder (no label)")]
    assert s.split is None


def test_split_folders_give_an_official_split(tmp_path):
    root = tmp_path / "ds"
    for split, n in (("train", 3), ("val", 1), ("test", 2)):
        for c, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
            for i in range(n):
                _jpeg(root / split / c / f"{i}.jpg", colour, seed=i + 10 * n)
    s = load_images(root)
    assert "split folders" in s.report.format_reason
    assert s.class_names == ["cat", "dog"]
    assert s.split_counts() == {"train": 6, "val": 2, "test": 4}


def _oxford(root: Path) -> Path:
    img = root / "images"
    _jpeg(img / "Abyssinian_1.jpg", seed=1)
    Image.new("RGBA", (40, 30), (10, 200, 10, 255)).save(img / "Abyssinian_2.jpg", format="PNG")  # PNG named .jpg
    Image.new("P", (40, 30)).save(img / "Abyssinian_3.jpg", format="GIF")  # GIF named .jpg, unlisted
    _jpeg(img / "beagle_1.jpg", (20, 20, 200), seed=4)
    _jpeg(img / "beagle_2.jpg", (20, 20, 200), seed=5)
    shutil.copy(img / "beagle_1.jpg", img / "beagle_3.jpg")  # same photo in train and test
    (img / "beagle_1.mat").write_bytes(b"MATLAB")
    ann = root / "annotations"
    ann.mkdir(parents=True)
    header = "#Image CLASS-ID SPECIES BREED ID\n#ID: 1:37 Class ids\n"
    trainval = ["Abyssinian_1 1 1 1", "beagle_1 3 2 2", "beagle_2 3 2 2", "Bengal_1 2 1 2"]
    test = ["Abyssinian_2 1 1 1", "Abyssinian_4 1 1 1", "beagle_3 3 2 2", "beagle_9 3 2 2"]
    (ann / "list.txt").write_text(header + "\n".join(sorted(trainval + test)) + "\n")
    (ann / "trainval.txt").write_text("\n".join(trainval) + "\n")
    (ann / "test.txt").write_text("\n".join(test) + "\n")
    return root


def test_oxford_pets_breeds_official_split_missing_and_unlisted(tmp_path):
    s = load_images(_oxford(tmp_path / "oxford"))
    r = s.report
    assert r.format == "oxford-pets"
    assert s.class_names == ["Abyssinian", "beagle"]  # list.txt class-id order; Bengal has no image
    assert r.listed == 8
    assert sorted(Path(p).name for p in r.missing) == ["Abyssinian_4.jpg", "Bengal_1.jpg", "beagle_9.jpg"]
    assert r.kept == 5 and len(r.rejected) == 2
    reasons = {Path(x.path).name: x.reason for x in r.rejected}
    assert "decodes fine: GIF" in reasons["Abyssinian_3.jpg"]
    assert "not an image file name" in reasons["beagle_1.mat"]
    split = {p.name: sp for p, sp in zip(s.paths, s.split)}
    assert split == {"Abyssinian_1.jpg": "train", "Abyssinian_2.jpg": "test", "beagle_1.jpg": "train",
                     "beagle_2.jpg": "train", "beagle_3.jpg": "test"}
    assert [[Path(p).name for p in g] for g in r.leakage] == [["beagle_1.jpg", "beagle_3.jpg"]]
    assert any("Bengal" in n for n in r.notes)


def test_oxford_pets_by_species(tmp_path):
    s = load_images(_oxford(tmp_path / "oxford"), label_by="species")
    assert s.class_counts() == {"cat": 2, "dog": 3}
    with pytest.raises(DataError, match="label_by"):
        load_images(tmp_path / "oxford", label_by="colour")


def test_petimages_layout(tmp_path):
    pets = tmp_path / "kagglecatsanddogs" / "PetImages"
    for i in range(3):
        _jpeg(pets / "Cat" / f"{i}.jpg", seed=i)
    for i in range(2):
        _jpeg(pets / "Dog" / f"{i}.jpg", (20, 20, 200), seed=i)
    (pets / "Cat" / "Thumbs.db").write_bytes(b"\x00" * 10)
    (pets / "Dog" / "666.jpg").write_bytes(b"")
    (tmp_path / "kagglecatsanddogs" / "readme[1].txt").write_text("readme")
    s = load_images(tmp_path / "kagglecatsanddogs")
    assert s.report.format == "petimages" and "PetImages/Cat" in s.report.format_reason
    assert s.class_counts() == {"cat": 3, "dog": 2}
    assert sorted((Path(x.path).name, x.reason.split(" (")[0]) for x in s.report.rejected) == [
        ("666.jpg", "empty file"), ("Thumbs.db", "system file, not an image")]


def test_kaggle_layout(tmp_path):
    root = tmp_path / "dogs-vs-cats"
    for i in range(2):
        _jpeg(root / "train" / f"cat.{i}.jpg", seed=i)
    for i in range(3):
        _jpeg(root / "train" / f"dog.{i}.jpg", (20, 20, 200), seed=i)
    _jpeg(root / "test1" / "1.jpg")
    s = load_images(root)
    assert s.report.format == "kaggle"
    assert s.class_counts() == {"cat": 2, "dog": 3}
    assert any("test1/ holds 1 unlabelled" in n for n in s.report.notes)
    assert load_images(root / "train").report.format == "kaggle"


def test_csv_layout_with_header_split_and_problems(tmp_path):
    root = tmp_path / "csvset"
    _jpeg(root / "img" / "a.jpg", seed=1)
    _jpeg(root / "img" / "b.jpg", seed=2)
    _jpeg(root / "img" / "c.jpg", seed=3)
    _jpeg(tmp_path / "elsewhere.jpg", seed=4)
    (root / "img" / "d.jpg").write_text("not an image")
    (root / "labels.csv").write_text(
        "path,label,split\n"
        "img/a.jpg,cat,train\n"
        "img/b.jpg,dog,validation\n"
        f"{tmp_path / 'elsewhere.jpg'},dog,test\n"
        "img/c.jpg,,train\n"
        "img/d.jpg,cat,train\n"
        "img/gone.jpg,cat,train\n"
        "img/a.jpg,cat,train\n"
    )
    s = load_images(root / "labels.csv")
    r = s.report
    assert r.format == "csv" and r.listed == 7
    assert {p.name: (s.class_names[lab], sp) for p, lab, sp in zip(s.paths, s.labels, s.split)} == {
        "a.jpg": ("cat", "train"), "b.jpg": ("dog", "val"), "elsewhere.jpg": ("dog", "test")}
    assert [Path(p).name for p in r.missing] == ["gone.jpg"]
    reasons = sorted(x.reason.split(";")[0].split(" (")[0] for x in r.rejected)
    assert reasons == ["CSV row has an empty path or label", "listed again on CSV line 8", "not an image Pillow can read"]
    # An unknown split is a typo to fix, not a row to drop: the error names the row.
    (root / "labels.csv").write_text("path,label,split\nimg/a.jpg,cat,train\nimg/c.jpg,cat,holdout\n")
    with pytest.raises(DataError, match="labels.csv line 3: unknown split 'holdout'; use train, val, test"):
        load_images(root / "labels.csv")


def test_csv_without_header(tmp_path):
    _jpeg(tmp_path / "x.jpg")
    (tmp_path / "l.csv").write_text("x.jpg,cat\n")
    s = load_images(tmp_path / "l.csv", "csv")
    assert s.class_names == ["cat"] and s.split is None


@pytest.mark.parametrize(
    "make, fmt, message",
    [
        (lambda p: p, "auto", "does not exist"),
        (lambda p: (p.mkdir(), p)[1], "auto", "cannot tell the layout"),
        (lambda p: (p.mkdir(), p)[1], "csv", "needs a .csv file"),
        (lambda p: (p.mkdir(), p)[1], "parquet", "unknown format"),
    ],
)
def test_bad_input_raises_one_clear_data_error(tmp_path, make, fmt, message):
    with pytest.raises(DataError, match=message):
        load_images(make(tmp_path / "ds"), fmt)


def test_verify_cache_makes_the_second_look_free(messy_folder, monkeypatch):
    first = load_images(messy_folder)
    assert first.report.cache_hits == 0
    cache_dir = Path(os.environ["TRANSFERKIT_CACHE_DIR"]) / "verify"
    assert len(list(cache_dir.glob("*.json"))) == 1 and not list(cache_dir.glob("*.tmp"))

    import transferkit.data.verify as verify

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(verify, "check_file", no_decoding)
    second = load_images(messy_folder)
    # 23 files with an image suffix; the dangling symlink has nothing to stat, so it is never
    # cached but is rejected without decoding.
    assert second.report.cache_hits == 22
    assert second.report.counts == first.report.counts
    assert second.hashes == first.hashes


def test_cache_notices_changed_files_and_options(messy_folder):
    load_images(messy_folder)
    target = messy_folder / "a" / "rgb.jpg"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(target)  # new content, size and mtime
    again = load_images(messy_folder)
    assert again.report.cache_hits == 21  # of 23: rgb.jpg decoded again, dangling link never cached
    assert again.report.duplicates[0][0].endswith("copy1.jpg")  # rgb.jpg no longer a duplicate
    assert load_images(messy_folder, allow_truncated=True).report.cache_hits == 0


def test_cache_forgets_deleted_files(messy_folder):
    load_images(messy_folder)
    (cache_file,) = (Path(os.environ["TRANSFERKIT_CACHE_DIR"]) / "verify").glob("*.json")
    before = json.loads(cache_file.read_text())["entries"]
    gone = messy_folder / "a" / "rgb.jpg"
    assert str(gone) in before
    gone.unlink()
    again = load_images(messy_folder)
    after = json.loads(cache_file.read_text())["entries"]
    assert str(gone) not in after and set(after) == set(before) - {str(gone)}
    assert again.report.cache_hits == len(after)


def test_corrupt_cache_is_ignored(messy_folder):
    load_images(messy_folder)
    for f in (Path(os.environ["TRANSFERKIT_CACHE_DIR"]) / "verify").glob("*.json"):
        f.write_text("{not json")
    s = load_images(messy_folder)
    assert s.report.kept == 18 and s.report.cache_hits == 0


def test_parallel_verify_matches_inline(tmp_path, monkeypatch):
    import transferkit.data.verify as verify

    monkeypatch.setattr(verify, "INLINE_THRESHOLD", 8)  # use the pool even for a tiny set
    root = tmp_path / "many"
    for i in range(40):
        _jpeg(root / ("cat" if i % 2 else "dog") / f"{i}.jpg", seed=i, size=16)
    (root / "cat" / "bad.jpg").write_bytes(b"\xff\xd8\xff")
    files = sorted(root.rglob("*.jpg"))
    checks, stats = verify.verify_files(files, root=root, workers=2, cache=False)
    assert stats["workers"] == 2
    inline, inline_stats = verify.verify_files(files, root=root, workers=1, cache=False)
    assert inline_stats["workers"] == 1
    assert checks == inline
    parallel = load_images(root, workers=2, cache=False)
    assert len(parallel) == 40 and [Path(x.path).name for x in parallel.report.rejected] == ["bad.jpg"]


def test_broken_worker_pool_falls_back_to_inline(tmp_path, monkeypatch, caplog):
    import multiprocessing

    import transferkit.data.verify as verify

    class NoProcesses:
        def __getattr__(self, name):
            return getattr(multiprocessing.get_context("fork"), name)

        def Process(self, *args, **kwargs):  # noqa: N802 (multiprocessing's name)
            raise OSError("no processes allowed here")

    monkeypatch.setattr(verify, "INLINE_THRESHOLD", 8)
    monkeypatch.setattr(verify, "_pool_context", lambda: NoProcesses())
    for i in range(40):
        _jpeg(tmp_path / "ds" / "cat" / f"{i}.jpg", seed=i, size=16)
    with caplog.at_level(logging.WARNING, logger="transferkit.data.verify"):
        s = load_images(tmp_path / "ds", workers=2, cache=False)
    assert len(s) == 40 and s.report.rejected == []
    assert any("worker processes failed" in m for m in caplog.messages)


def test_layout_roots_given_one_level_down(tmp_path):
    oxford = _oxford(tmp_path / "oxford")
    s = load_images(oxford / "images")
    assert s.report.format == "oxford-pets" and s.report.kept == 5
    pets = tmp_path / "PetImages"
    _jpeg(pets / "Cat" / "1.jpg")
    _jpeg(pets / "Dog" / "1.jpg", (20, 20, 200))
    assert load_images(pets).class_names == ["cat", "dog"]


def test_format_given_explicitly_skips_detection(tmp_path):
    _jpeg(tmp_path / "ds" / "train" / "cat.1.jpg")
    _jpeg(tmp_path / "ds" / "train" / "dog.1.jpg")
    as_kaggle = load_images(tmp_path / "ds", "kaggle")
    assert as_kaggle.class_names == ["cat", "dog"] and as_kaggle.report.format_reason == "format given explicitly"
    # As a folder layout, "train" is a split folder holding no class folders: nothing has a label.
    with pytest.raises(DataError, match="not inside a class folder"):
        load_images(tmp_path / "ds", "folder")


@pytest.mark.parametrize("damage", ["list", "entry"])
def test_valid_json_but_damaged_cache_is_ignored(messy_folder, damage):
    import json

    load_images(messy_folder)
    for f in (Path(os.environ["TRANSFERKIT_CACHE_DIR"]) / "verify").glob("*.json"):
        if damage == "list":
            f.write_text("[]")
        else:  # every entry keeps its stat key but loses a field of its verdict
            data = json.loads(f.read_text())
            for entry in data["entries"].values():
                entry["check"] = {"bogus": 1}
            f.write_text(json.dumps(data))
    s = load_images(messy_folder)
    assert s.report.kept == 18 and s.report.cache_hits == 0
