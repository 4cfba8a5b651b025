"""Attacks on a tiny network: eps ball, pixel range, 8-bit grid, torchattacks agreement, robustness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from transferkit.attacks import (
    attack,
    is_on_8bit_grid,
    list_attacks,
    psnr,
    quantize_8bit,
    robustness_curve,
    ssim,
    total_variation,
)
from transferkit.core.errors import UnknownNameError

EPS = 4 / 255


def _colour_batch(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit images of 32 px whose dominant colour channel is the class (3 classes)."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for c in range(3):
        base = torch.zeros(3, 1, 1)
        base[c] = 0.6
        noise = torch.randint(0, 90, (n_per_class, 3, 32, 32), generator=g).float() / 255
        xs.append(quantize_8bit(base + 0.1 + noise))
        ys.append(torch.full((n_per_class,), c))
    return torch.cat(xs), torch.cat(ys)


@pytest.fixture(scope="module")
def trained_tiny():
    """timm's test_efficientnet (32 px, 3 classes) trained for a few Adam steps on colour images."""
    from transferkit.backbones import create_backbone

    model = create_backbone("test_efficientnet", weights="none", image_size=32, num_classes=3, seed=0)
    x, y = _colour_batch(8, seed=0)
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(25):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def batch():
    return _colour_batch(4, seed=1)


def test_tiny_model_learned_the_colours(trained_tiny, batch):
    x, y = batch
    with torch.no_grad():
        acc = (trained_tiny(x).argmax(1) == y).float().mean().item()
    assert acc >= 0.9


def test_registry_lists_the_methods_and_suggests_close_names():
    assert {"fgsm", "bim", "pgd", "unconstrained"} <= set(list_attacks())
    with pytest.raises(UnknownNameError, match="pgd"):
        attack(nn.Identity(), torch.zeros(1, 3, 4, 4), method="pdg", eps=EPS)


@pytest.mark.parametrize("method", ["fgsm", "bim", "pgd"])
@pytest.mark.parametrize("quantize", [True, False])
@pytest.mark.parametrize("targeted", [True, False])
def test_linf_ball_pixel_range_and_grid(trained_tiny, batch, method, quantize, targeted):
    x, y = batch
    target = (y + 1) % 3 if targeted else None
    r = attack(trained_tiny, x, y, method=method, target=target, eps=EPS, generator=torch.Generator().manual_seed(0), quantize=quantize)
    delta = r.adv - x
    assert float(delta.abs().max()) <= EPS + 1e-6
    assert torch.allclose(r.linf, delta.flatten(1).abs().amax(1))
    assert float(r.adv.min()) >= 0.0 and float(r.adv.max()) <= 1.0
    assert float(delta.abs().max()) > EPS / 2  # it did move
    assert is_on_8bit_grid(r.adv) == quantize or quantize is False
    if quantize:
        assert torch.equal(quantize_8bit(r.adv), r.adv)  # exactly what a PNG round trip returns
    # success is what the model says about exactly the returned images
    with torch.no_grad():
        pred = trained_tiny(r.adv).argmax(1)
    assert torch.equal(pred, r.pred_after)
    assert torch.equal(r.success, pred == target if targeted else pred != y)


@pytest.mark.parametrize("quantize", [True, False])
def test_l2_ball(trained_tiny, batch, quantize):
    x, y = batch
    eps = 0.5
    r = attack(trained_tiny, x, y, method="pgd", eps=eps, norm="l2", quantize=quantize, generator=torch.Generator().manual_seed(0))
    assert float(r.l2.max()) <= eps * (1 + 1e-5)
    assert float(r.adv.min()) >= 0.0 and float(r.adv.max()) <= 1.0
    assert float(r.l2.min()) > eps / 4
    if quantize:
        assert torch.equal(quantize_8bit(r.adv), r.adv)


def test_targeted_attack_succeeds_on_tiny_model(trained_tiny, batch):
    x, y = batch
    target = (y + 1) % 3
    weak = attack(trained_tiny, x, y, method="bim", target=target, eps=0.5 / 255, steps=2)
    strong = attack(trained_tiny, x, y, method="bim", target=target, eps=16 / 255, steps=10)
    assert strong.success_rate >= 0.9
    assert weak.success_rate < strong.success_rate
    assert torch.equal(strong.success, strong.pred_after == target)
    # the target's probability rose for every image
    assert bool((strong.probs_after.gather(1, target[:, None]) > strong.probs_before.gather(1, target[:, None])).all())


def test_unconstrained_reaches_the_target_and_stays_close(trained_tiny, batch):
    x, y = batch[0][::2], batch[1][::2]
    target = (y + 1) % 3
    r = attack(trained_tiny, x, y, method="unconstrained", target=target, steps=20, alpha=4 / 255)
    assert r.success_rate >= 0.8
    assert r.eps is None
    assert float(r.adv.min()) >= 0.0 and float(r.adv.max()) <= 1.0
    assert torch.equal(quantize_8bit(r.adv), r.adv)
    assert float(psnr(x, r.adv).min()) > 20  # a change, not a new picture
    # a heavier closeness penalty buys a smaller change
    heavy = attack(trained_tiny, x, y, method="unconstrained", target=target, steps=20, alpha=4 / 255, l2_weight=5.0)
    assert float(heavy.l2.mean()) < float(r.l2.mean())


def test_bad_inputs_say_what_is_wrong(trained_tiny, batch):
    x, y = batch
    with pytest.raises(ValueError, match="8-bit grid"):
        attack(trained_tiny, torch.rand(2, 3, 32, 32) * 0.5 + 0.001, method="fgsm", eps=EPS)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        attack(trained_tiny, x * 255, method="fgsm", eps=EPS)
    with pytest.raises(ValueError, match="single step"):
        attack(trained_tiny, x, y, method="fgsm", eps=EPS, steps=5)
    with pytest.raises(ValueError, match="eps"):
        attack(trained_tiny, x, y, method="pgd")
    with pytest.raises(ValueError, match="norm"):
        attack(trained_tiny, x, y, method="pgd", eps=EPS, norm="l1")


def test_model_state_is_restored(trained_tiny, batch):
    x, y = batch
    trained_tiny.train()
    try:
        attack(trained_tiny, x[:2], y[:2], method="fgsm", eps=EPS)
        assert trained_tiny.training
        assert all(p.requires_grad for p in trained_tiny.parameters())
    finally:
        trained_tiny.eval()


# --- torchattacks cross-check (same model, inputs and seed) -----------------------------------


@pytest.mark.parametrize("targeted", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_fgsm_matches_torchattacks(trained_tiny, batch, targeted, channels_last):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = batch
    ta = torchattacks.FGSM(trained_tiny, eps=EPS)
    # same memory layout on both sides: NHWC and NCHW kernels round differently, and a gradient
    # component within rounding of 0 may flip its sign (one pixel in a million on Lite0)
    x_ta = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    if targeted:
        ta.set_mode_targeted_by_label(quiet=True)
        labels = (y + 2) % 3
        ref = ta(x_ta, labels)
        ours = attack(trained_tiny, x, y, method="fgsm", target=labels, eps=EPS, channels_last=channels_last)
    else:
        ref = ta(x_ta, y)
        ours = attack(trained_tiny, x, y, method="fgsm", eps=EPS, channels_last=channels_last)
    assert float((ours.adv - ref).abs().max()) < 1e-6


def test_fgsm_matches_torchattacks_off_grid_without_quantisation(trained_tiny):
    torchattacks = pytest.importorskip("torchattacks")
    g = torch.Generator().manual_seed(3)
    x = torch.rand(6, 3, 32, 32, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    ref = torchattacks.FGSM(trained_tiny, eps=0.01)(x, y)
    ours = attack(trained_tiny, x, y, method="fgsm", eps=0.01, quantize=False)
    assert float((ours.adv - ref).abs().max()) < 1e-6


@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_without_random_start_matches_torchattacks(trained_tiny, batch, targeted):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = batch
    ta = torchattacks.PGD(trained_tiny, eps=2 / 255, alpha=0.5 / 255, steps=5, random_start=False)
    goal = (y + 1) % 3 if targeted else y
    if targeted:
        ta.set_mode_targeted_by_label(quiet=True)
    ref = ta(x, goal)
    ours = attack(trained_tiny, x, y, method="bim", target=goal if targeted else None, eps=2 / 255, alpha=0.5 / 255, steps=5, quantize=False)
    with torch.no_grad():
        pred = trained_tiny(ref).argmax(1)
    ref_success = pred == goal if targeted else pred != goal
    assert torch.equal(ours.success, ref_success)
    assert 0 < int(ref_success.sum()) < len(y) or targeted  # the set is not trivially all or nothing
    assert float((ours.adv - ref).abs().max()) < 1e-6


def test_pgd_random_start_matches_torchattacks_with_the_same_seed(trained_tiny, batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = batch
    torch.manual_seed(7)
    ref = torchattacks.PGD(trained_tiny, eps=EPS, alpha=1 / 255, steps=3, random_start=True)(x, y)
    torch.manual_seed(7)
    ours = attack(trained_tiny, x, y, method="pgd", eps=EPS, alpha=1 / 255, steps=3, quantize=False)
    assert float((ours.adv - ref).abs().max()) < 1e-6
    # and an explicit generator makes it reproducible without touching the global RNG
    a = attack(trained_tiny, x, y, method="pgd", eps=EPS, steps=2, generator=torch.Generator().manual_seed(1))
    b = attack(trained_tiny, x, y, method="pgd", eps=EPS, steps=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.adv, b.adv)


def test_pgd_l2_matches_torchattacks(trained_tiny, batch):
    torchattacks = pytest.importorskip("torchattacks")
    x, y = batch
    ref = torchattacks.PGDL2(trained_tiny, eps=0.5, alpha=0.1, steps=4, random_start=False)(x, y)
    ours = attack(trained_tiny, x, y, method="bim", eps=0.5, alpha=0.1, steps=4, norm="l2", quantize=False)
    assert float((ours.adv - ref).abs().max()) < 1e-5


# --- robustness ------------------------------------------------------------------------------------


def test_robustness_curve(trained_tiny, batch):
    x, y = batch
    y = y.clone()
    y[0] = (y[0] + 1) % 3  # one wrong label: clean accuracy below 1
    curve = robustness_curve(trained_tiny, x, y, [0, 1 / 255, 4 / 255, 32 / 255], method="bim", steps=5)
    accs = [p.accuracy for p in curve.points]
    assert accs[0] == pytest.approx(curve.clean_accuracy)
    assert curve.clean_accuracy < 1
    assert all(a <= curve.clean_accuracy + 1e-12 for a in accs)
    assert accs[-1] < curve.clean_accuracy  # a large eps breaks it
    assert curve.points[-1].success_rate > 0.5
    assert curve.points[-1].attacked == round(curve.clean_accuracy * len(y))
    assert [r[0] for r in curve.rows()] == ["0/255", "1/255", "4/255", "32/255"]


def test_robustness_plot_is_written(tmp_path, trained_tiny, batch):
    from transferkit.attacks import plot_robustness

    x, y = batch
    curve = robustness_curve(trained_tiny, x[:4], y[:4], [0, 8 / 255], method="fgsm")
    plot_robustness([curve], tmp_path / "r.png", title="t")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- image quality -----------------------------------------------------------------------------------


def test_ssim_and_psnr_match_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 40, 48, generator=g)
    b = (a + 0.1 * torch.randn(3, 40, 48, generator=g)).clamp(0, 1)
    ref_ssim = metrics.structural_similarity(
        a.permute(1, 2, 0).double().numpy(), b.permute(1, 2, 0).double().numpy(),
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=2,
    )
    ref_psnr = metrics.peak_signal_noise_ratio(a.double().numpy(), b.double().numpy(), data_range=1.0)
    assert float(ssim(a, b)[0]) == pytest.approx(ref_ssim, abs=1e-9)
    assert float(psnr(a, b)[0]) == pytest.approx(ref_psnr, abs=1e-9)
    assert float(ssim(a, a)[0]) == pytest.approx(1.0)
    assert float(psnr(a, a)[0]) == np.inf


def test_total_variation():
    flat = torch.zeros(1, 3, 8, 8)
    step = flat.clone()
    step[..., 4:] = 1.0
    assert float(total_variation(flat)[0]) == 0
    assert float(total_variation(step)[0]) == pytest.approx(3 * 8)  # one edge per row, 3 channels
