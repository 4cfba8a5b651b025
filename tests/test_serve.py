"""`transferkit serve`: the API, the hostile-upload battery (every case a 4xx, the server alive after), concurrency."""

from __future__ import annotations

import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from transferkit.serve import Limits, create_app, load_runtime  # noqa: E402

LIMITS = Limits(max_bytes=300_000, max_pixels=1_000_000, max_files=3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_backbone) -> Path:
    import torch
    from torch import nn

    from transferkit.classifier.bundle import ClassifierModel, save_bundle
    from transferkit.classifier.export import export_model

    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    model = ClassifierModel(tiny_backbone, nn.Linear(tiny_backbone.num_features, 3), ["red", "green", "blue"]).eval()
    save_bundle(root / "bundle", model, metrics={"accuracy": 0.5})
    return export_model(root / "bundle", root / "model.onnx").path


@pytest.fixture(scope="module")
def client(exported) -> TestClient:
    return TestClient(create_app(load_runtime(exported), LIMITS))


def _jpeg(w=64, h=48, seed=0, **kw) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **kw)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _assert_alive(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.post("/v1/predict", files={"files": ("ok.jpg", _jpeg(), "image/jpeg")})
    assert r.status_code == 200 and r.json()["results"][0]["top"]


def test_predict_model_health_docs_and_page(client):
    r = client.post("/v1/predict?top_k=2", files=[("files", ("a.jpg", _jpeg(seed=1), "image/jpeg")),
                                                  ("files", ("b.png", _png(Image.new("RGBA", (40, 30), (0, 0, 255, 128))), "image/png"))])
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["filename"] for x in results] == ["a.jpg", "b.png"]
    for x in results:
        assert len(x["top"]) == 2 and {t["label"] for t in x["top"]} <= {"red", "green", "blue"}
        assert x["top"][0]["probability"] >= x["top"][1]["probability"]
    single = client.post("/v1/predict", files={"file": ("c.jpg", _jpeg(seed=2), "application/octet-stream")})
    assert single.status_code == 200 and len(single.json()["results"][0]["top"]) == 3
    model = client.get("/v1/model").json()
    assert model["class_names"] == ["red", "green", "blue"] and model["precision"] == "fp32"
    assert model["metrics"] == {"accuracy": 0.5} and model["limits"]["max_files"] == 3
    assert model["preprocessing"]["image_size"] == 32 and model["bundle"]["sha256"]
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    html = page.text
    assert "/v1/predict" in html and "getUserMedia" in html and "paste" in html and "drop" in html
    assert "<script src" not in html and "<link" not in html and "http://" not in html and "https://" not in html  # no CDN


def _bomb() -> bytes:
    return _png(Image.new("L", (4000, 4000)))  # 16 MP of zeros in about 16 KB


def _multipart(parts: list[tuple[str, str, str, bytes]], boundary: str = "XyZ") -> bytes:
    out = b""
    for field, name, ctype, data in parts:
        out += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{name}\"\r\n"
                f"Content-Type: {ctype}\r\n\r\n").encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


HOSTILE = {
    "not an image": (dict(files={"files": ("x.jpg", b"GIF89a this is not really an image" * 3, "image/jpeg")}), 400, "not_an_image"),
    "text file": (dict(files={"files": ("notes.txt", b"hello", "text/plain")}), 415, "wrong_content_type"),
    "truncated jpeg": (dict(files={"files": ("cut.jpg", _jpeg(200, 150)[:1500], "image/jpeg")}), 400, "truncated"),
    "zero bytes": (dict(files={"files": ("empty.jpg", b"", "image/jpeg")}), 400, "empty_file"),
    "decompression bomb": (dict(files={"files": ("bomb.png", _bomb(), "image/png")}), 413, "too_many_pixels"),
    "too many pixels": (dict(files={"files": ("big.jpg", _jpeg(1200, 1000, quality=20), "image/jpeg")}), 413, "too_many_pixels"),
    "too many bytes": (dict(files={"files": ("huge.jpg", _jpeg(64, 48) + b"\0" * 400_000, "image/jpeg")}), 413, "too_many_bytes"),
    "too many files": (dict(files=[("files", (f"{i}.jpg", _jpeg(seed=i), "image/jpeg")) for i in range(4)]), 413, "too_many_files"),
    "json body": (dict(json={"image": "cat.jpg"}), 415, "not_multipart"),
    "no body": (dict(), 415, "not_multipart"),
    "text field": (dict(data={"files": "cat.jpg"}, files={"other": ("o.jpg", b"", "image/jpeg")}), 400, "not_a_file"),
    "no files field": (dict(files={"image": ("a.jpg", _jpeg(), "image/jpeg")}), 400, "no_file"),
    "broken multipart": (dict(content=b"--XyZ\r\nContent-Disposition: form-data; name=\"files\"\r\n\r\nabc",
                              headers={"content-type": "multipart/form-data; boundary=XyZ"}), 400, None),
    "lying content-length": (dict(content=_multipart([("files", "a.jpg", "image/jpeg", _jpeg())]),
                                  headers={"content-type": "multipart/form-data; boundary=XyZ", "content-length": "999999999"}),
                             413, "too_many_bytes"),
    "chunked over the limit": (dict(content=iter([b"--XyZ\r\n" + b"a" * 100_000] * 5),
                                    headers={"content-type": "multipart/form-data; boundary=XyZ"}), 413, "too_many_bytes"),
    "top_k not a number": (dict(params={"top_k": "many"}, files={"files": ("a.jpg", _jpeg(), "image/jpeg")}), 400, "bad_top_k"),
    "top_k zero": (dict(params={"top_k": "0"}, files={"files": ("a.jpg", _jpeg(), "image/jpeg")}), 400, "bad_top_k"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_uploads_get_a_4xx_json_reason_and_the_server_keeps_serving(client, case):
    kwargs, status, code = HOSTILE[case]
    r = client.post("/v1/predict", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"]
    if code:
        assert body["code"] == code
    _assert_alive(client)


def test_the_whole_battery_in_a_row_then_healthy(client):
    for kwargs, _status, _ in HOSTILE.values():
        if isinstance(kwargs.get("content"), type(iter([]))):
            continue  # a one-shot iterator was consumed by the parametrized test
        assert 400 <= client.post("/v1/predict", **kwargs).status_code < 500
    _assert_alive(client)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("max_concurrent", [4, 1])
def test_a_slow_request_does_not_hold_up_others(exported, max_concurrent):
    """Decoding and inference run in a thread pool: a fast request finishes while a slow one is still running.

    With ``max_concurrent=1`` the fast one must wait its turn instead (the bound is real).
    """
    import httpx
    import uvicorn

    runtime = load_runtime(exported)
    slow_bytes = _jpeg(seed=99)
    real = runtime.preprocess

    def preprocess(source):
        if source == slow_bytes:
            time.sleep(3.0)
        return real(source)

    runtime.preprocess = preprocess
    port = _free_port()
    limits = Limits(max_bytes=LIMITS.max_bytes, max_pixels=LIMITS.max_pixels, max_files=LIMITS.max_files, max_concurrent=max_concurrent)
    server = uvicorn.Server(uvicorn.Config(create_app(runtime, limits), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        done: dict[str, float] = {}

        def post(name, data):
            with httpx.Client(timeout=20) as c:
                r = c.post(f"{url}/v1/predict", files={"files": (name, data, "image/jpeg")})
                assert r.status_code == 200
            done[name] = time.monotonic()

        start = time.monotonic()
        slow = threading.Thread(target=post, args=("slow.jpg", slow_bytes))
        slow.start()
        time.sleep(0.3)
        post("fast.jpg", _jpeg(seed=1))
        slow.join(timeout=20)
        assert done["slow.jpg"] - start >= 3.0
        if max_concurrent > 1:
            assert done["fast.jpg"] - start < 2.5 and done["fast.jpg"] < done["slow.jpg"]
        else:  # it waited for the slow one: measured on the fast client's own clock (the two client
            # threads may record their times in either order once both responses are in)
            assert done["fast.jpg"] - start >= 3.0
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_serve_resolves_a_bundle_by_exporting_it_once(tmp_path, tiny_backbone):
    import torch
    from torch import nn

    from transferkit.classifier.bundle import ClassifierModel, save_bundle
    from transferkit.serve import ServeError, onnx_for

    torch.manual_seed(1)
    save_bundle(tmp_path / "b", ClassifierModel(tiny_backbone, nn.Linear(tiny_backbone.num_features, 2), ["x", "y"]).eval())
    first = onnx_for(tmp_path / "b")
    mtime = first.stat().st_mtime_ns
    assert first.suffix == ".onnx" and onnx_for(tmp_path / "b") == first and first.stat().st_mtime_ns == mtime
    assert load_runtime(tmp_path / "b").class_names == ["x", "y"]
    with pytest.raises(ServeError, match="neither an exported .onnx file nor a bundle"):
        onnx_for(tmp_path)


_SERVE_NO_TORCH = """
import sys
from fastapi.testclient import TestClient
from transferkit.serve import create_app, load_runtime
client = TestClient(create_app(load_runtime(sys.argv[1])))
with open(sys.argv[2], "rb") as f:
    assert client.post("/v1/predict", files={"files": ("a.jpg", f, "image/jpeg")}).status_code == 200
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "torchvision"))))
"""


def test_serving_an_exported_file_never_imports_torch(exported, tiny_image_folder):
    import subprocess
    import sys

    photo = sorted(tiny_image_folder.rglob("*.jpg"))[0]
    proc = subprocess.run([sys.executable, "-c", _SERVE_NO_TORCH, str(exported), str(photo)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
