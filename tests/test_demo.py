"""`transferkit demo`: same numbers as the separate commands, every section in the report, clear errors."""

from __future__ import annotations

import base64
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from transferkit.demo.result import REPORT_ORDER, DemoConfig
from transferkit.demo.run import cap_imageset, run_demo, transfer_train_config, write_imageset_csv

TINY = dict(backbone="test_efficientnet", weights="none", image_size=32)


def _demo_config(data: Path, out: Path, **overrides) -> DemoConfig:
    return DemoConfig(data=str(data), out=str(out), seed=3, **{**TINY, **overrides})


def test_transfer_step_gives_the_numbers_of_the_separate_library_call(tiny_image_folder, tmp_path):
    from transferkit.pipeline.train import TrainConfig, train

    result = run_demo(_demo_config(tiny_image_folder, tmp_path / "demo"), steps=("transfer",), write_report=False)
    step = result.steps["transfer"]
    assert step.status == "ok", step.message
    # The separate call, with its own (empty) feature cache: nothing is shared but the seed.
    separate = train(TrainConfig(data=str(tiny_image_folder), mode="probe", out=str(tmp_path / "sep"), seed=3,
                                 report=False, cache=False, **TINY))
    assert step.data["accuracy"] == separate.metrics["accuracy"]
    assert step.data["confusion_matrix"] == separate.evaluation.confusion.tolist()
    assert step.data["images"] == separate.metrics["images"]
    assert step.data["head"] == separate.metrics["head"]
    demo_model = transfer_train_config(result.config, tiny_image_folder, tmp_path / "x")
    assert demo_model.seed == 3 and demo_model.mode == "probe"


def test_transfer_step_matches_the_train_command_line(tiny_image_folder, tmp_path, capsys):
    """`transferkit demo --steps transfer` and `transferkit train` print the same accuracy and confusion matrix."""
    from transferkit.cli.main import main

    common = ["--backbone", "test_efficientnet", "--weights", "none", "--seed", "5", "--format", "json"]
    assert main(["demo", "--data", str(tiny_image_folder), "--steps", "transfer", "--out", str(tmp_path / "d"), *common]) == 0
    demo_json = json.loads(capsys.readouterr().out)
    assert main(["train", str(tiny_image_folder), "--out", str(tmp_path / "t"), "--no-report", *common]) == 0
    train_json = json.loads(capsys.readouterr().out)
    transfer = demo_json["steps"]["transfer"]["data"]
    assert transfer["accuracy"] == train_json["metrics"]["accuracy"]
    assert transfer["confusion_matrix"] == train_json["metrics"]["confusion_matrix"]
    assert Path(demo_json["report"]).is_file()


def test_capped_dataset_is_a_stratified_subset_that_train_reproduces(tiny_image_folder, tmp_path):
    from transferkit.data import load_images
    from transferkit.pipeline.train import TrainConfig, train

    full = load_images(tiny_image_folder)
    capped = cap_imageset(full, 9, seed=1)
    assert len(capped) == 9 and sorted(capped.class_counts().values()) == [3, 3, 3]
    assert cap_imageset(full, 9, seed=1).paths == capped.paths  # deterministic
    assert cap_imageset(full, 100, seed=1) is full

    result = run_demo(_demo_config(tiny_image_folder, tmp_path / "demo", max_images=9), steps=("transfer",), write_report=False)
    used = Path(result.steps["transfer"].data["data_path"])
    assert used.suffix == ".csv" and len(load_images(used)) == 9
    separate = train(TrainConfig(data=str(used), mode="probe", out=None, seed=3, cache=False, report=False, **TINY))
    assert result.steps["transfer"].data["confusion_matrix"] == separate.evaluation.confusion.tolist()


def test_imageset_csv_round_trip_keeps_labels_and_split(tiny_image_folder, tmp_path):
    from transferkit.data import load_images, split_imageset

    original = split_imageset(load_images(tiny_image_folder), seed=0)
    back = load_images(write_imageset_csv(original, tmp_path / "set.csv"))
    by_path = {p.resolve(): (original.class_names[c], s) for p, c, s in zip(original.paths, original.labels, original.split)}
    assert {p.resolve(): (back.class_names[c], s) for p, c, s in zip(back.paths, back.labels, back.split)} == by_path


def _data_uris(html: str) -> dict[str, bytes]:
    found = {}
    for m in re.finditer(r'<img alt="[^"]*" data-image="([^"]+)" src="data:image/png;base64,([^"]+)"', html):
        found[m.group(1)] = base64.b64decode(m.group(2))
    return found


def test_full_demo_on_a_tiny_backbone_writes_every_section_and_image(tiny_image_folder, tmp_path):
    config = _demo_config(tiny_image_folder, tmp_path / "demo", photos=2, dream_steps=2, dream_size=32, attack_steps=2,
                          robustness_images=4, finetune_epochs=1, time_budget_s=1e6)
    result = run_demo(config)
    featuremaps_built = importlib.util.find_spec("transferkit.explain.featuremaps") is not None
    for key in REPORT_ORDER:
        step = result.steps[key]
        if key == "featuremaps" and not featuremaps_built:
            assert step.status == "skipped"
            continue
        assert step.status == "ok", f"{key}: {step.message}"
    html = result.report_path.read_text()
    assert not re.search(r'<(img|script|link)[^>]+(src|href)="(?!data:)', html), "the report must not load anything"
    for key in REPORT_ORDER:
        assert f'id="step-{key}"' in html
    images = _data_uris(html)
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in images.values())
    expected = {"classify/photo_chelsea", "transfer/confusion", "finetune/confusion", "dream/tabby_cat_tv",
                "dream/tabby_cat_plain", "dream/zebra_tv", "dream/zebra_plain", "attack/original",
                "attack/adversarial", "attack/perturbation", "robustness/curve"}
    assert expected <= set(images), expected - set(images)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["steps"]["transfer"]["data"]["accuracy"] == result.steps["transfer"].data["accuracy"]
    points = summary["steps"]["robustness"]["data"]["points"]
    assert points[0]["eps"] == "0/255" and all(b["accuracy"] <= points[0]["accuracy"] for b in points[1:])


def test_quick_skips_finetuning_with_the_reason(tiny_image_folder, tmp_path):
    result = run_demo(_demo_config(tiny_image_folder, tmp_path / "demo", quick=True), steps=("finetune",), write_report=False)
    assert result.steps["finetune"].status == "skipped" and "--quick" in result.steps["finetune"].message


def test_finetuning_is_skipped_when_the_budget_is_spent(tiny_image_folder, tmp_path):
    result = run_demo(_demo_config(tiny_image_folder, tmp_path / "demo", time_budget_s=0.0), steps=("transfer", "finetune"),
                      write_report=False)
    assert result.steps["transfer"].status == "ok"
    ft = result.steps["finetune"]
    assert ft.status == "skipped" and "budget" in ft.message


def test_no_dataset_anywhere_is_one_clear_line_and_exit_1(tmp_path, monkeypatch, capsys):
    from transferkit.cli.main import main
    from transferkit.data.sources import fashion_mnist

    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    monkeypatch.setattr(fashion_mnist, "debian_source", lambda: None)
    assert main(["demo", "--out", str(tmp_path / "d"), "--backbone", "test_efficientnet", "--weights", "none"]) == 1
    err = capsys.readouterr().err
    assert "apt-get install -y dataset-fashion-mnist" in err and "--data" in err


def test_demo_uses_debian_fashion_mnist_offline_and_says_why(tmp_path, monkeypatch):
    """Offline with the Debian package (faked here by four small IDX files), the demo trains on Fashion-MNIST."""
    import gzip
    import struct

    src = tmp_path / "fm"
    src.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("t10k", 30)):
        for kind, arr in (("images", rng.integers(0, 256, (n, 28, 28))), ("labels", np.arange(n) % 10)):
            nd = 3 if kind == "images" else 1
            header = bytes([0, 0, 8, nd]) + struct.pack(f">{nd}I", *arr.shape)
            (src / f"{split}-{kind}-idx{nd}-ubyte.gz").write_bytes(gzip.compress(header + arr.astype(np.uint8).tobytes()))
    from transferkit.data.sources import fashion_mnist

    monkeypatch.setenv("TRANSFERKIT_OFFLINE", "1")
    monkeypatch.setattr(fashion_mnist, "debian_source", lambda: src)
    lines: list[str] = []
    config = DemoConfig(out=str(tmp_path / "d"), fashion_sizes=(4, 2), **TINY)
    result = run_demo(config, steps=("transfer",), notify=lines.append, write_report=False)
    assert result.dataset["name"] == "fashion-mnist" and result.dataset["classes"] == 10
    assert any("dataset-fashion-mnist" in line and "TRANSFERKIT_OFFLINE" in line for line in lines)
    assert result.steps["transfer"].status == "ok"


@pytest.fixture
def folder_for_finetuning(tmp_path) -> Path:
    """3 classes x 30 images of 32 px: enough training images per class for `--mode auto` to fine-tune."""
    from PIL import Image

    rng = np.random.default_rng(1)
    for c in range(3):
        folder = tmp_path / "ft" / f"class_{c}"
        folder.mkdir(parents=True)
        base = np.zeros(3)
        base[c] = 200
        for i in range(30):
            Image.fromarray(np.clip(base + rng.normal(0, 30, (32, 32, 3)), 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return tmp_path / "ft"


def test_finetune_step_gives_the_numbers_of_the_separate_call(folder_for_finetuning, tmp_path):
    from transferkit.demo.run import finetune_train_config
    from transferkit.pipeline.train import train

    config = _demo_config(folder_for_finetuning, tmp_path / "demo", finetune_epochs=2, time_budget_s=1e6)
    result = run_demo(config, steps=("transfer", "finetune"), write_report=False)
    step = result.steps["finetune"]
    assert step.status == "ok", step.message
    separate = train(finetune_train_config(result.config, folder_for_finetuning, tmp_path / "sep"))
    assert step.data["accuracy"] == separate.metrics["accuracy"]
    assert step.data["confusion_matrix"] == separate.evaluation.confusion.tolist()
    assert [h.get("val_acc") for h in step.data["history"]] == [
        None if h.get("val_acc") is None else round(h["val_acc"], 4) for h in separate.metrics["history"]]


def test_the_printed_finetune_command_builds_the_demo_config(tiny_image_folder, tmp_path, monkeypatch):
    """`transferkit train --mode finetune` with the flags the report prints builds the demo's TrainConfig."""
    import transferkit.pipeline.train as train_module
    from transferkit.cli.main import main
    from transferkit.demo.run import FINETUNE_CLI_FLAGS, finetune_options, finetune_train_config

    seen = []

    class _Stop(BaseException):  # main() turns any Exception into exit code 1
        pass

    def fake_train(config, **kwargs):
        seen.append(config)
        raise _Stop

    monkeypatch.setattr(train_module, "train", fake_train)
    config = DemoConfig(data=str(tiny_image_folder), seed=4)
    flags = [str(x) for k, v in finetune_options(config).items() for x in (FINETUNE_CLI_FLAGS[k], v)]
    with pytest.raises(_Stop):
        main(["train", str(tiny_image_folder), "--mode", "finetune", *flags, "--seed", "4", "--out", str(tmp_path / "m"), "--no-report"])
    expected = finetune_train_config(config, tiny_image_folder, tmp_path / "m")
    got = seen[0]
    assert (got.mode, got.seed, got.backbone, got.weights, got.finetune, got.lr_candidates) == (
        expected.mode, expected.seed, expected.backbone, expected.weights, expected.finetune, expected.lr_candidates)


def test_attack_prefers_a_dog_photo_from_the_dataset(tmp_path):
    from transferkit.data.imageset import DataReport, ImageSet
    from transferkit.demo.run import _Context, _dog_in_dataset

    ctx = _Context(DemoConfig(), tmp_path, lambda line: None)
    ctx.imageset = ImageSet(paths=[tmp_path / "a.jpg", tmp_path / "b.jpg"], labels=[0, 1], class_names=["cat", "dog"])
    assert _dog_in_dataset(ctx) == tmp_path / "b.jpg"
    # Oxford-IIIT Pet: breeds in lower case are dogs.
    ctx.imageset = ImageSet(paths=[tmp_path / "Bengal_1.jpg", tmp_path / "pug_1.jpg"], labels=[0, 1],
                            class_names=["Bengal", "pug"], report=DataReport(format="oxford-pets"))
    assert _dog_in_dataset(ctx) == tmp_path / "pug_1.jpg"
    ctx.imageset = ImageSet(paths=[tmp_path / "x.png"], labels=[0], class_names=["Trouser"])
    assert _dog_in_dataset(ctx) is None


def test_robustness_step_matches_the_robustness_command(tiny_image_folder, tmp_path, capsys):
    """The demo's accuracy-against-eps numbers = `transferkit robustness` on the same bundle and images."""
    import shlex

    from transferkit.cli.main import main

    common = ["--backbone", "test_efficientnet", "--weights", "none", "--seed", "1", "--format", "json"]
    assert main(["demo", "--data", str(tiny_image_folder), "--steps", "transfer,robustness", "--out", str(tmp_path / "d"), *common]) == 0
    step = json.loads(capsys.readouterr().out)["steps"]["robustness"]
    assert step["status"] == "ok", step["message"]
    command = shlex.split(step["command"])
    assert command[:2] == ["transferkit", "robustness"]
    assert main([*command[1:], "--plot", str(tmp_path / "r.png")]) == 0
    separate = json.loads(capsys.readouterr().out)
    assert separate["clean_accuracy"] == step["data"]["clean_accuracy"]
    assert [p["accuracy"] for p in separate["points"]] == [p["accuracy"] for p in step["data"]["points"]]


def _skip_every_step(monkeypatch):
    """Replace each step's work by an instant skip, so numbering can be checked without running anything."""
    from transferkit.demo import run as run_module

    for key in run_module.RUN_ORDER:
        monkeypatch.setitem(run_module._STEPS, key, lambda ctx, step: setattr(step, "status", "skipped"))


def test_steps_are_numbered_in_run_order_on_the_console_and_in_the_report(tiny_image_folder, tmp_path, monkeypatch):
    from transferkit.demo.result import RUN_ORDER, STEP_TITLES

    _skip_every_step(monkeypatch)
    lines: list[str] = []
    result = run_demo(_demo_config(tiny_image_folder, tmp_path / "d"), steps=("finetune", "featuremaps", "classify"), notify=lines.append)
    progress = [line for line in lines if line.startswith("[")]
    assert progress == [f"[1/3] {STEP_TITLES['classify']}", f"[2/3] {STEP_TITLES['featuremaps']}", f"[3/3] {STEP_TITLES['finetune']}"]
    assert not any(title[0].isdigit() for title in STEP_TITLES.values())  # titles carry no fixed number
    html = result.report_path.read_text()
    headings = re.findall(r'<section id="step-(\w+)" data-status="[\w-]+"><h2>([^<]*)</h2>', html)
    assert [key for key, _ in headings] == list(RUN_ORDER)
    numbered = [(key, h) for key, h in headings if h[0].isdigit()]
    assert numbered == [("classify", "1. " + STEP_TITLES["classify"]), ("featuremaps", "2. " + STEP_TITLES["featuremaps"]),
                        ("finetune", "3. " + STEP_TITLES["finetune"])]
    assert dict(headings)["transfer"] == STEP_TITLES["transfer"]  # not run: no number
    timing = re.findall(r"<tr><td>(\d+)\. ", html)
    assert timing == ["1", "2", "3"]
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert {k: s["number"] for k, s in summary["steps"].items()} == {"classify": 1, "featuremaps": 2, "finetune": 3}


def test_console_summary_numbers_steps_as_they_ran(tmp_path, monkeypatch, capsys):
    from transferkit.cli.main import main
    from transferkit.demo.result import STEP_TITLES

    _skip_every_step(monkeypatch)
    assert main(["demo", "--steps", "attack,classify", "--out", str(tmp_path / "d"), "--backbone", "test_efficientnet", "--weights", "none"]) == 0
    captured = capsys.readouterr()
    assert "[1/2] " + STEP_TITLES["classify"] in captured.err and "[2/2] " + STEP_TITLES["attack"] in captured.err
    out = captured.out
    assert "1. " + STEP_TITLES["classify"] in out and "2. " + STEP_TITLES["attack"] in out
    assert out.index("1. " + STEP_TITLES["classify"]) < out.index("2. " + STEP_TITLES["attack"])
