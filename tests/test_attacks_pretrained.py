"""The real thing, offline: ImageNet EfficientNet-Lite0 turns scikit-image's tabby cat into a dog."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.pretrained


def test_chelsea_becomes_a_golden_retriever_and_the_png_still_does(tmp_path, chelsea_path):
    torchattacks = pytest.importorskip("torchattacks")
    from transferkit.attacks import attack, ssim
    from transferkit.attacks.images import frame_for_spec, save_png
    from transferkit.backbones import create_backbone
    from transferkit.backbones.imagenet import resolve_imagenet_class
    from transferkit.data.decode import load_for_spec, open_rgb

    model = create_backbone("efficientnet_lite0")
    assert model.spec.weights_source == "package"
    retriever = resolve_imagenet_class("golden retriever")
    x = load_for_spec(chelsea_path, model.spec)[None]
    r = attack(model, x, method="bim", target=retriever, eps=4 / 255, steps=10)
    assert 281 <= int(r.pred_before[0]) <= 285  # a cat before
    assert bool(r.success[0]) and int(r.pred_after[0]) == retriever
    assert float(r.linf[0]) <= 4 / 255 + 1e-6
    assert float(ssim(x, r.adv)[0]) > 0.95
    png = save_png(frame_for_spec(open_rgb(chelsea_path), model.spec, r.adv[0]), tmp_path / "chelsea_adv.png")
    reread = load_for_spec(png, model.spec)[None]
    assert torch.equal(reread, r.adv)
    with torch.no_grad():
        assert int(model(reread).argmax()) == retriever
    # FGSM agrees with torchattacks on the real network too
    ta = torchattacks.FGSM(model, eps=2 / 255)
    ta.set_mode_targeted_by_label(quiet=True)
    ref = ta(x, torch.tensor([retriever]))
    ours = attack(model, x, method="fgsm", target=retriever, eps=2 / 255)
    assert float((ours.adv - ref).abs().max()) < 1e-6
