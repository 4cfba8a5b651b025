"""Every command that reads data says which files it did not use, and why (stderr, JSON, bundle, report)."""

from __future__ import annotations

import json

from transferkit.cli.main import main


def _messy(folder):
    (folder / "class_0" / "empty.jpg").write_bytes(b"")
    (folder / "class_1" / "notes.jpg").write_text("not an image")
    return folder


def test_train_reports_unused_files_everywhere(tiny_image_folder, tmp_path, capsys):
    data = _messy(tiny_image_folder)
    args = ["train", str(data), "--backbone", "test_efficientnet", "--weights", "none", "--engine", "torch", "--out", str(tmp_path / "m")]
    assert main([*args, "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "2 file(s) not used" in captured.err and "empty.jpg" in captured.err and "data inspect" in captured.err
    record = json.loads(captured.out)["metrics"]["unused_files"]
    assert record["count"] == 2 and {f["path"].rsplit("/", 1)[-1] for f in record["files"]} == {"empty.jpg", "notes.jpg"}
    meta = json.loads((tmp_path / "m" / "bundle.json").read_text())
    assert meta["metrics"]["unused_files"]["count"] == 2
    assert "empty.jpg" in (tmp_path / "m" / "report" / "report.html").read_text()


def test_evaluate_and_predict_report_unused_files(tiny_image_folder, tmp_path, capsys):
    clean = ["train", str(tiny_image_folder), "--backbone", "test_efficientnet", "--weights", "none", "--engine", "torch",
             "--out", str(tmp_path / "m"), "--no-report"]
    assert main(clean) == 0
    data = _messy(tiny_image_folder)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "m"), str(data), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "2 file(s) not used" in captured.err and json.loads(captured.out)["metrics"]["unused_files"]["count"] == 2
    assert main(["predict", str(tmp_path / "m"), str(data / "class_0" / "empty.jpg"), str(data / "class_1"), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["unused_files"]["count"] == 2 and "not used" in captured.err


def test_predict_streams_to_a_file_and_resumes_after_a_cut(tiny_image_folder, tmp_path, capsys):
    assert main(["train", str(tiny_image_folder), "--backbone", "test_efficientnet", "--weights", "none", "--engine", "torch",
                 "--out", str(tmp_path / "m"), "--no-report"]) == 0
    out = tmp_path / "preds.jsonl"
    assert main(["predict", str(tmp_path / "m"), str(tiny_image_folder), "--out", str(out), "--top-k", "1"]) == 0
    full = out.read_text().splitlines()
    assert len(full) == 18 and all(json.loads(line)["predictions"] for line in full)
    # A killed run leaves 5 whole lines and half of the sixth: --resume drops the cut line and
    # predicts the rest, giving the same lines.
    out.write_text("\n".join(full[:5]) + "\n" + full[5][:10])
    assert main(["predict", str(tmp_path / "m"), str(tiny_image_folder), "--out", str(out), "--top-k", "1"]) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "m"), str(tiny_image_folder), "--out", str(out), "--top-k", "1", "--resume"]) == 0
    assert sorted(out.read_text().splitlines()) == sorted(full)
    csv_out = tmp_path / "preds.csv"
    assert main(["predict", str(tmp_path / "m"), str(tiny_image_folder), "--out", str(csv_out), "--top-k", "2"]) == 0
    assert csv_out.read_text().splitlines()[0] == "path,rank,label,probability,error" and len(csv_out.read_text().splitlines()) == 37


def test_no_cache_writes_nothing_under_the_cache_dir(tiny_image_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(cache))
    assert main(["train", str(tiny_image_folder), "--backbone", "test_efficientnet", "--weights", "none", "--engine", "onnxruntime",
                 "--out", str(tmp_path / "m"), "--no-cache"]) == 0
    assert not cache.exists() or not any(cache.rglob("*"))


def test_a_cache_path_that_is_a_file_gives_one_warning_and_the_run_goes_on(tiny_image_folder, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.write_text("a file, not a folder")
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(cache))
    assert main(["train", str(tiny_image_folder), "--backbone", "test_efficientnet", "--weights", "none", "--engine", "onnxruntime",
                 "--out", str(tmp_path / "m")]) == 0
    err = capsys.readouterr().err
    assert err.count(f"cache folder {cache}") == 1 and "TRANSFERKIT_CACHE_DIR" in err
    assert (tmp_path / "m" / "bundle.json").is_file()
