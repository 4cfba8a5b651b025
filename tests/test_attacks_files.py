"""The library behind `transferkit attack` / `robustness`: attack a photo file, name classes, sample a dataset."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from transferkit.attacks import (
    AttackInputError,
    ClassSpace,
    attack_image_file,
    attack_output_paths,
    dataset_robustness,
    psnr,
    ssim,
    stratified_sample,
)
from transferkit.data.decode import load_for_spec


@pytest.fixture
def bundle_model(tiny_backbone):
    """A 3-class classifier on the tiny backbone, its head scaled so the classes differ."""
    from transferkit.classifier.bundle import ClassifierModel

    torch.manual_seed(0)
    head = nn.Linear(tiny_backbone.num_features, 3)
    with torch.no_grad():
        head.weight.mul_(20)
    return ClassifierModel(tiny_backbone, head, ["class_0", "class_1", "class_2"]).eval()


@pytest.fixture
def photo(tmp_path):
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:45, 0:60]
    arr = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1) + rng.integers(0, 40, (45, 60, 3))
    path = tmp_path / "dog.png"
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path)
    return path


# ------------------------------------------------------------------ output names


def test_output_png_name_is_the_adversarial_file_with_the_others_beside_it(tmp_path):
    files = attack_output_paths("photos/dog.jpg", tmp_path / "adv.png")
    assert files.adversarial == tmp_path / "adv.png"
    assert files.perturbation == tmp_path / "adv_perturbation.png"
    assert files.figure == tmp_path / "adv_attack.png"


def test_output_without_suffix_or_an_existing_folder_is_a_folder(tmp_path):
    assert attack_output_paths("dog.jpg", tmp_path / "out").adversarial == tmp_path / "out" / "dog_adv.png"
    (tmp_path / "old.png").mkdir()
    assert attack_output_paths("dog.jpg", tmp_path / "old.png").adversarial == tmp_path / "old.png" / "dog_adv.png"
    assert attack_output_paths("my.dog.jpg").adversarial.parent.name == "attack-my.dog"


@pytest.mark.parametrize("name, words", [("adv.jpg", "lossy"), ("adv.JPEG", "lossy"), ("adv.webp", "lossy"), ("adv.bmp", "PNG")])
def test_output_in_another_image_format_is_refused(tmp_path, name, words):
    with pytest.raises(AttackInputError, match=words) as info:
        attack_output_paths("dog.jpg", tmp_path / name)
    assert "adv.png" in str(info.value)


# ------------------------------------------------------------------ class names


def test_bundle_classes_resolve_by_name_prefix_or_index():
    space = ClassSpace(("cat", "caterpillar", "dog"), imagenet=False)
    assert space.resolve("Dog") == 2 and space.resolve("cat") == 0 and space.resolve(1) == 1 and space.resolve("caterp") == 1
    with pytest.raises(AttackInputError, match="matches several"):
        space.resolve("ca")
    with pytest.raises(AttackInputError, match="is not one"):
        space.resolve("zebra")


def test_class_space_of_a_bundle_and_of_an_imagenet_backbone(bundle_model, tiny_backbone):
    assert ClassSpace.of(bundle_model).names == ("class_0", "class_1", "class_2")
    imagenet = ClassSpace.of(tiny_backbone)
    assert imagenet.imagenet and len(imagenet.names) == 1000
    assert imagenet.resolve("tabby cat") == 281 and imagenet.label(281) == "tabby (281)"


def test_a_backbone_without_an_imagenet_head_is_refused():
    from transferkit.backbones import create_backbone

    headless = create_backbone("test_efficientnet", weights="none", image_size=32, num_classes=3)
    with pytest.raises(AttackInputError, match="no 1000-class ImageNet head"):
        ClassSpace.of(headless)


# ------------------------------------------------------------------ attacking a file


def test_attack_image_file_reports_what_the_saved_png_says(tmp_path, bundle_model, photo):
    out = tmp_path / "res" / "adv.png"
    report = attack_image_file(bundle_model, photo, method="bim", eps=16 / 255, out=out)
    assert report.files.adversarial == out and out.is_file()
    assert report.files.perturbation.is_file() and report.files.figure.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["adv.png", "adv_attack.png", "adv_perturbation.png"]
    # "after" is the file on disk, classified from scratch
    with torch.no_grad():
        probs = bundle_model(load_for_spec(out, bundle_model.spec)[None]).softmax(dim=1)[0]
    assert report.top_after[0] == (f"class_{int(probs.argmax())}", pytest.approx(float(probs.max())))
    assert report.success and report.saved_png_fools_model
    assert report.top_before[0][0] != report.top_after[0][0]
    assert report.linf <= 16 / 255 + 1e-6 and report.linf_255 == pytest.approx(report.linf * 255)
    clean = load_for_spec(photo, bundle_model.spec)[None]
    assert report.psnr_db == pytest.approx(float(psnr(clean, report.result.adv)[0]))
    assert report.ssim == pytest.approx(float(ssim(clean, report.result.adv)[0]))
    data = report.to_dict()
    assert data["files"]["adversarial"] == str(out) and data["target"] is None
    assert data["top3_after_saved_png"] == report.top_after


def test_attack_image_file_on_an_imagenet_backbone_by_class_name(tmp_path, tiny_backbone, photo):
    report = attack_image_file(tiny_backbone, photo, target="tabby cat", method="fgsm", eps=8 / 255, out=tmp_path / "o", figure=False)
    assert report.target == "tabby (281)"
    assert int(report.result.target[0]) == 281
    assert report.files.figure is None and not (tmp_path / "o" / "dog_attack.png").exists()
    assert (tmp_path / "o" / "dog_adv.png").is_file()
    assert report.model.startswith("ImageNet backbone test_efficientnet")
    assert report.saved_png_fools_model == (report.top_after[0][0] == "tabby (281)")


def test_attack_image_file_refuses_before_writing(tmp_path, bundle_model, photo):
    with pytest.raises(AttackInputError, match="lossy"):
        attack_image_file(bundle_model, photo, out=tmp_path / "adv.jpg")
    with pytest.raises(AttackInputError, match="is not one"):
        attack_image_file(bundle_model, photo, target="zebra", out=tmp_path / "adv.png")
    assert list(tmp_path.iterdir()) == [photo]


def test_attack_image_file_leaves_the_model_mode_alone(tmp_path, bundle_model, photo):
    bundle_model.train()
    attack_image_file(bundle_model, photo, method="fgsm", eps=4 / 255, out=tmp_path / "a.png", figure=False)
    assert bundle_model.training
    bundle_model.eval()


# ------------------------------------------------------------------ datasets


def test_stratified_sample_is_balanced_sorted_and_seeded():
    labels = [0] * 10 + [1] * 10 + [2] * 3
    chosen = stratified_sample(labels, 9, seed=1)
    assert chosen == sorted(chosen) and len(set(chosen)) == 9
    assert sorted(labels[i] for i in chosen) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert stratified_sample(labels, 9, seed=1) == chosen
    assert stratified_sample(labels, 9, seed=2) != chosen
    assert stratified_sample(labels, 100) == list(range(len(labels)))


def test_dataset_robustness_samples_and_reports_unreadable_files(tmp_path, bundle_model, tiny_image_folder):
    from transferkit.data import ImageSet, load_images

    listed = load_images(tiny_image_folder)
    broken = tiny_image_folder / "class_1" / "broken.jpg"  # listed, then spoilt before the run
    broken.write_bytes(b"not a jpeg")
    imageset = ImageSet(paths=[*listed.paths, broken], labels=[*listed.labels, 1], class_names=listed.class_names)
    run = dataset_robustness(bundle_model, imageset, [0, 4 / 255], method="fgsm", limit=0, plot=tmp_path / "r.png")
    assert run.total == 19 and run.images == 18
    assert [p for p, _ in run.unreadable] == [str(broken)]
    assert run.curve.points[0].accuracy == pytest.approx(run.curve.clean_accuracy)
    assert run.plot.read_bytes()[:4] == b"\x89PNG"
    assert run.to_dict()["images"] == 18 and run.to_dict()["note"] is None

    sampled = dataset_robustness(bundle_model, tiny_image_folder, [0], method="fgsm", limit=6, seed=0)
    assert sampled.images == 6 and sampled.total == 18 and sampled.curve.images == 6


def test_dataset_robustness_on_an_imagenet_backbone_uses_its_own_predictions(tiny_backbone, tiny_image_folder):
    run = dataset_robustness(tiny_backbone, tiny_image_folder, [0], method="bim", steps=1, limit=3)
    assert "class_0" in run.note and run.curve.clean_accuracy == 1.0 and run.images == 3


def test_dataset_robustness_refuses_classes_the_bundle_lacks_and_unconstrained(tiny_backbone, bundle_model, tiny_image_folder):
    from transferkit.classifier.bundle import ClassifierModel

    other = ClassifierModel(tiny_backbone, nn.Linear(tiny_backbone.num_features, 2), ["cat", "dog"])
    with pytest.raises(AttackInputError, match="not among the bundle's classes"):
        dataset_robustness(other, tiny_image_folder, [0])
    with pytest.raises(AttackInputError, match="no eps ball"):
        dataset_robustness(bundle_model, tiny_image_folder, [0], method="unconstrained")
