"""--mode auto's decision: paired tests, out-of-fold probe scores, weight averaging, the time budget, the record it leaves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune import _two_colour_folder  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_mcnemar_counts_only_the_images_the_two_disagree_on():
    from scipy.stats import binomtest

    from transferkit.evaluate.compare import mcnemar

    rng = np.random.default_rng(1)
    for _ in range(20):
        a, z = rng.random(200) < rng.uniform(0.6, 0.95), rng.random(200) < rng.uniform(0.6, 0.95)
        cmp = mcnemar(a, z)
        assert cmp.b == int((a & ~z).sum()) and cmp.c == int((~a & z).sum()) and cmp.n == 200
        if cmp.b + cmp.c:
            assert cmp.p_better == pytest.approx(binomtest(cmp.b, cmp.b + cmp.c, 0.5, alternative="greater").pvalue, rel=1e-9)
            assert cmp.p_two_sided == pytest.approx(binomtest(cmp.b, cmp.b + cmp.c, 0.5).pvalue, rel=1e-9)
    same = np.array([True, False, True])
    assert mcnemar(same, same).p_better == 1.0 and not mcnemar(same, same).clearly_better(0.05)
    # 12 wins, 2 losses: clearly better; 6 wins, 4 losses: not
    win = mcnemar(np.r_[np.ones(12, bool), np.zeros(2, bool)], np.r_[np.zeros(12, bool), np.ones(2, bool)])
    assert win.clearly_better(0.05) and win.gain == pytest.approx(10 / 14)
    assert not mcnemar(np.r_[np.ones(6, bool), np.zeros(4, bool)], np.r_[np.zeros(6, bool), np.ones(4, bool)]).clearly_better(0.05)
    with pytest.raises(ValueError):
        mcnemar(np.ones(3, bool), np.ones(4, bool))


def test_decide_keeps_the_baseline_unless_a_candidate_wins_clearly():
    from transferkit.pipeline.auto import decide
    from transferkit.pipeline.result import AutoCandidate

    base = np.r_[np.ones(80, bool), np.zeros(20, bool)]
    slightly = base.copy()
    slightly[80:83] = True  # 3 more right: not enough
    clearly = base.copy()
    clearly[80:95] = True  # 15 more right, none lost
    rows = [AutoCandidate("probe", "model", accuracy=0.80), AutoCandidate("a", "model", accuracy=0.83),
            AutoCandidate("b", "model", accuracy=0.95, log_loss=0.2), AutoCandidate("c", "model", note="skipped")]
    assert decide(rows[:2], base, {"a": slightly}) == "probe" and rows[0].chosen and not rows[1].chosen
    assert decide(rows, base, {"a": slightly, "b": clearly}) == "b"
    assert [r.chosen for r in rows] == [False, False, True, False]
    assert rows[2].versus == "probe" and rows[2].comparison["b"] == 15 and rows[2].comparison["c"] == 0
    assert rows[3].comparison is None  # a skipped row is not tested


def test_logistic_head_out_of_fold_probabilities_are_honest():
    from transferkit.heads import LogisticHead

    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 1, (60, 5)), rng.normal(1.0, 1, (60, 5))].astype(np.float32)
    y = np.r_[np.zeros(60, int), np.ones(60, int)]
    head = LogisticHead(random_state=0).fit(X, y)
    assert head.oof_proba_.shape == (120, 2) and np.array_equal(head.oof_index_, np.arange(120))
    oof_acc = float((head.oof_proba_.argmax(1) == y).mean())
    assert oof_acc == pytest.approx(head.cv_summary["accuracy"])  # the score C was chosen with, image by image
    # out of fold: worse than (or equal to) the in-sample fit, which saw every row
    assert oof_acc <= float((head.predict(X) == y).mean())
    # a row's out-of-fold prediction does not depend on its own label
    y2 = y.copy()
    y2[0] = 1 - y2[0]
    p_flipped = LogisticHead(random_state=0, C=None).fit(X, y2).oof_proba_[0]
    assert abs(p_flipped[1] - head.oof_proba_[0][1]) < 0.2
    # with given validation data there is no cross-validation and no out-of-fold record
    assert not hasattr(LogisticHead().fit(X[:80], y[:80], X[80:], y[80:]), "oof_proba_")


def test_cv_subsample_bounds_the_rows_used_to_choose_C():
    from transferkit.heads import LogisticHead
    from transferkit.heads.logistic import cv_subsample

    y = np.r_[np.zeros(900, int), np.ones(100, int)]
    rows = cv_subsample(y, 200, seed=0)
    assert len(rows) == 200 and np.all(np.diff(rows) > 0)
    assert (y[rows] == 1).sum() == 20  # stratified
    assert np.array_equal(cv_subsample(y, 5000, 0), np.arange(1000))
    rng = np.random.default_rng(0)
    X = (rng.normal(0, 1, (1000, 4)) + y[:, None]).astype(np.float32)
    head = LogisticHead(cv_max_rows=200).fit(X, y)
    assert len(head.oof_index_) == 200 and head.model_.coef_.shape == (1, 4)


def test_head_rows_pool_validation_only_when_a_test_split_evaluates():
    from transferkit.pipeline.probe import head_rows

    idx = {"train": np.array([0, 2]), "val": np.array([1]), "test": np.array([3])}
    assert head_rows(idx).tolist() == [0, 1, 2]
    # no test split: validation holds the evaluation, so it must not shape the head
    assert head_rows({"train": np.array([0, 2]), "val": np.array([1]), "test": np.array([], int)}).tolist() == [0, 2]


def test_interpolate_weights_is_a_straight_line_between_two_networks():
    from torch import nn

    from transferkit.finetune import interpolate_weights

    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    b[1].num_batches_tracked.fill_(7)
    mid = interpolate_weights(a, b, 0.5)
    assert torch.allclose(mid[0].weight, (a[0].weight + b[0].weight) / 2)
    assert int(mid[1].num_batches_tracked) == 7 and not mid.training
    assert torch.equal(interpolate_weights(a, b, 0.0)[0].weight, a[0].weight)
    assert torch.equal(interpolate_weights(a, b, 1.0)[0].bias, b[0].bias)
    assert torch.equal(b[0].weight, b[0].weight.clone())  # inputs untouched
    with pytest.raises(ValueError, match="architectures"):
        interpolate_weights(a, nn.Sequential(nn.Linear(3, 5)), 0.5)
    with pytest.raises(ValueError, match="alpha"):
        interpolate_weights(a, b, 1.5)


def _cfg(root, tmp_path, **kw):
    from transferkit.pipeline.train import TrainConfig, finetune_recipe

    base = dict(data=str(root), backbone="test_efficientnet", weights="none", image_size=32, mode="auto", val=0.2, test=0.2,
                batch_size=8, cache=False, out=str(tmp_path / "m"), report=False, device="cpu",
                finetune=finetune_recipe("auto", "cpu", unfreeze=1, cached_views=1, epochs=1), lr_candidates=(1e-3,))
    base.update(kw)
    return TrainConfig(**base)


def test_auto_skips_the_fine_tune_that_does_not_fit_the_time_budget(tmp_path):
    from transferkit.pipeline.train import train

    root = _two_colour_folder(tmp_path / "data", per_class=40)
    result = train(_cfg(root, tmp_path, time_budget=0.5))
    auto = result.metrics["auto"]
    assert auto["mode"] == "probe" and "time budget" in auto["reason"] and auto["time_budget_s"] == 0.5
    assert result.finetune is None and "auto_finetune_tried" not in result.metrics["timings"]


def test_auto_compares_backbones_on_out_of_fold_predictions_and_records_them(tmp_path):
    from transferkit.pipeline.train import train

    root = _two_colour_folder(tmp_path / "data", per_class=12)  # < 20 per class: probes only
    result = train(_cfg(root, tmp_path, backbone_candidates=("test_efficientnet", "test_byobnet")))
    auto = result.metrics["auto"]
    rows = {c["name"]: c for c in auto["candidates"]}
    together = {"probe test_efficientnet + test_byobnet (features concatenated)", "probe test_efficientnet + test_byobnet (probabilities averaged)"}
    assert set(rows) == {"probe test_efficientnet", "probe test_byobnet"} | together and auto["mode"] == "probe"
    for name in ("probe test_byobnet", *together):  # every candidate scored on the same out-of-fold images, against the configured one
        other = rows[name]
        assert other["stage"] == "backbone" and other["versus"] == "probe test_efficientnet"
        assert other["n"] == rows["probe test_efficientnet"]["n"] == result.images["train"] + result.images["val"]
    kept = [name for name, c in rows.items() if c.get("chosen")]
    assert len(kept) == 1 and kept[0] not in together  # two colours: every probe is perfect, nothing is clearly better
    assert auto["backbone"] == kept[0].split()[-1] == result.config.backbone
    meta = json.loads((tmp_path / "m" / "bundle.json").read_text())
    assert meta["backbone"]["name"] == auto["backbone"]
    assert [c["name"] for c in meta["metrics"]["auto"]["candidates"]] == [c["name"] for c in auto["candidates"]]


def test_auto_writes_the_fine_tuned_network_it_chose(tmp_path, monkeypatch):
    """When a fine-tune wins its paired test, the bundle holds that very network and the record says why."""
    import transferkit.pipeline.auto as auto_mod
    from transferkit.classifier.bundle import load_bundle
    from transferkit.pipeline.result import AutoCandidate
    from transferkit.pipeline.train import train

    kept = {}
    real = auto_mod._model_candidates

    def rigged(config, data, chosen, tuned):
        _, rows, _ = real(config, data, chosen, tuned)  # the real comparison ran on the validation images
        assert {r.name for r in rows} >= {"probe", "fine-tuned"}
        net = tuned.model.network()
        kept["net"] = net
        rows = [AutoCandidate("probe", "model", n=10, accuracy=0.5), AutoCandidate("fine-tuned", "model", n=10, accuracy=1.0,
                log_loss=0.1, versus="probe", comparison={"b": 5, "c": 0, "p_better": 0.03125}, chosen=True)]
        return "fine-tuned", rows, net

    monkeypatch.setattr(auto_mod, "_model_candidates", rigged)
    root = _two_colour_folder(tmp_path / "data", per_class=40)
    result = train(_cfg(root, tmp_path))
    assert result.metrics["auto"]["mode"] == "finetune" and "beat the probe on 10 validation images" in result.metrics["auto"]["reason"]
    assert result.metrics["mode"] == "finetune" and result.split == "test" and result.evaluation is not None
    loaded = load_bundle(tmp_path / "m")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), kept["net"](x), atol=1e-5)


def test_cli_time_budget_is_checked_and_explained(tmp_path, capsys):
    from transferkit.cli.main import main
    from transferkit.cli.train import parse_duration

    assert parse_duration("5m") == 300 and parse_duration("90s") == 90 and parse_duration("1.5h") == 5400
    assert parse_duration("120") == 120 and parse_duration("none") == float("inf")
    code = main(["train", str(tmp_path), "--mode", "auto", "--time-budget", "soon"])
    err = capsys.readouterr().err
    assert code != 0 and "--time-budget 'soon' is not a duration" in err and "Traceback" not in err
    code = main(["train", str(tmp_path), "--backbones", "efficientnet_lite0,efficientnet_lite1"])
    assert code != 0 and "--backbones compares backbones under --mode auto only" in capsys.readouterr().err
