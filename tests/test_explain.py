"""Feature visualisation core: total variation, parameterisations, transforms, the render loop."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from transferkit.core.errors import UnknownNameError
from transferkit.explain import (
    RandomAffine,
    RenderConfig,
    build_class_objective,
    class_logit,
    create_param,
    l2_loss,
    plain_config,
    render_class_image,
    resolve_class,
    total_variation,
    total_variation_loss,
)
from transferkit.explain.objectives import RenderState

TINY = dict(size=32, steps=12, views=2, jitter=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The renders here are tiny: with two threads on a busy machine, OpenMP spends 20-60x more CPU
    time waiting than computing (measured), so these tests run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_net():
    """timm's tiny test network at 32 px, random weights, with a classifier scaled up so that
    its logits move visibly (timm initialises it near zero)."""
    from transferkit.backbones import create_backbone

    net = create_backbone("test_efficientnet", weights="none", image_size=32)
    torch.nn.init.normal_(net.net.classifier.weight, std=1.0, generator=torch.Generator().manual_seed(0))
    return net


# --- total variation: exact values -------------------------------------------------------------


def test_tv_of_flat_image_is_zero():
    assert total_variation(torch.full((3, 5, 7), 0.3)).item() == 0.0


def test_tv_of_checkerboard_is_two():
    board = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2
    assert total_variation(board.float().expand(3, 4, 4)).item() == pytest.approx(2.0)


def test_tv_exact_on_small_tensor():
    x = torch.tensor([[[0.0, 1.0, 1.0], [0.0, 0.5, 1.0]]])  # 1 channel, 2 x 3
    # vertical steps: |0-0|, |0.5-1|, |1-1| -> mean 1/6; horizontal: |1-0|,|1-1|,|0.5-0|,|1-0.5| -> mean 2/4
    assert total_variation(x).item() == pytest.approx(1 / 6 + 0.5)


def test_tv_is_per_image_for_batches_and_checks_shape():
    batch = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4), torch.eye(4).expand(3, 4, 4)])
    tv = total_variation(batch)
    assert tv.shape == (3,)
    # identity matrix: 6 of the 12 vertical steps and 6 of the 12 horizontal steps are 1
    assert tv.tolist() == pytest.approx([0.0, 0.0, 1.0])
    with pytest.raises(ValueError):
        total_variation(torch.zeros(3, 1, 5))


def test_objectives_compose_like_numbers():
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    logits = torch.tensor([[1.0, 2.0, 3.0]])
    state = RenderState(image=image, views=image, logits=logits)
    combined = class_logit(2) + 0.5 * total_variation_loss() + 2 * l2_loss()
    expected = -3.0 + 0.5 * total_variation(image).mean() + 2 * (image - 0.5).pow(2).mean()
    assert combined(state).item() == pytest.approx(expected.item())
    built = build_class_objective(2, kind="logprob", tv_weight=0.5)
    assert built(state).item() == pytest.approx((-torch.log_softmax(logits, 1)[0, 2] + 0.5 * total_variation(image)).item())
    with pytest.raises(UnknownNameError):
        build_class_objective(0, kind="logits")


# --- parameterisations and transforms ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["pixel", "fourier"])
def test_params_stay_in_unit_range_even_when_pushed_hard(kind):
    param = create_param(kind, (16, 20), seed=0)
    opt = torch.optim.SGD(param.parameters(), lr=1e4)
    for _ in range(3):
        opt.zero_grad()
        (-param().sum() * 1e3).backward()  # push every pixel towards +inf
        opt.step()
    img = param().detach()
    assert img.shape == (1, 3, 16, 20)
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0


def test_params_are_seeded():
    a, b, c = (create_param("fourier", 16, seed=s)() for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_fourier_start_is_smoother_than_pixel_noise():
    assert total_variation(create_param("fourier", 64, seed=0)()).item() < 0.1 * total_variation(create_param("pixel", 64, seed=0)()).item()


def test_random_affine_is_seeded_and_identity_without_randomness():
    img = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    t = RandomAffine(jitter=4, scale=(0.8, 1.2), degrees=15)
    v1 = t(img, torch.Generator().manual_seed(5), views=3, out_size=(20, 20))
    v2 = t(img, torch.Generator().manual_seed(5), views=3, out_size=(20, 20))
    assert v1.shape == (3, 3, 20, 20) and torch.equal(v1, v2)
    assert not torch.equal(v1[0], v1[1])  # each view gets its own draw
    identity = RandomAffine(jitter=0, scale=(1.0, 1.0), degrees=0.0)(img, torch.Generator().manual_seed(0))
    assert torch.allclose(identity, img, atol=1e-5)


# --- the render loop (tiny random network) -----------------------------------------------------


def _clean_logit(model, image, index):
    with torch.no_grad():
        return float(model(image[None])[0, index])


@pytest.mark.parametrize("param", ["fourier", "pixel"])
def test_class_logit_rises_over_k_steps(tiny_net, param):
    index = 7
    start = render_class_image(tiny_net, index, RenderConfig(**{**TINY, "steps": 0}, param=param, tv_weight=0.0))
    after = render_class_image(tiny_net, index, RenderConfig(**TINY, param=param, tv_weight=0.0, lr=0.1))
    before_logit, after_logit = _clean_logit(tiny_net, start.image, index), _clean_logit(tiny_net, after.image, index)
    assert after_logit > before_logit + 0.01, (before_logit, after_logit)
    assert after.logit == pytest.approx(after_logit, abs=1e-5)
    assert len(after.history) == TINY["steps"]
    assert after.history[-1].logit > after.history[0].logit


def test_logprob_objective_raises_probability(tiny_net):
    cfg = RenderConfig(**TINY, objective="logprob", tv_weight=0.0, transforms=False, param="pixel", lr=0.2)
    result = render_class_image(tiny_net, 3, cfg)
    assert result.history[-1].probability > result.history[0].probability


def test_same_seed_same_image_other_seed_other_image(tiny_net):
    cfg = RenderConfig(**TINY, seed=3)
    a, b = render_class_image(tiny_net, 1, cfg), render_class_image(tiny_net, 1, cfg)
    c = render_class_image(tiny_net, 1, RenderConfig(**TINY, seed=4))
    assert torch.equal(a.image, b.image)
    assert not torch.equal(a.image, c.image)


def test_pixels_stay_in_unit_range_and_model_is_restored(tiny_net):
    flags = [p.requires_grad for p in tiny_net.parameters()]
    tiny_net.train()
    try:
        result = render_class_image(tiny_net, 0, RenderConfig(**TINY, lr=5.0, frame_every=4))
    finally:
        restored_training = tiny_net.training
        tiny_net.eval()
    assert result.image.shape == (3, 32, 32)
    assert float(result.image.min()) >= 0.0 and float(result.image.max()) <= 1.0
    assert all(0.0 <= float(f.min()) and float(f.max()) <= 1.0 for f in result.frames)
    assert len(result.frames) == 4  # step 1, 4, 8, 12
    assert restored_training is True
    assert [p.requires_grad for p in tiny_net.parameters()] == flags
    assert all(p.is_contiguous() for p in tiny_net.parameters())


def test_tv_weight_lowers_total_variation(tiny_net):
    base = RenderConfig(**{**TINY, "views": 1}, param="pixel", transforms=False, lr=0.1, tv_weight=0.0)
    noisy = render_class_image(tiny_net, 5, base)
    smooth = render_class_image(tiny_net, 5, replace(base, tv_weight=20.0))
    assert smooth.tv < 0.5 * noisy.tv


def test_plain_config_is_the_noisy_baseline():
    cfg = plain_config(RenderConfig(steps=9, seed=4, tv_weight=3.0, l2_weight=1.0))
    assert (cfg.param, cfg.transforms, cfg.tv_weight, cfg.l2_weight, cfg.steps, cfg.seed) == ("pixel", False, 0.0, 0.0, 9, 4)


def test_config_validation():
    with pytest.raises(ValueError):
        RenderConfig(tv_weight=-1).validate()
    with pytest.raises(ValueError):
        RenderConfig(views=0).validate()


def test_works_with_any_pixels_to_logits_module():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))
    result = render_class_image(net, 2, RenderConfig(steps=5, size=16, lr=0.2, tv_weight=0.1))
    assert result.image.shape == (3, 16, 16) and len(result.top) == 3


# --- class names ------------------------------------------------------------------------------


class _Named(torch.nn.Module):
    class_names = ["Abyssinian", "Bengal", "british_shorthair", "american_shorthair"]


def test_resolve_class_for_bundle_names_and_imagenet(tiny_net):
    named = _Named()
    assert resolve_class(named, "bengal") == (1, "Bengal")
    assert resolve_class(named, "2") == (2, "british_shorthair")
    with pytest.raises(UnknownNameError, match="british_shorthair.*american_shorthair|american_shorthair.*british"):
        resolve_class(named, "shorthair")
    with pytest.raises(UnknownNameError, match="out of range"):
        resolve_class(named, "9")
    assert resolve_class(tiny_net, "tabby cat") == (281, "tabby")
    with pytest.raises(UnknownNameError, match="tabby"):
        resolve_class(tiny_net, "cat")
