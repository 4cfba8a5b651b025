"""Fine-tuning: staged freezing, param groups, schedules, resume equivalence, lr-find, TTA, CLI."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.data.imageset import ImageSet
from transferkit.finetune import FinetuneConfig, FinetuneError, finetune, lr_find, plot_lr_find, tta_predict_proba
from transferkit.finetune.layers import layer_groups, param_groups
from transferkit.pipeline.auto import choose_mode


@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny net runs faster on one thread, and the CPU is shared: keep these tests light."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _imageset(folder: Path, val_every: int = 0) -> ImageSet:
    paths = sorted(folder.glob("*/*.jpg"))
    names = sorted({p.parent.name for p in paths})
    labels = np.array([names.index(p.parent.name) for p in paths])
    split = None
    if val_every:
        split = ["val" if i % val_every == 0 else "train" for i in range(len(paths))]
    return ImageSet(paths, labels, names, split=split)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------------------------ stages


def test_stage1_leaves_backbone_and_batchnorm_stats_untouched(tiny_image_folder, tiny_backbone):
    before = _state(tiny_backbone.net)
    # freeze_bn_stats=False: stage 1 must still keep the frozen backbone's BatchNorm in eval mode.
    cfg = FinetuneConfig(epochs=2, head_epochs=2, batch_size=4, augment="standard", freeze_bn_stats=False, head_init="random", lr=1e-2)
    model_fit = finetune(_imageset(tiny_image_folder), cfg, backbone=tiny_backbone)
    model, history = model_fit.model, model_fit.history
    after = model.backbone.net.state_dict()
    assert set(after) == set(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == [], f"stage 1 changed frozen backbone tensors: {changed[:5]}"
    assert any("running_mean" in k for k in before)  # the check covered BatchNorm statistics
    assert [r["stage"] for r in history] == [1, 1]
    assert not torch.allclose(model.head.weight, torch.zeros_like(model.head.weight))
    assert _state(tiny_backbone.net).keys() == before.keys()  # the caller's backbone is a copy


def test_stage2_trains_only_the_top_groups(tiny_image_folder, tiny_backbone):
    groups = [g.name for g in layer_groups(tiny_backbone.net)]
    before = _state(tiny_backbone.net)
    cfg = FinetuneConfig(epochs=2, head_epochs=1, unfreeze=2, batch_size=6, augment="light", lr=1e-2, freeze_bn_stats=True)
    model_fit = finetune(_imageset(tiny_image_folder), cfg, backbone=tiny_backbone)
    model, history = model_fit.model, model_fit.history
    after = model.backbone.net.state_dict()
    top = groups[-2:]  # blocks.4 and head_conv for test_efficientnet
    assert top == ["blocks.4", "head_conv"]
    top_prefixes = ("blocks.4.", "conv_head.", "bn2.")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed, "stage 2 trained nothing"
    assert all(k.startswith(top_prefixes) for k in changed), sorted(changed)
    assert not any("running" in k for k in changed)  # frozen BatchNorm statistics
    assert [r["stage"] for r in history] == [1, 2]


def test_cached_strategy_trains_top_blocks_on_cached_activations(tiny_image_folder, tiny_backbone):
    cfg = FinetuneConfig(strategy="cached", unfreeze=2, cached_views=3, epochs=3, head_epochs=1, batch_size=4, lr=5e-3)
    ims = _imageset(tiny_image_folder, val_every=3)
    model_fit = finetune(ims, cfg, backbone=tiny_backbone)
    model, history = model_fit.model, model_fit.history
    assert [r["stage"] for r in history] == [0, 1, 2, 2] and all("val_acc" in r for r in history)  # epoch 0 = the probe
    assert model_fit.strategy == "cached"
    # The returned model runs on pixels and agrees with the val accuracy the loop measured
    # (the cached path is the same computation as the full model).
    from transferkit.finetune.loop import _load_eval_pixels

    val = ims.where_split("val")
    with torch.no_grad():
        logits = model(_load_eval_pixels(val, model.spec).float() / 255)
    acc = float((logits.argmax(1).numpy() == val.labels).mean())
    best = max(r["val_acc"] for r in history if r["stage"] > 0)
    assert acc == pytest.approx(best, abs=1e-6)


# ----------------------------------------------------------------------- optimiser pieces


def test_param_groups_layer_decay_and_no_weight_decay_on_norms_and_biases(tiny_backbone):
    head = torch.nn.Linear(tiny_backbone.num_features, 3)
    groups = layer_groups(tiny_backbone.net)
    pg = param_groups(groups, head, lr=1.0, layer_decay=0.5, weight_decay=0.1)
    by_name = {g["name"]: g for g in pg}
    assert by_name["head.decay"]["lr"] == 1.0 and by_name["head.no_decay"]["weight_decay"] == 0.0
    assert by_name["head_conv.decay"]["lr"] == 0.5
    assert by_name["stem.decay"]["lr"] == pytest.approx(0.5 ** len(groups))
    for g in pg:
        for p in g["params"]:
            assert (g["weight_decay"] == 0.0) == (p.ndim <= 1)
    n_params = sum(p.numel() for g in pg for p in g["params"])
    classifier = sum(p.numel() for p in tiny_backbone.net.classifier.parameters())
    assert n_params == sum(p.numel() for p in tiny_backbone.net.parameters()) - classifier + sum(p.numel() for p in head.parameters())


def test_lr_schedule_warmup_then_cosine_restarts_per_stage():
    from transferkit.finetune.loop import _lr_lambda

    f = _lr_lambda(FinetuneConfig(epochs=3, head_epochs=1, warmup_frac=0.2), steps_per_epoch=10)
    stage1 = [f(i) for i in range(10)]
    stage2 = [f(i) for i in range(10, 30)]
    assert stage1[0] < stage1[1] < stage1[2] == pytest.approx(1.0)  # warmup (2 steps) then peak
    assert stage1[-1] < 0.1 and stage2[0] < stage2[3]  # decayed, then warm again in stage 2
    assert all(a >= b for a, b in zip(stage2[4:], stage2[5:]))
    g = _lr_lambda(FinetuneConfig(epochs=1, head_epochs=0, schedule="onecycle"), steps_per_epoch=100)
    peak = max(range(100), key=g)
    assert 20 <= peak <= 40 and g(0) < 0.1 and g(99) < 0.01


def test_mixup_and_cutmix_keep_targets_normalised():
    from transferkit.finetune.transforms import mix_batch

    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16)
    t = torch.nn.functional.one_hot(torch.arange(8) % 3, 3).float()
    for kw in ({"mixup": 0.4, "cutmix": 0.0}, {"mixup": 0.0, "cutmix": 1.0}):
        xm, tm = mix_batch(x, t, **kw)
        assert xm.shape == x.shape and torch.allclose(tm.sum(1), torch.ones(8))
        assert not torch.equal(xm, x) and xm.min() >= 0 and xm.max() <= 1


def test_weighted_sampler_balances_classes():
    from transferkit.finetune.data import EpochSampler, balanced_weights

    labels = np.array([0] * 90 + [1] * 10)
    w, cw = balanced_weights(labels, 2)
    assert cw[1] == pytest.approx(9 * cw[0])
    s = EpochSampler(100, seed=0, weights=w)
    drawn = [labels[i] for e in range(5) for i in (s.set_epoch(e) or s)]
    assert 0.4 < np.mean(drawn) < 0.6  # minority drawn about half the time, not 10%


def test_sampler_resumes_at_batch_and_shards_like_distributed_sampler():
    from transferkit.finetune.data import EpochSampler

    full = EpochSampler(10, seed=3)
    full.set_epoch(2)
    order = list(full)
    full.set_epoch(2, skip=4)
    assert list(full) == order[4:]
    r0, r1 = EpochSampler(10, seed=3, rank=0, world_size=2), EpochSampler(10, seed=3, rank=1, world_size=2)
    r0.set_epoch(2), r1.set_epoch(2)
    assert sorted(list(r0)[:2] + list(r1)[:2]) == sorted(order[:4])


def test_config_errors_name_the_allowed_values():
    with pytest.raises(FinetuneError, match="standard"):
        FinetuneConfig(augment="heavy").validate()
    with pytest.raises(FinetuneError, match="number"):
        FinetuneConfig(strategy="cached", unfreeze="all").validate()
    with pytest.raises(FinetuneError, match="checkpoint"):
        FinetuneConfig(resume=True).validate()


def test_auto_mode_rule():
    assert choose_mode({"a": 5, "b": 100}, device="cpu")[0] == "probe"
    assert choose_mode({"a": 500, "b": 500}, device="cpu")[0] == "finetune"
    assert choose_mode({"a": 50_000, "b": 50_000}, device="cpu")[0] == "probe"
    assert choose_mode({"a": 50_000, "b": 50_000}, device="cuda")[0] == "finetune"


# --------------------------------------------------------------------------------- resume


def _resume_config(ckpt: Path, **kw) -> FinetuneConfig:
    base = dict(epochs=2, head_epochs=1, unfreeze="all", batch_size=4, augment="standard", mixup=0.2,
                checkpoint_dir=str(ckpt), checkpoint_every=2, seed=7, lr=5e-3, patience=None)
    base.update(kw)
    return FinetuneConfig(**base)


class _Crash(RuntimeError):
    pass


def test_resume_after_crash_ends_where_an_uninterrupted_run_ends(tiny_image_folder, tiny_backbone, tmp_path):
    ims = _imageset(tiny_image_folder, val_every=4)  # 13 train images -> 4 steps per epoch
    reference_fit = finetune(ims, _resume_config(tmp_path / "ref"), backbone=tiny_backbone)
    reference, ref_hist = reference_fit.model, reference_fit.history

    def crash(info):
        if info.global_step == 7:  # mid-epoch 2 (4 steps per epoch), one step after the step-6 checkpoint
            raise _Crash()

    with pytest.raises(_Crash):
        finetune(ims, _resume_config(tmp_path / "run"), backbone=tiny_backbone, on_step=crash)
    resumed_fit = finetune(ims, _resume_config(tmp_path / "run", resume=True), backbone=tiny_backbone)
    resumed, hist = resumed_fit.model, resumed_fit.history
    ref_state, res_state = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)
    assert [r.get("train_loss") for r in hist] == [r.get("train_loss") for r in ref_hist]
    # A checkpoint from another run is refused with a clear message.
    with pytest.raises(FinetuneError, match="different run"):
        finetune(ims, _resume_config(tmp_path / "run", resume=True, lr=1e-3), backbone=tiny_backbone)


def test_the_probe_comes_back_when_no_epoch_beats_it_on_validation(tiny_image_folder, tiny_backbone):
    ims = _imageset(tiny_image_folder, val_every=3)
    # A learning rate this large wrecks the network in one step: validation must keep the probe.
    cfg = FinetuneConfig(epochs=2, head_epochs=0, unfreeze="all", batch_size=4, lr=50.0, grad_clip=None, warmup_frac=0.0,
                         schedule="constant", augment="none", patience=None, seed=0)
    model_fit = finetune(ims, cfg, backbone=tiny_backbone)
    model, hist = model_fit.model, model_fit.history
    assert model_fit.best_epoch == 0
    assert all((r["val_acc"], -r["val_loss"]) < (hist[0]["val_acc"], -hist[0]["val_loss"]) for r in hist[1:])
    # the returned model is the starting point: the backbone's weights are the pretrained ones
    start = tiny_backbone.state_dict()
    back = model.backbone.state_dict()
    assert all(torch.equal(start[k], back[k]) for k in start)
    # ... and it scores what epoch 0 scored
    from transferkit.finetune.loop import _load_eval_pixels

    val = ims.where_split("val")
    with torch.no_grad():
        logits = model(_load_eval_pixels(val, model.spec).float() / 255)
    loss = torch.nn.functional.cross_entropy(logits, torch.as_tensor(val.labels)).item()
    assert loss == pytest.approx(hist[0]["val_loss"], rel=1e-4, abs=1e-5)


def test_resume_never_restores_a_best_checkpoint_left_by_another_run(tiny_image_folder, tiny_backbone, tmp_path):
    folder = tmp_path / "ckpt"
    # Run A (with validation) leaves best.pt in the folder.
    finetune(_imageset(tiny_image_folder, val_every=4), _resume_config(folder, seed=1), backbone=tiny_backbone)
    assert (folder / "best.pt").is_file()
    # Run B (no validation, another seed) uses the same folder, crashes, and resumes.
    ims = _imageset(tiny_image_folder)
    reference_fit = finetune(ims, _resume_config(tmp_path / "ref"), backbone=tiny_backbone)
    reference, _ = reference_fit.model, reference_fit.history

    def crash(info):
        if info.global_step == 7:
            raise _Crash()

    with pytest.raises(_Crash):
        finetune(ims, _resume_config(folder), backbone=tiny_backbone, on_step=crash)
    resumed_fit = finetune(ims, _resume_config(folder, resume=True), backbone=tiny_backbone)
    resumed, _ = resumed_fit.model, resumed_fit.history
    ref_state, res_state = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)


def test_patience_stops_early_even_while_the_probe_stays_best(tiny_image_folder, tiny_backbone, monkeypatch):
    import transferkit.finetune.loop as loop

    scores = iter([(1.0, 0.1)] + [(0.9, 0.5)] * 10)  # epoch 0 (the probe), then fine-tuned epochs, all worse

    def scripted(run, batch_size=64):
        acc, loss = next(scores)
        return {"val_acc": acc, "val_loss": loss}

    monkeypatch.setattr(loop, "evaluate", scripted)
    cfg = FinetuneConfig(epochs=6, head_epochs=0, unfreeze=1, batch_size=8, augment="none", patience=2, seed=0)
    model_fit = finetune(_imageset(tiny_image_folder, val_every=3), cfg, backbone=tiny_backbone)
    hist = model_fit.history
    assert [r["epoch"] for r in hist] == [0, 1, 2, 3]  # epoch 1 sets the fine-tuned best; 2 and 3 do not beat it
    assert model_fit.best_epoch == 0


_KILL_SCRIPT = """
import os, signal, sys
import numpy as np
from pathlib import Path
from transferkit.backbones import create_backbone
from transferkit.data.imageset import ImageSet
from transferkit.finetune import FinetuneConfig, finetune

folder, ckpt = Path(sys.argv[1]), sys.argv[2]
import torch
torch.set_num_threads(1)  # as the test process: bit-exact resume needs the same kernels and thread count
paths = sorted(folder.glob("*/*.jpg"))
names = sorted({p.parent.name for p in paths})
ims = ImageSet(paths, np.array([names.index(p.parent.name) for p in paths]), names)
cfg = FinetuneConfig(epochs=2, head_epochs=1, batch_size=4, augment="strong", checkpoint_dir=ckpt,
                     checkpoint_every=3, seed=1, lr=5e-3, patience=None)

def kill(info):
    if info.global_step == 7:
        os.kill(os.getpid(), signal.SIGKILL)

finetune(ims, cfg, backbone=create_backbone("test_efficientnet", weights="none", image_size=32), on_step=kill)
"""


def test_resume_after_kill_9_in_a_subprocess(tiny_image_folder, tiny_backbone, tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tiny_image_folder), str(tmp_path / "ck")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (tmp_path / "ck" / "last.pt").is_file()
    assert not [p for p in (tmp_path / "ck").iterdir() if p.name.startswith(".")]  # no half-written files
    ims = _imageset(tiny_image_folder)
    kw = dict(epochs=2, head_epochs=1, batch_size=4, augment="strong", checkpoint_every=3, seed=1, lr=5e-3, patience=None)
    resumed_fit = finetune(ims, FinetuneConfig(checkpoint_dir=str(tmp_path / "ck"), resume=True, **kw), backbone=tiny_backbone)
    resumed, _ = resumed_fit.model, resumed_fit.history
    reference_fit = finetune(ims, FinetuneConfig(**kw), backbone=tiny_backbone)
    reference, _ = reference_fit.model, reference_fit.history
    ref_state, res_state = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)


# ------------------------------------------------------------------- lr-find, TTA, bundle, CLI


def test_lr_find_sweeps_and_plots(tiny_image_folder, tiny_backbone, tmp_path):
    res = lr_find(_imageset(tiny_image_folder), FinetuneConfig(batch_size=6, augment="none"), backbone=tiny_backbone,
                  start_lr=1e-5, end_lr=10.0, steps=12)
    assert 3 <= len(res.lrs) <= 12 and all(a < b for a, b in zip(res.lrs, res.lrs[1:]))
    assert res.lrs[0] <= res.suggestion <= res.min_loss_lr
    out = plot_lr_find(res, tmp_path / "lr.png")
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_tta_flip_is_invariant_for_a_symmetric_input_and_averages_views():
    class Asym(torch.nn.Module):
        def forward(self, x):  # logit depends on the left half only
            left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
            return torch.stack([left, -left], 1) * 10

    x = torch.rand(2, 3, 8, 8)
    p_none = tta_predict_proba(Asym(), x, "none")
    p_flip = tta_predict_proba(Asym(), x, "flip")
    p_mirror = tta_predict_proba(Asym(), torch.flip(x, dims=[-1]), "flip")
    assert torch.allclose(p_flip, p_mirror, atol=1e-6) and not torch.allclose(p_none, p_flip)
    assert torch.allclose(p_flip.sum(1), torch.ones(2))
    assert tta_predict_proba(Asym(), x, "flip-zoom").shape == (2, 2)


def test_finetuned_model_round_trips_through_a_bundle(tiny_image_folder, tiny_backbone, tmp_path):
    from transferkit.classifier.bundle import load_bundle, save_bundle

    cfg = FinetuneConfig(epochs=1, head_epochs=0, batch_size=6, augment="light")
    model_fit = finetune(_imageset(tiny_image_folder), cfg, backbone=tiny_backbone)
    model, history = model_fit.model, model_fit.history
    save_bundle(tmp_path / "b", model, metrics={"history": history}, config=cfg, include_backbone=True)
    loaded = load_bundle(tmp_path / "b")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)


def test_cli_lr_find(tiny_image_folder, tmp_path):
    from transferkit.cli.main import main

    out = tmp_path / "lr.png"
    code = main(["lr-find", str(tiny_image_folder), "--backbone", "test_efficientnet", "--weights", "none",
                 "--image-size", "32", "--steps", "8", "--batch-size", "6", "--plot", str(out), "--format", "json"])
    assert code == 0 and out.is_file()
    assert main(["lr-find", str(tmp_path / "missing"), "--backbone", "test_efficientnet", "--weights", "none"]) == 1


def test_train_mode_finetune_and_auto_through_train_config(tiny_image_folder, tmp_path):
    from transferkit.classifier.bundle import load_bundle
    from transferkit.pipeline.train import TrainConfig, train

    cfg = TrainConfig(data=str(tiny_image_folder), backbone="test_efficientnet", weights="none", image_size=32, mode="finetune",
                      out=str(tmp_path / "b"), val=0.2, test=0.2, batch_size=4, report=True,
                      finetune=FinetuneConfig(epochs=2, head_epochs=1, augment="light"), tta="flip")
    result = train(cfg)
    assert result.metrics["mode"] == "finetune" and result.metrics["tta"] == "flip"
    assert result.evaluation.metrics["tta"] == "flip"  # the held-out scoring itself averaged the mirror views
    assert [r["epoch"] for r in result.metrics["history"]] == [0, 1, 2]
    assert 0.0 <= result.metrics["accuracy"] <= 1.0
    assert (tmp_path / "b" / "report" / "curves.png").is_file()
    loaded = load_bundle(tmp_path / "b")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.model.network()(x), atol=1e-5)
    with pytest.raises(FinetuneError, match="augment"):
        train(TrainConfig(data=str(tiny_image_folder), backbone="test_efficientnet", weights="none", mode="finetune",
                          finetune=FinetuneConfig(augment="bogus")))
    # 6 images per class: --mode auto picks the probe and says why.
    auto = train(TrainConfig(data=str(tiny_image_folder), backbone="test_efficientnet", weights="none", image_size=32, mode="auto",
                             val=0.2, test=0.2, cache=False))
    assert auto.metrics["auto"]["mode"] == "probe" and "smallest class" in auto.metrics["auto"]["reason"]


def test_auto_candidates_share_one_trunk_cache_and_validation_picks(tiny_image_folder, tiny_backbone, monkeypatch, tmp_path):
    import transferkit.finetune.loop as loop
    from transferkit.pipeline.auto import auto_finetune_config, auto_lr_candidates
    from transferkit.pipeline.finetune import train_finetune
    from transferkit.pipeline.train import TrainConfig

    calls = []
    real_cache = loop._cache_trunk
    monkeypatch.setattr(loop, "_cache_trunk", lambda *a, **k: calls.append(1) or real_cache(*a, **k))
    base = auto_finetune_config("cpu", unfreeze=1, cached_views=2, epochs=2, batch_size=4)
    assert auto_lr_candidates(base) == (3e-4, 2e-3) and auto_lr_candidates(dataclasses.replace(base, strategy="full")) == (base.lr,)
    # val=0: the training images lose 15 % to a held-out part that chooses between the candidates.
    cfg = TrainConfig(data=str(tiny_image_folder), backbone="test_efficientnet", weights="none", image_size=32, mode="finetune",
                      val=0.0, test=0.2, batch_size=4, cache=False, out=None)
    result = train_finetune(cfg, backbone=tiny_backbone, base=base, lrs=(1e-3, 60.0), small_data_rule=False)  # the choice itself
    table = result.metrics["finetune"]["candidates"]
    assert [row["lr"] for row in table] == [1e-3, 60.0] and sum(bool(row.get("chosen")) for row in table) == 1
    chosen = next(row for row in table if row.get("chosen"))
    assert (chosen["val_acc"], -chosen["val_loss"]) == max((row["val_acc"], -row["val_loss"]) for row in table)
    assert result.metrics["finetune"]["config"]["lr"] == chosen["lr"] and result.metrics["finetune"]["config"]["checkpoint_dir"] is None
    # the returned model and history are the chosen candidate's
    kept = next(r for r in result.metrics["history"] if r["epoch"] == result.metrics["finetune"]["best_epoch"])
    assert (kept["val_acc"], kept["val_loss"]) == (chosen["val_acc"], chosen["val_loss"])
    assert len(calls) == 1  # the second candidate reused the first one's trunk activations (in memory)
    images = result.metrics["images"]
    assert images["val"] >= 2 and images["train"] + images["val"] + images["test"] == 18
    assert "held out" in result.metrics["finetune"]["chosen_on"]
    # With a checkpoint folder each candidate checkpoints in its own subfolder, trunk activations included.
    ckpt = tmp_path / "ckpt"
    train_finetune(cfg, backbone=tiny_backbone, base=auto_finetune_config("cpu", unfreeze=1, cached_views=2, epochs=1,
                   batch_size=4, checkpoint_dir=str(ckpt)), lrs=(1e-3, 2e-3))
    for i in (0, 1):
        assert (ckpt / f"candidate-{i}" / "last.pt").is_file() and list((ckpt / f"candidate-{i}").glob("trunk-*.pt"))
    assert len(calls) == 2  # one more trunk pass for the new run, shared by its two candidates


def test_auto_falls_back_to_the_probe_on_all_training_images_when_no_epoch_beats_it(tmp_path):
    from transferkit.pipeline.train import TrainConfig, finetune_recipe, train

    # Two classes drawn from the same colours (nothing to learn) and one candidate (the user fixed lr)
    # so large that its logits explode: validation keeps the probe's calmer guesses.
    root = _two_colour_folder(tmp_path / "data", per_class=40, same_colour=True)
    cfg = TrainConfig(data=str(root), backbone="test_efficientnet", weights="none", image_size=32, mode="auto", val=0.2, test=0.2,
                      batch_size=8, cache=False, out=str(tmp_path / "m"), report=False, device="cpu",
                      finetune=finetune_recipe("auto", "cpu", lr=60.0, epochs=1, schedule="constant", grad_clip=None, warmup_frac=0.0),
                      lr_candidates=(60.0,))
    result = train(cfg)
    assert result.metrics["auto"]["mode"] == "probe" and "no fine-tune was clearly better than the probe" in result.metrics["auto"]["reason"]
    compared = {c["name"]: c for c in result.metrics["auto"]["candidates"]}
    assert compared["probe"]["chosen"] and compared["probe"]["n"] == 16  # scored on the 16 validation images
    assert compared["fine-tuned"]["versus"] == "probe" and {"b", "c", "p_better"} <= set(compared["fine-tuned"]["comparison"])
    assert "McNemar" in result.metrics["auto"]["rule"]
    assert result.metrics.get("mode") != "finetune" and result.metrics["head"]["type"] == "logistic"
    assert result.metrics["images"] == {"train": 48, "val": 16, "test": 16}
    assert "auto_finetune_tried" in result.metrics["timings"]
    assert all("chosen" not in c for c in result.metrics["auto_finetune_candidates"])
    import json

    meta = json.loads((tmp_path / "m" / "bundle.json").read_text())  # written once, by the probe
    assert meta["metrics"]["head"]["type"] == "logistic" and "finetune" not in meta["metrics"] and meta["config"]["mode"] == "probe"


def _two_colour_folder(root: Path, per_class: int, same_colour: bool = False) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, colour in enumerate(((200, 40, 40), (200, 40, 40) if same_colour else (40, 40, 200))):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(np.array(colour) + rng.normal(0, 30, (24, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"{i}.jpg")
    return root


def test_cached_strategy_resumes_exactly_and_reuses_the_trunk_cache(tiny_image_folder, tiny_backbone, tmp_path):
    ims = _imageset(tiny_image_folder)
    kw = dict(strategy="cached", unfreeze=2, cached_views=2, epochs=2, head_epochs=1, batch_size=4, lr=5e-3, seed=3,
              checkpoint_every=3, patience=None)
    reference_fit = finetune(ims, FinetuneConfig(**kw), backbone=tiny_backbone)
    reference, _ = reference_fit.model, reference_fit.history

    def crash(info):
        if info.global_step == 6:
            raise _Crash()

    with pytest.raises(_Crash):
        finetune(ims, FinetuneConfig(checkpoint_dir=str(tmp_path), **kw), backbone=tiny_backbone, on_step=crash)
    caches = [p for p in tmp_path.glob("trunk-*.pt") if not p.name.startswith("trunk-val-")]
    assert len(caches) == 1
    stamp = caches[0].stat().st_mtime_ns
    resumed_fit = finetune(ims, FinetuneConfig(checkpoint_dir=str(tmp_path), resume=True, **kw), backbone=tiny_backbone)
    resumed, _ = resumed_fit.model, resumed_fit.history
    assert caches[0].stat().st_mtime_ns == stamp  # loaded, not rebuilt
    ref_state, res_state = reference.state_dict(), resumed.state_dict()
    assert all(torch.equal(ref_state[k], res_state[k]) for k in ref_state)


def test_cli_train_finetune_then_evaluate_with_tta(tiny_image_folder, tmp_path):
    import json

    from transferkit.cli.main import main

    out = tmp_path / "model"
    code = main(["train", str(tiny_image_folder), "--mode", "finetune", "--backbone", "test_efficientnet", "--weights", "none",
                 "--out", str(out), "--epochs", "1", "--head-epochs", "0", "--batch-size", "6", "--augment", "light",
                 "--no-report", "--format", "json", "--val", "0.2", "--test", "0.2"])
    assert code == 0
    meta = json.loads((out / "bundle.json").read_text())
    assert meta["include_backbone"] is True and meta["metrics"]["mode"] == "finetune"
    assert meta["config"]["finetune"]["epochs"] == 1
    code = main(["evaluate", str(out), str(tiny_image_folder), "--tta", "flip", "--out", str(tmp_path / "ev"), "--format", "json"])
    assert code == 0
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["tta"] == "flip"
    assert main(["evaluate", str(out), str(tiny_image_folder), "--tta", "mirror"]) != 0


def test_trunk_cache_key_changes_when_an_image_is_edited_in_place(tiny_image_folder, tmp_path):
    import shutil

    from transferkit.backbones import create_backbone
    from transferkit.finetune.loop import _trunk_cache_key

    folder = tmp_path / "copy"
    shutil.copytree(tiny_image_folder, folder)
    ims = _imageset(folder)
    spec = create_backbone("test_efficientnet", weights="none", image_size=32).spec
    cfg = FinetuneConfig(strategy="cached")
    before = _trunk_cache_key(cfg, ims, spec)
    assert _trunk_cache_key(cfg, ims, spec) == before
    edited = ims.paths[0]
    data = edited.read_bytes()
    edited.write_bytes(data + b"\0")  # same path, new content: cached activations are stale
    assert _trunk_cache_key(cfg, ims, spec) != before


def test_cli_auto_mode_on_cpu_tries_two_learning_rates_and_says_what_it_compared(tmp_path, capsys):
    from transferkit.cli.main import main

    root = _two_colour_folder(tmp_path / "data", per_class=34)  # auto's rule needs >= 20 training images per class
    code = main(["train", str(root), "--mode", "auto", "--backbone", "test_efficientnet", "--weights", "none",
                 "--device", "cpu", "--epochs", "1", "--batch-size", "16", "--no-report", "--no-cache", "--out", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "--mode auto chose" in out
    assert "candidate lr 0.0003" in out and "candidate lr 0.002" in out
    # every model compared on the same validation images, one kept, with the paired test against the probe
    flat = " ".join(out.replace("│", " ").split())  # the table wraps long cells
    assert "compared: probe" in flat and "compared: fine-tuned" in flat and flat.count("<- kept") == 1 and "vs probe: +" in flat


def test_mode_finetune_that_keeps_epoch_0_ends_with_the_probe_modes_head(tiny_image_folder):
    """Validation kept the probe LP-FT started from: the model is then the probe --mode probe fits (on every
    training image, validation included), not the one fitted on the training part alone."""
    from transferkit.pipeline.train import TrainConfig, train

    common = dict(data=str(tiny_image_folder), backbone="test_efficientnet", weights="none", image_size=32, val=0.3, test=0.2,
                  batch_size=4, cache=False, report=False)
    tuned = train(TrainConfig(mode="finetune", finetune=FinetuneConfig(epochs=1, head_epochs=0, lr=1e-12, augment="none"), **common))
    probe = train(TrainConfig(mode="probe", **common))
    assert tuned.metrics["finetune"]["best_epoch"] == 0
    assert "refitted on all" in tuned.metrics["finetune"]["note"]
    assert tuned.images["val"] > 0 and tuned.evaluation.paths == probe.evaluation.paths
    assert np.allclose(tuned.evaluation.probs, probe.evaluation.probs, atol=1e-5)


def test_mode_finetune_without_a_test_split_keeps_the_probe_it_validated(tiny_image_folder):
    """With no test split the validation images are the evaluation: the kept probe is not refitted on them."""
    from transferkit.pipeline.train import TrainConfig, train

    tuned = train(TrainConfig(data=str(tiny_image_folder), backbone="test_efficientnet", weights="none", image_size=32, val=0.3, test=0.0,
                              batch_size=4, cache=False, report=False, mode="finetune",
                              finetune=FinetuneConfig(epochs=1, head_epochs=0, lr=1e-12, augment="none")))
    assert tuned.metrics["finetune"]["best_epoch"] == 0 and tuned.split == "val"
    assert "validation images are the evaluation" in tuned.metrics["finetune"]["note"]


@pytest.mark.parametrize("engine", ["onnxruntime", "auto"])
def test_flip_tta_on_the_engine_matches_the_whole_network_views(tiny_image_folder, tiny_backbone, engine, monkeypatch):
    """evaluate_model(tta="flip") averages the image's and its mirror's probabilities on the feature engine;
    they are the eager tta_predict_proba's to float rounding, and the mirror features have their own cache key."""
    from transferkit.classifier.bundle import ClassifierModel
    from transferkit.evaluate.model import evaluate_model
    from transferkit.evaluate.tta import predict_proba
    from transferkit.features.extract import model_cache_key

    images = _imageset(tiny_image_folder)
    torch.manual_seed(0)
    head = torch.nn.Linear(tiny_backbone.num_features, len(images.class_names))
    with torch.no_grad():
        head.weight.mul_(300.0)  # confident logits: the mirror view moves the probabilities visibly
    model = ClassifierModel(tiny_backbone, head, images.class_names).eval()
    from transferkit.features import select

    built = []
    real = select.create_engine
    monkeypatch.setattr(select, "create_engine", lambda *a, **k: built.append(1) or real(*a, **k))
    ev = evaluate_model(model, images, engine=engine, tta="flip", cache=False)
    assert len(built) == 1  # one engine serves both views
    eager = predict_proba(model, images, tta="flip")
    plain = predict_proba(model, images, tta="none")
    assert ev.metrics["tta"] == "flip"
    if engine != "auto":  # auto may choose eager torch on some machine; a named engine is what it says
        assert ev.metrics["features"]["engine"] == engine
    mirror_effect = np.abs(eager - plain).max()
    assert mirror_effect > 0.01  # the mirror views really count
    assert np.abs(ev.probs - eager).max() < mirror_effect / 50
    assert model_cache_key(tiny_backbone, view="mirror") != model_cache_key(tiny_backbone)


def _forced_past_epoch_0(monkeypatch, kept: dict):
    """Make validation's choice a fine-tuned epoch, whatever it scored (what the small-data rule must then judge)."""
    import transferkit.pipeline.finetune as pf

    real = pf.finetune_candidates

    def forced(*args, **kwargs):
        fit, cfg, table = real(*args, **kwargs)
        fit.best_epoch = max(1, fit.best_epoch or 0)
        kept["net"] = fit.model
        return fit, cfg, table

    monkeypatch.setattr(pf, "finetune_candidates", forced)


def _finetune_cfg(root, tmp_path):
    from transferkit.pipeline.train import TrainConfig, finetune_recipe

    return TrainConfig(data=str(root), backbone="test_efficientnet", weights="none", image_size=32, mode="finetune", val=0.2, test=0.2,
                       batch_size=8, cache=False, out=str(tmp_path / "m"), report=False, device="cpu",
                       finetune=finetune_recipe("finetune", "cpu", strategy="cached", unfreeze=1, cached_views=1, epochs=1, lr=5e-3))


def test_small_data_keeps_the_probe_unless_the_fine_tune_wins_clearly(tmp_path, monkeypatch):
    from transferkit.classifier.bundle import load_bundle
    from transferkit.pipeline.probe import build_backbone
    from transferkit.pipeline.train import train

    kept = {}
    _forced_past_epoch_0(monkeypatch, kept)
    root = _two_colour_folder(tmp_path / "data", per_class=12)  # 7 training images a class: small data
    config = _finetune_cfg(root, tmp_path)
    result = train(config)
    ft = result.finetune
    assert ft.best_epoch == 0 and "small data" in ft.note and "not clearly better, so the probe was kept" in ft.note
    saved = load_bundle(tmp_path / "m")
    fresh = build_backbone(config)  # the pretrained (here: seeded) backbone, not the fine-tuned one
    tuned = dict(kept["net"].backbone.named_parameters())
    same_as_fresh = all(torch.equal(p, dict(fresh.named_parameters())[n]) for n, p in saved.backbone.named_parameters())
    differs_from_tuned = any(not torch.equal(p, tuned[n]) for n, p in saved.backbone.named_parameters())
    assert same_as_fresh and differs_from_tuned
    assert result.evaluation is not None and result.split == "test"


def test_small_data_keeps_a_fine_tune_that_wins_clearly_and_larger_data_trusts_validation(tmp_path, monkeypatch):
    import transferkit.evaluate.compare as compare
    from transferkit.pipeline.train import train

    kept = {}
    _forced_past_epoch_0(monkeypatch, kept)
    real = compare.mcnemar
    monkeypatch.setattr(compare, "mcnemar", lambda a, b: real(np.ones(12, bool), np.zeros(12, bool)))  # 12 won, 0 lost
    small = train(_finetune_cfg(_two_colour_folder(tmp_path / "small", per_class=12), tmp_path / "a"))
    assert small.finetune.best_epoch == 1 and "clearly better, so it was kept" in small.finetune.note
    monkeypatch.setattr(compare, "mcnemar", real)
    large = train(_finetune_cfg(_two_colour_folder(tmp_path / "large", per_class=40), tmp_path / "b"))  # 24 a class: not small
    assert large.finetune.best_epoch == 1 and "small data" not in (large.finetune.note or "")
