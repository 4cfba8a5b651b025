"""Models of several backbones: how they combine, auto's candidates, their bundles, and every command that meets one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune import _two_colour_folder  # noqa: E402

BACKBONES = ("test_efficientnet", "test_byobnet")


def _linear_head(rng, d: int, k: int):
    from transferkit.classifier.trained import HeadWeights

    cfg = {"type": "sequential", "layers": [{"type": "linear", "in_features": d, "out_features": k, "bias": True}]}
    return HeadWeights(cfg, {"weight": rng.normal(size=(k, d)).astype(np.float32), "bias": rng.normal(size=k).astype(np.float32)})


def test_split_concat_head_sums_to_the_concatenated_probe():
    from transferkit.classifier.multi import combine_logits, head_logits, split_concat_head
    from transferkit.core.errors import BundleError

    rng = np.random.default_rng(0)
    head = _linear_head(rng, 7, 3)
    parts = split_concat_head(head, [4, 3])
    assert [p.config["layers"][0]["in_features"] for p in parts] == [4, 3]
    assert np.array_equal(parts[0].state["bias"], head.state["bias"]) and not parts[1].state["bias"].any()
    X = rng.normal(size=(5, 7)).astype(np.float32)
    whole = head_logits(head, X)
    summed = head_logits(parts[0], X[:, :4]) + head_logits(parts[1], X[:, 4:])
    assert np.allclose(summed, whole, atol=1e-5)
    p = combine_logits("concat", [head_logits(parts[0], X[:, :4]), head_logits(parts[1], X[:, 4:])])
    e = np.exp(whole - whole.max(1, keepdims=True))
    assert np.allclose(p, e / e.sum(1, keepdims=True), atol=1e-6)
    # the numpy path and the head's nn.Module agree
    assert np.allclose(head_logits(head.to_module(), X), whole, atol=1e-5)
    with pytest.raises(BundleError, match="takes 7 features"):
        split_concat_head(head, [4, 4])


def test_ensemble_averages_the_members_probabilities():
    from transferkit.classifier.multi import combine_logits

    a = np.array([[2.0, 0.0], [0.0, 0.0]])
    b = np.array([[0.0, 1.0], [0.0, 3.0]])

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    assert np.allclose(combine_logits("ensemble", [a, b]), (softmax(a) + softmax(b)) / 2)
    assert np.allclose(combine_logits("ensemble", [a, b]).sum(1), 1.0)
    assert not np.allclose(combine_logits("ensemble", [a, b]), combine_logits("concat", [a, b]))


def _members_that_need_each_other(n_per_class: int = 40, seed: int = 0):
    """Four classes; backbone A sees only which pair ({0,1} or {2,3}) an image is in, B only its parity: each
    alone is at best half right, the two together always right."""
    from transferkit.pipeline.combined import MemberFeatures

    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per_class)
    XA = np.c_[(y >= 2) * 3.0 + rng.normal(0, 0.3, len(y)), rng.normal(size=(len(y), 3))].astype(np.float32)
    XB = np.c_[(y % 2) * 3.0 + rng.normal(0, 0.3, len(y)), rng.normal(size=(len(y), 2))].astype(np.float32)

    class Feats:
        def __init__(self, X):
            self.X, self.ok, self.errors, self.stats = X, np.ones(len(X), bool), {}, {"engine": "test", "computed": len(X)}

    class Data:
        labels, split, num_classes = y, np.array(["train"] * len(y)), 4

    return Data, [MemberFeatures("a", Feats(XA), None), MemberFeatures("b", Feats(XB), None)]


def test_combined_candidates_win_their_paired_test_where_each_backbone_alone_cannot():
    from transferkit.pipeline.auto import _correct, _full_proba, _probe_cv, decide
    from transferkit.pipeline.combined import concat_candidate, ensemble_candidate
    from transferkit.pipeline.config import TrainConfig
    from transferkit.pipeline.result import AutoCandidate

    data, members = _members_that_need_each_other()
    config = TrainConfig(seed=0)
    rows_all = np.arange(len(data.labels))
    single, oof = [], []
    for m in members:
        head = _probe_cv(config, m.feats.X, data.labels, rows_all)
        rows = rows_all[head.oof_index_]
        proba = _full_proba(head, head.oof_proba_, 4)
        oof.append((rows, proba))
        correct = _correct(proba, data.labels[rows])
        single.append((AutoCandidate(f"probe {m.name}", "backbone", n=len(rows), accuracy=float(correct.mean()), log_loss=1.0), rows, correct))
    assert all(acc.accuracy < 0.6 for acc, _, _ in single)  # alone: half right at best
    concat = concat_candidate(config, data, members, _probe_cv)
    ensemble = ensemble_candidate(members, oof, data.labels)
    assert concat.row.accuracy > 0.95 and ensemble.row.accuracy > 0.6
    base_row, base_rows, base_correct = single[0]
    order = {r: i for i, r in enumerate(base_rows)}
    correct = {c.row.name: c.correct[np.argsort([order[r] for r in c.rows])] for c in (concat, ensemble)}
    winner = decide([base_row, concat.row, ensemble.row], base_correct, correct)
    assert winner == concat.row.name and concat.row.comparison["p_better"] < 0.05


def test_ensemble_candidate_refuses_members_scored_on_different_images():
    from transferkit.pipeline.combined import ensemble_candidate

    data, members = _members_that_need_each_other(5)
    p = np.full((20, 4), 0.25)
    c = ensemble_candidate(members, [(np.arange(20), p), (np.arange(1, 21), p)], data.labels)
    assert c.correct is None and "different images" in c.row.note


@pytest.fixture(scope="module")
def multi_bundle(tmp_path_factory):
    """A concatenated two-backbone bundle written by ``train --mode auto`` (the choice rigged; the candidates real)."""
    import transferkit.pipeline.auto as auto_mod
    from transferkit.pipeline.train import TrainConfig, train

    tmp = tmp_path_factory.mktemp("multi")
    root = _two_colour_folder(tmp / "data", per_class=12)
    real = auto_mod.decide

    def concat_wins(rows, baseline, correct):
        real(rows, baseline, correct)
        for r in rows:
            r.chosen = "features concatenated" in r.name
        return next(r.name for r in rows if r.chosen)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRANSFERKIT_CACHE_DIR", str(tmp / "cache"))
        mp.setattr(auto_mod, "decide", concat_wins)
        torch.set_num_threads(1)
        result = train(TrainConfig(data=str(root), backbone=BACKBONES[0], backbone_candidates=BACKBONES, weights="none", image_size=32,
                                   mode="auto", val=0.2, test=0.2, batch_size=8, cache=False, out=str(tmp / "m"), report=True, device="cpu"))
    return {"path": tmp / "m", "data": root, "result": result}


def test_auto_saves_the_combined_probe_it_chose_and_explains_it(multi_bundle):
    from transferkit.classifier.multi import TrainedMultiModel

    result, path = multi_bundle["result"], multi_bundle["path"]
    assert isinstance(result.model, TrainedMultiModel) and result.model.combine == "concat"
    auto = result.metrics["auto"]
    assert auto["mode"] == "probe" and "features concatenated" in auto["backbone"] and "fine-tuning" in auto["reason"]
    assert result.finetune is None and result.split == "test" and result.evaluation is not None
    meta = json.loads((path / "bundle.json").read_text())
    assert meta["kind"] == "multi-backbone" and meta["format_version"] == 2 and [m["backbone"] for m in meta["members"]] == list(BACKBONES)
    assert (path / "report" / "report.html").is_file()
    for m in meta["members"]:  # each member is a complete one-backbone bundle, its random weights stored
        member = json.loads((path / m["dir"] / "bundle.json").read_text())
        assert member["backbone"]["name"] == m["backbone"] and member["include_backbone"]


def test_a_loaded_multi_bundle_predicts_what_training_evaluated(multi_bundle):
    from transferkit.classifier.multi import MultiBackboneModel, load_classifier
    from transferkit.data import load_images
    from transferkit.evaluate.model import evaluate_model

    result = multi_bundle["result"]
    model = load_classifier(multi_bundle["path"])
    assert isinstance(model, MultiBackboneModel) and model.combine == "concat" and len(model.members) == 2
    ev = result.evaluation
    images = load_images(multi_bundle["data"])
    keep = np.isin([str(p) for p in images.paths], [str(p) for p in ev.paths])
    again = evaluate_model(model, images.subset(np.flatnonzero(keep)), engine="torch", cache=False)
    order = np.argsort([str(p) for p in again.paths])
    assert np.allclose(again.probs[order], ev.probs[np.argsort([str(p) for p in ev.paths])], atol=1e-4)
    assert again.metrics["features"]["engine"].count("+") == 1 and len(again.metrics["features"]["members"]) == 2


def test_multi_predictions_are_each_backbones_features_combined(multi_bundle):
    from transferkit.classifier.multi import load_classifier
    from transferkit.evaluate.predict import predict_images
    from transferkit.features import extract_features

    model = load_classifier(multi_bundle["path"])
    files = sorted(multi_bundle["data"].rglob("*.jpg"))[:6] + [multi_bundle["data"] / "missing.jpg"]
    preds = predict_images(model, files, top_k=2, engine="torch", cache=False)
    assert not preds[-1].ok and all(p.ok for p in preds[:-1])
    feats = [extract_features(files[:-1], m.backbone, engine="torch", cache=False).X for m in model.members]
    with torch.no_grad():
        logits = sum(m.head(torch.from_numpy(X)).double() for m, X in zip(model.members, feats))
    expected = logits.softmax(1).numpy()
    for p, row in zip(preds, expected):
        assert p.top[0][0] == model.class_names[int(row.argmax())] and p.top[0][1] == pytest.approx(float(row.max()), abs=1e-5)


def test_multi_bundle_refuses_a_tampered_member_and_a_newer_format(multi_bundle, tmp_path):
    import shutil

    from transferkit.classifier.multi import load_classifier
    from transferkit.core.errors import BundleError

    copy = tmp_path / "m"
    shutil.copytree(multi_bundle["path"], copy)
    member = copy / "member-1" / "bundle.json"
    member.write_text(member.read_text().replace('"class_0"', '"class_x"'))
    with pytest.raises(BundleError, match="member-1/bundle.json has sha256"):
        load_classifier(copy)
    shutil.rmtree(copy)
    shutil.copytree(multi_bundle["path"], copy)
    meta = json.loads((copy / "bundle.json").read_text())
    meta["format_version"] = 3
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="Upgrade transferkit"):
        load_classifier(copy)
    meta["format_version"], meta["members"][0]["dir"] = 2, "../elsewhere"
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="outside the bundle"):
        load_classifier(copy)
    meta["members"][0]["dir"] = "member-1"
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="names a member folder twice"):
        load_classifier(copy)
    meta["members"][0]["dir"], meta["members"][0]["backbone"] = "member-0", "test_byobnet"
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="does not match"):
        load_classifier(copy)
    meta["members"][0]["backbone"], meta["format_version"] = "test_efficientnet", 1  # read as one backbone by an older release
    (copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="format version 1 but describes several"):
        load_classifier(copy)


def test_a_part_of_a_concatenated_model_is_not_a_model_on_its_own(multi_bundle, capsys):
    from transferkit.cli.main import main
    from transferkit.core.errors import BundleError

    member = multi_bundle["path"] / "member-1"
    from transferkit.classifier.bundle import load_bundle

    with pytest.raises(BundleError, match="one part of a model"):
        load_bundle(member)
    for argv in (["evaluate", str(member), str(multi_bundle["data"])], ["export", str(member), "--out", str(member.parent / "x.onnx")]):
        assert main(argv) == 1 and "one part of a model" in capsys.readouterr().err
    assert not (member.parent / "x.onnx").exists()


def test_cli_predict_and_evaluate_take_a_multi_bundle_and_one_network_commands_refuse_it(multi_bundle, tmp_path, capsys):
    from transferkit.cli.main import main

    path, data = str(multi_bundle["path"]), str(multi_bundle["data"])
    assert main(["predict", path, data, "--format", "json", "--engine", "torch"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["results"]) == 24 and all(r["predictions"] for r in out["results"])
    assert main(["evaluate", path, data, "--out", str(tmp_path / "ev"), "--format", "json", "--engine", "torch"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["n"] == 24
    assert main(["evaluate", path, data, "--out", str(tmp_path / "ev2"), "--tta", "flip-zoom"]) == 1
    assert "--tta none or flip" in capsys.readouterr().err
    for argv in (["export", path, "--out", str(tmp_path / "m.onnx"), "--int8", "--calibration", data],
                 ["attack", str(next(Path(data).rglob("*.jpg"))), "--model", path, "--untargeted"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "combines 2 members" in err and "--no-combine" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_a_multi_bundle_exports_to_one_graph_that_the_runtime_and_server_run(multi_bundle, tmp_path):
    """fp32 export: one input per member, each preprocessed its own way; the torch-free runtime and the server
    give the bundle's own predictions."""
    from fastapi.testclient import TestClient

    from transferkit.classifier.export import export_model
    from transferkit.classifier.multi import load_classifier
    from transferkit.evaluate.predict import predict_images
    from transferkit.runtime import Runtime
    from transferkit.serve import Limits, create_app

    result = export_model(multi_bundle["path"], tmp_path / "m.onnx")
    meta = result.metadata
    assert meta["format_version"] == 2 and meta["combine"] == "concat" and [m["name"] for m in meta["members"]] == list(BACKBONES)
    assert [i["name"] for i in meta["inputs"]] == ["pixels_0", "pixels_1"] and meta["check"]["max_abs_diff"] < 1e-4
    runtime = Runtime(result.path)
    files = sorted(multi_bundle["data"].rglob("*.jpg"))[:8]
    expected = predict_images(load_classifier(multi_bundle["path"]), files, top_k=2, engine="torch", cache=False)
    got = runtime.predict(files, top_k=2)
    for e, g in zip(expected, got):
        assert g.top[0][0] == e.top[0][0] and g.top[0][1] == pytest.approx(e.top[0][1], abs=1e-4)
    with open(files[0], "rb") as f:  # a stream is read once and decoded for each member
        assert runtime.predict(f, top_k=1)[0].top[0][0] == expected[0].top[0][0]
    client = TestClient(create_app(runtime, Limits()))
    r = client.post("/v1/predict", files={"files": (files[0].name, files[0].read_bytes(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["results"][0]["top"][0]["label"] == expected[0].top[0][0]
    info = client.get("/v1/model").json()
    assert info["members"] == list(BACKBONES) and info["combine"] == "concat"


def test_python_api_loads_a_multi_bundle_and_predicts_arrays_like_files(multi_bundle):
    from PIL import Image

    import transferkit as tk
    from transferkit.core.errors import TransferkitError

    clf = tk.Classifier.load(multi_bundle["path"])
    clf.engine = "torch"
    file = sorted(multi_bundle["data"].rglob("*.jpg"))[0]
    from_file = clf.predict_proba([file])[0]
    from_array = clf.predict_proba([np.asarray(Image.open(file).convert("RGB"))])[0]
    assert np.allclose(from_file, from_array, atol=1e-4) and from_file.sum() == pytest.approx(1.0)
    with pytest.raises(TransferkitError, match="several backbones"):
        tk.attack(clf, file)


def test_training_again_replaces_a_multi_bundle(multi_bundle, tmp_path):
    import shutil

    from transferkit.classifier.multi import TrainedMultiModel, load_trained

    copy = tmp_path / "m"
    shutil.copytree(multi_bundle["path"], copy)
    trained = load_trained(copy)
    assert isinstance(trained, TrainedMultiModel)
    trained.save(copy)  # its own member folders and report are transferkit's: replaced, nothing else touched
    assert load_trained(copy).class_names == trained.class_names and not (copy / "report").exists()
    (copy / "member-0" / "notes.txt").write_text("mine")
    from transferkit.core.errors import BundleError

    with pytest.raises(BundleError, match="notes.txt"):
        trained.save(copy)


def test_no_combine_keeps_one_backbone(tmp_path):
    from transferkit.pipeline.train import TrainConfig, train

    root = _two_colour_folder(tmp_path / "data", per_class=12)
    result = train(TrainConfig(data=str(root), backbone=BACKBONES[0], backbone_candidates=BACKBONES, weights="none", image_size=32,
                               mode="auto", val=0.2, test=0.2, batch_size=8, cache=False, out=None, device="cpu", combine=False))
    assert [c["name"] for c in result.metrics["auto"]["candidates"]] == [f"probe {b}" for b in BACKBONES]


def test_auto_can_keep_the_probe_and_the_fine_tune_side_by_side(tmp_path, monkeypatch):
    """Stage 2's probability average: scored on validation; kept, a bundle of both networks that predicts their mean."""
    import transferkit.pipeline.auto as auto_mod
    from transferkit.classifier.multi import MultiBackboneModel, load_classifier
    from transferkit.pipeline.train import TrainConfig, finetune_recipe, train

    real_ft, real_decide = auto_mod.train_finetune, auto_mod.decide
    seen = {}

    def tuned_beyond_epoch_0(*args, **kwargs):  # the comparison only exists when a fine-tuned epoch was kept
        result = real_ft(*args, **kwargs)
        result.finetune.best_epoch = max(1, result.finetune.best_epoch or 0)
        return result

    def ensemble_wins(rows, baseline, correct):
        real_decide(rows, baseline, correct)
        if rows[0].name != "probe":
            return real_decide(rows, baseline, correct)
        seen["rows"] = {r.name: r for r in rows}
        for r in rows:
            r.chosen = r.name == "probe + fine-tuned (probabilities averaged)"
            if r.chosen:
                r.comparison = {"b": 3, "c": 0, "p_better": 0.125}
        return "probe + fine-tuned (probabilities averaged)"

    monkeypatch.setattr(auto_mod, "train_finetune", tuned_beyond_epoch_0)
    monkeypatch.setattr(auto_mod, "decide", ensemble_wins)
    root = _two_colour_folder(tmp_path / "data", per_class=40)
    result = train(TrainConfig(data=str(root), backbone=BACKBONES[0], backbone_candidates=(BACKBONES[0],), weights="none", image_size=32,
                               mode="auto", val=0.2, test=0.2, batch_size=8, cache=False, out=str(tmp_path / "m"), report=False, device="cpu",
                               finetune=finetune_recipe("auto", "cpu", unfreeze=1, cached_views=1, epochs=1), lr_candidates=(1e-3,)))
    row = seen["rows"]["probe + fine-tuned (probabilities averaged)"]
    assert row.n == seen["rows"]["probe"].n and not row.note and 0.0 <= row.accuracy <= 1.0
    assert result.metrics["auto"]["mode"] == "finetune" and result.evaluation is not None and result.split == "test"
    model = load_classifier(tmp_path / "m")
    assert isinstance(model, MultiBackboneModel) and model.combine == "ensemble" and len(model.members) == 2
    probe_net, tuned_net = model.members
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = (probe_net(x).double().softmax(1) + tuned_net(x).double().softmax(1)) / 2
        feats = [m.forward_features(x).numpy() for m in model.members]
    assert np.allclose(model.probabilities(feats), expected.numpy(), atol=1e-5)


def test_the_runtime_refuses_what_does_not_fit_a_multi_member_graph_in_one_line(multi_bundle, tmp_path):
    import onnx

    from transferkit.classifier.export import export_model
    from transferkit.runtime import Runtime
    from transferkit.runtime.decode import ImageInputError
    from transferkit.runtime.model import METADATA_KEY, ModelFileError

    path = export_model(multi_bundle["path"], tmp_path / "m.onnx").path
    runtime = Runtime(path)
    file = sorted(multi_bundle["data"].rglob("*.jpg"))[0]
    with open(file, "rb") as f:
        f.read(10)  # a stream someone has looked into: read from its start, as for one backbone
        assert runtime.predict(f, top_k=1)[0].ok
    one = runtime.preprocess(file)
    assert isinstance(one, tuple) and len(one) == 2
    with pytest.raises(ImageInputError, match="a list of 2 pixel arrays"):
        runtime.run(one[0][None])
    with pytest.raises(ImageInputError, match="different numbers of images"):
        runtime.run((np.stack([one[0], one[0]]), one[1][None]))
    proto = onnx.load(str(path))
    entry = next(p for p in proto.metadata_props if p.key == METADATA_KEY)
    meta = json.loads(entry.value)
    for broken, words in ((lambda m: m["inputs"].reverse(), "metadata names inputs"),
                          (lambda m: m["inputs"][1]["preprocessing"].pop("image_size"), "preprocessing of input pixels_1 is malformed"),
                          (lambda m: m.__setitem__("members", ["a", "b"]), "members is malformed")):
        edited = json.loads(json.dumps(meta))
        broken(edited)
        entry.value = json.dumps(edited)
        onnx.save(proto, str(tmp_path / "bad.onnx"))
        with pytest.raises(ModelFileError, match=words):
            Runtime(tmp_path / "bad.onnx")


def test_prefer_combined_takes_the_averaged_probes_unless_the_configured_one_is_clearly_better():
    from transferkit.pipeline.auto import _averaged_as_baseline, decide
    from transferkit.pipeline.result import AutoCandidate

    def rows():
        return [AutoCandidate("probe a", "backbone", accuracy=0.80), AutoCandidate("probe b", "backbone", accuracy=0.82),
                AutoCandidate("probe a + b (probabilities averaged)", "backbone", accuracy=0.83)]

    base = np.r_[np.ones(80, bool), np.zeros(20, bool)]
    b = base.copy()
    b[80:82] = True
    level = base.copy()
    level[80:83] = True  # 3 more right: not clearly better, but preferred
    r = rows()
    correct = {"probe b": b, r[2].name: level}
    ordered, baseline = _averaged_as_baseline(r, r[2], base, correct)
    assert ordered[0] is r[2] and baseline is level and set(correct) == {"probe a", "probe b"}
    assert decide(ordered, baseline, correct) == r[2].name and r[2].comparison["b"] == 3
    worse = base.copy()
    worse[:15] = False  # the configured probe is clearly better than the average: nothing changes
    r = rows()
    correct = {"probe b": b, r[2].name: worse}
    ordered, baseline = _averaged_as_baseline(r, r[2], base, correct)
    assert ordered[0] is r[0] and baseline is base and decide(ordered, baseline, correct) == "probe a"


def test_prefer_combined_end_to_end_saves_the_averaged_probes(tmp_path):
    from transferkit.classifier.multi import TrainedMultiModel
    from transferkit.pipeline.train import TrainConfig, train

    root = _two_colour_folder(tmp_path / "data", per_class=12)  # every probe perfect: the average is not worse
    result = train(TrainConfig(data=str(root), backbone=BACKBONES[0], backbone_candidates=BACKBONES, weights="none", image_size=32,
                               mode="auto", val=0.2, test=0.2, batch_size=8, cache=False, out=str(tmp_path / "m"), report=False,
                               device="cpu", prefer_combined=True))
    assert isinstance(result.model, TrainedMultiModel) and result.model.combine == "ensemble"
    auto = result.metrics["auto"]
    assert "preferred" in auto["reason"] and "prefer_combined" in auto["rule"]
